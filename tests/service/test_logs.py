"""Structured logs: one JSON object per line with the request id, tenant, screening and batch id; text a client
chose never starts a line (JSON and text formats); `phasescreen serve` writes nothing else, uvicorn included."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from store import logs
from store.apikeys import create_api_key
from tests.helpers.services import REPO, free_port, tiny_request, wait_for, work_burst
from tests.helpers.tiny import batch_request

#: a model reference that tries to forge a log line of its own
FORGED = 'hf:x\n{"ts": "2020-01-01T00:00:00.000Z", "level": "INFO", "logger": "forged", "msg": "forged"}\r\x1b[2J'
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ")


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger writing JSON lines into a buffer (as `phasescreen serve` sets it up), restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    buffer = io.StringIO()
    logs.configure("INFO", "json", stream=buffer)
    yield buffer
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def _entries(buffer: io.StringIO) -> list[dict]:
    lines = buffer.getvalue().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(isinstance(entry, dict) and {"ts", "level", "logger", "msg"} <= set(entry) for entry in entries)
    return entries


def test_request_lines_carry_the_request_id_and_client_text_stays_inside_json_strings(runtime, captured):
    with TestClient(create_app(runtime=runtime)) as client:
        refused = client.post(
            "/v1/screenings", json={**tiny_request(), "vision": FORGED}, headers={"X-Request-ID": "req-123.abc"}
        )
        assert refused.status_code == 422
        assert refused.headers["x-request-id"] == "req-123.abc"
        assert refused.json()["request_id"] == "req-123.abc"  # quoted in the problem document
        accepted = client.post("/v1/screenings", json=tiny_request(), headers={"X-Request-ID": "bad id; drop"})
        generated = accepted.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", generated)  # a header of another shape is replaced
        screening_id = accepted.json()["id"]
        client.get(f"/v1/screenings/{screening_id}")
    entries = _entries(captured)
    text = captured.getvalue()
    assert "forged" in text  # the reference was logged (the refusal says what was refused)...
    for line in text.splitlines():  # ...but only inside a JSON string: no line of its own, nothing unescaped
        assert line.startswith('{"ts": "') and "\x1b" not in line and "\r" not in line
    assert not any(entry["logger"] == "forged" for entry in entries)
    mine = [e for e in entries if e.get("request_id") == "req-123.abc"]
    refusal = next(e for e in mine if e["logger"] == "phasescreen.refusals")
    assert '"logger": "forged"' in refusal["detail"] and refusal["status"] == 422
    access = next(e for e in mine if e["logger"] == "phasescreen.access")
    assert access["method"] == "POST" and access["path"] == "/v1/screenings" and access["status"] == 422
    assert access["duration_ms"] >= 0
    created = next(e for e in entries if e.get("request_id") == generated and e["logger"] == "phasescreen.access")
    assert created["screening_id"] == screening_id and created["status"] == 202
    template = "/v1/screenings/{screening_id}"
    read = [e for e in entries if e["logger"] == "phasescreen.access" and e.get("path") == template]
    assert read and read[0]["screening_id"] == screening_id  # the path's id, and the route template, never the path


def test_access_lines_carry_the_tenant_of_the_key(make_runtime, captured):
    runtime = make_runtime(require_api_key=True)
    with runtime.session() as session:
        _, secret = create_api_key(session, "ci", tenant="team-a")
        session.commit()
    with TestClient(create_app(runtime=runtime)) as client:
        response = client.get("/v1/screenings", headers={"Authorization": f"Bearer {secret}"})
        assert response.status_code == 200
        anonymous = client.get("/v1/screenings")
        assert anonymous.status_code == 401
    access = [e for e in _entries(captured) if e["logger"] == "phasescreen.access"]
    assert access[0]["tenant"] == "team-a" and access[0]["status"] == 200
    assert "tenant" not in access[1] and access[1]["status"] == 401
    assert secret not in captured.getvalue()  # the key itself is never logged


@contextlib.contextmanager
def _logger_writing(log_format: str) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger of its own whose lines, in ``log_format``, go to the buffer yielded with it (and nowhere else)."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logs.formatter(log_format))
    logger = logging.getLogger(f"phasescreen.test.{log_format}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield logger, buffer
    finally:
        logger.removeHandler(handler)


def test_a_raw_line_break_in_a_message_or_field_stays_inside_one_json_line():
    with _logger_writing("json") as (logger, buffer), logs.bind(request_id="r1", tenant=FORGED):
        logger.warning("model %s", FORGED, extra={"reference": FORGED})
        try:
            raise ValueError(FORGED)
        except ValueError:
            logger.exception("failed")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == f"model {FORGED}" and first["reference"] == FORGED and first["tenant"] == FORGED
    assert second["exc_type"] == "ValueError" and FORGED in second["exc"] and second["request_id"] == "r1"


def test_the_text_format_escapes_client_text_and_indents_tracebacks():
    with _logger_writing("text") as (logger, buffer), logs.bind(request_id="r1", screening_id=FORGED):
        logger.warning("refused %s", FORGED, extra={"detail": FORGED})
        try:
            raise ValueError(f"bad reference {FORGED}")
        except ValueError:
            logger.exception("failed on %s", FORGED)
    lines = buffer.getvalue().splitlines()
    assert len(lines) > 3 and "\x1b" not in buffer.getvalue() and "\r" not in buffer.getvalue()
    for line in lines:
        assert TIMESTAMP.match(line) or line.startswith("    | "), line
    assert "request_id=r1" in lines[0] and "\\n" in lines[0]


@pytest.mark.commits  # the worker's burst reads through its own connections
def test_worker_lines_carry_the_screening_its_tenant_and_batch(client, runtime, captured):
    batch = client.post("/v1/batches", json=batch_request(vision=batch_request()["vision"][:1])).json()
    screening_id = batch["matrix"][0][0]["screening_id"]
    work_burst(runtime.settings)
    entries = _entries(captured)
    pair = [e for e in entries if e["logger"] == "jobs.functions" and e.get("screening_id") == screening_id]
    assert pair, [e for e in entries if e["logger"] == "jobs.functions"]
    assert all(e["batch_id"] == batch["id"] for e in pair)
    assert any(e["msg"].startswith("pair job succeeded") for e in pair)
    profiles = [e for e in entries if e["logger"] == "jobs.functions" and "profile_id" in e]
    assert len({e["profile_id"] for e in profiles}) == 3  # one vision model, two language poolings
    assert not any("screening_id" in e for e in profiles)  # a job's ids end with the job


def test_phasescreen_serve_writes_json_lines_only(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PHASESCREEN_HOME": str(tmp_path),
        "PHASESCREEN_RATE_LIMIT_PER_MINUTE": "0",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    for name in ("PHASESCREEN_DATABASE_URL", "PHASESCREEN_REDIS_URL", "PHASESCREEN_LOG_FORMAT"):
        env.pop(name, None)
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=90, what="phasescreen serve")
        refused = httpx.post(f"{base}/v1/screenings", json={**tiny_request(), "vision": FORGED}, timeout=30)
        assert refused.status_code == 422
        request_id = refused.headers["x-request-id"]
    finally:
        process.terminate()
        process.wait(timeout=60)
    time.sleep(0.1)
    lines = log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # uvicorn's start and stop lines too
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    assert any(e["logger"] == "phasescreen.access" and e.get("request_id") == request_id for e in entries)
    assert not any(e["logger"] == "uvicorn.access" for e in entries)
