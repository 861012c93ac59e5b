"""The API against its own OpenAPI document, with every check schemathesis has (no rate limit, no worker).

Two runs, both bounded:

- in process (ASGI), plain hypothesis: for every operation, valid and deliberately invalid requests
  (schemathesis' positive and negative modes), each response checked by every check of the installed
  schemathesis (server errors, status codes, content types, response schemas and headers, positive data
  accepted, negative data rejected, ...) plus this project's ``valid_data_refused_only_for_meaning``;
- over HTTP, the command an outside tester runs (``st run <url>/openapi.json --checks all``) against a real
  uvicorn server, with all four phases (examples, coverage -- unsupported methods, the Allow header, missing
  headers --, fuzzing, stateful links between operations).

schemathesis.toml at the repository root is the configuration of both (st_hooks.py holds the extra check).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from service.app import create_app
from tests.helpers import st_hooks
from tests.helpers.services import free_port

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = 15
HTTP_EXAMPLES = 10


def _config() -> SchemathesisConfig:
    return SchemathesisConfig.from_path(REPO / "schemathesis.toml")


def test_every_check_holds_on_generated_requests(make_runtime):
    # a worker-less Redis queue: submissions are validated and stored, nothing computes
    app = create_app(runtime=make_runtime())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                # no `checks=`: every check the configuration enables (all built-in ones), and ours
                case.call_and_validate(additional_checks=[st_hooks.valid_data_refused_only_for_meaning])

            try:
                check()
            except Unsatisfiable:
                # nothing in this operation can be made invalid (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.label
    sent = sum(
        sample.value
        for metric in app.state.metrics.requests.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    assert sent >= 5 * len(operations)  # the cases really reached the app (few for parameterless ones)


def _st() -> str:
    local = Path(sys.executable).with_name("st")
    found = str(local) if local.exists() else shutil.which("st")
    if not found:
        pytest.fail("the schemathesis CLI (st) is not installed: pip install -e '.[dev]'")
    return found


@pytest.mark.commits  # a live server's request threads cannot share the test's one rolled-back connection
def test_st_run_with_all_checks_passes_against_a_live_server(make_runtime, tmp_path):
    import uvicorn

    app = create_app(runtime=make_runtime())
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        run = subprocess.run(
            [
                _st(),
                "--no-color",
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(HTTP_EXAMPLES),
                "--workers",
                "1",
                "--request-timeout",
                "60",
                "--report",
                "junit",
                "--report-dir",
                str(tmp_path),
            ],
            cwd=REPO,  # schemathesis.toml and its hooks
            env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:]
    tested = re.search(r"Tested: (\d+)", output)
    assert tested and int(tested.group(1)) >= 15, output[-3000:]
    assert "valid_data_refused_only_for_meaning" not in output  # loaded and never failed
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in output, output[-5000:]
