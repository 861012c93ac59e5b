"""The CI gate: its decision on planted results, its three exit codes from the command line, and the client's
retries. (Against a running server: tests/service/test_batches.py.)"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from cli import main
from phasecore.study.failure_model import predict_failure_probability
from phasecore.study.gate import GateUndecided, decide
from phasecore.study.quality import prediction_quality
from service.client import ApiError, PhasescreenClient, ServerUnreachable, retry_after_seconds
from tests.helpers.results import full_result
from tests.helpers.tiny import TINY_LANGUAGE, TINY_VISION, gate_argv


def planted_result(combined: bool | None, agop: bool | None = True, **metrics: float) -> dict:
    value = None if combined is None else (3.1 if combined else 0.4)
    return full_result(
        metrics={"s_ntk_cross": 0.9, "delta_ntk": 0.5, "log_agop": 6.2, "cka": 0.3, **metrics},
        predictions={
            "combined_rule": {"value": value, "threshold": 2.5, "predicts_failure": combined, "claimed_accuracy": 0.96},
            "agop_rule": {"value": None, "threshold": 1e6, "predicts_failure": agop, "claimed_accuracy": 0.94},
        },
    )


def test_paper_policy_is_the_combined_rule_with_the_agop_rule_as_fallback() -> None:
    fails = decide(planted_result(True, agop=False))
    assert (fails.exit_code, fails.rule) == (1, "combined_rule")
    assert "3.1 > 2.5" in fails.reason and "claim" in fails.reason
    passes = decide(planted_result(False, agop=True))  # the combined rule decides, not the AGOP rule
    assert (passes.exit_code, passes.rule) == (0, "combined_rule") and "0.4 ≤ 2.5" in passes.reason
    fallback = decide(planted_result(None, agop=True))
    assert (fallback.exit_code, fallback.rule) == (1, "agop_rule") and "+inf" in fallback.reason
    assert "combined rule is undetermined" in fallback.reason
    with pytest.raises(GateUndecided, match="neither"):
        decide(planted_result(None, agop=None))


def _labelled(n_vision: int = 6, n_language: int = 4) -> list[dict]:
    """Failure exactly when ΔNTK is large; both outcomes on every model."""
    records = []
    for i in range(n_vision):
        for j in range(n_language):
            failed = (i + j) % 2 == 0
            records.append(
                {
                    "vision": f"v{i}",
                    "language": f"l{j}",
                    "failed": failed,
                    "s_ntk_cross": 0.9 + 0.01 * j,
                    "s_ntk_cross_centered": 0.1 * i,
                    "delta_ntk": (0.8 if failed else 0.1) + 0.01 * i,
                    "log_agop": 5.0 + 0.1 * j,
                    "cka": 0.2,
                    "mutual_knn": 0.1 + 0.01 * i,
                }
            )
    return records


def test_measured_policy_uses_the_fitted_model_and_refuses_without_one() -> None:
    study = prediction_quality(_labelled())
    assert study["status"] == "ok"
    risky = planted_result(False, delta_ntk=0.85)
    decision = decide(risky, "measured", study=study)
    expected = predict_failure_probability(study["model_state"], risky["metrics"])
    assert decision.probability == pytest.approx(expected) and expected > 0.5 and decision.exit_code == 1
    assert decide(planted_result(True, delta_ntk=0.05), "measured", study=study).exit_code == 0
    infinite = planted_result(False, agop=True, log_agop=None)  # an infinite AGOP ratio is stored as null
    clipped = dict(infinite["metrics"], log_agop=max(r["log_agop"] for r in _labelled()))
    expected = predict_failure_probability(study["model_state"], clipped)
    assert decide(infinite, "measured", study=study).probability == pytest.approx(expected)

    few = prediction_quality(_labelled()[:10])
    with pytest.raises(GateUndecided, match="not enough labelled pairs.*only 10 labelled pairs"):
        decide(risky, "measured", study=few)


def test_gate_here_exits_with_the_combined_rules_verdict(tiny_batch, local_env, capsys) -> None:
    """A real pair, locally, on the profiles the batch cached: exit 0/1 as its combined rule says, one line."""
    cache = ["--cache-dir", str(tiny_batch.cache_dir)]
    expected = tiny_batch.document()["pairs"][0]["result"]["predictions"]["combined_rule"]["predicts_failure"]
    code = main(gate_argv(TINY_VISION[0], TINY_LANGUAGE[0], *cache))
    line = capsys.readouterr().out.strip()
    assert code == (1 if expected else 0)
    assert "\n" not in line and line.startswith("FAIL: " if expected else "PASS: ") and "combined rule" in line

    assert main(gate_argv(TINY_VISION[0], TINY_LANGUAGE[0], *cache, "--json")) == code
    captured = capsys.readouterr()
    body = json.loads(captured.out)
    assert body["exit_code"] == code and body["decision"]["rule"] == "combined_rule"
    assert body["result"]["predictions"]["combined_rule"]["predicts_failure"] == expected
    # the measured figures sit beside the claim, as `screen` and the API's workers attach them
    measured = body["result"]["predictions"]["combined_rule"]["measured"]
    assert measured["status"] == "insufficient" and measured["source"] == "deployment"
    assert "in the same stratum. " in measured["reason"]  # one sentence, then the note on shipped evidence
    assert captured.err.strip().startswith(("PASS", "FAIL"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gate_errors_exit_2(local_env, capsys) -> None:
    assert main(gate_argv("nope:resnet")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "source:name" in err

    assert main(gate_argv(*TINY_VISION[:1], TINY_LANGUAGE[0], "--policy", "measured")) == 2  # empty local database
    assert "not enough labelled pairs" in capsys.readouterr().err

    server = f"http://127.0.0.1:{_closed_port()}"
    assert main(gate_argv(TINY_VISION[0], TINY_LANGUAGE[0], "--server", server, "--json")) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["exit_code"] == 2 and "cannot reach" in captured.err

    assert (
        main(
            [
                "gate",
                "--vision",
                TINY_VISION[0],
                "--language",
                TINY_LANGUAGE[0],
                "--dataset",
                "digits",
                "--option",
                "n=3",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "invalid settings: n: Input should be greater than or equal to 8" in err
    with pytest.raises(SystemExit) as usage:  # argparse: a missing flag is a usage error, exit 2 too
        main(["gate", "--vision", TINY_VISION[0]])
    assert usage.value.code == 2


def test_client_retries_503_and_429_as_retry_after_says() -> None:
    answers = iter(
        [
            httpx.Response(503, headers={"Retry-After": "7"}, json={"detail": "busy"}),
            httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"}),
            httpx.Response(200, json={"status": "insufficient"}),
        ]
    )
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return next(answers)

    waited: list[float] = []
    http = httpx.Client(base_url="http://screen.test", transport=httpx.MockTransport(handler))
    client = PhasescreenClient("http://screen.test", http=http, sleep=waited.append)
    assert client.request("GET", "/v1/study").json() == {"status": "insufficient"}
    assert waited == [7.0, 3.0] and seen == ["/v1/study"] * 3

    problem = {
        "type": "urn:phasescreen:problem:invalid-reference",
        "title": "Invalid",
        "status": 422,
        "detail": "model 'x' is not in the timm registry",
    }
    http = httpx.Client(
        base_url="http://screen.test", transport=httpx.MockTransport(lambda request: httpx.Response(422, json=problem))
    )
    with pytest.raises(ApiError, match="not in the timm registry") as refused:
        PhasescreenClient("http://screen.test", http=http, sleep=waited.append).request("GET", "/v1/study")
    assert refused.value.status == 422 and refused.value.problem == problem

    always_busy = httpx.Client(
        base_url="http://screen.test",
        transport=httpx.MockTransport(lambda request: httpx.Response(503, headers={"Retry-After": "1"})),
    )
    with pytest.raises(ApiError) as busy:
        PhasescreenClient("http://screen.test", http=always_busy, sleep=waited.append, max_retries=2).request(
            "GET", "/v1/study"
        )
    assert busy.value.status == 503

    waited.clear()
    with pytest.raises(ServerUnreachable):
        PhasescreenClient(f"http://127.0.0.1:{_closed_port()}", sleep=waited.append).request("GET", "/healthz")
    assert waited == [0.5, 1.0]  # two more tries to connect, then it gives up

    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", default=5) == 0.0  # a date in the past
    assert retry_after_seconds("soon", default=5) == 5
