"""Property-based requests over the OpenAPI schema (in-process ASGI): whatever arrives, no 5xx.

Valid and deliberately invalid requests (schemathesis' positive and negative modes) for every operation.
The operations are driven from one test with plain hypothesis, so the run stays bounded (max_examples per
operation and mode) and works with any pytest version.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from service.app import create_app

EXAMPLES = 20


def test_no_server_errors_on_generated_requests(make_runtime):
    # a worker-less Redis queue: submissions are validated and stored, nothing computes
    app = create_app(runtime=make_runtime())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                case.call_and_validate(checks=[not_a_server_error])

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
