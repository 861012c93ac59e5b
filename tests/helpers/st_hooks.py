"""Schemathesis hooks of the contract run (schemathesis.toml loads them; so does tests/service/test_schemathesis.py).

``valid_data_refused_only_for_meaning``: a request the schema says is valid may be refused only for what a
schema cannot express -- a model or dataset this deployment cannot load, an option combination, settings it
cannot run -- never for its form. So a positive case answered 422 must carry one of the domain problem types;
``validation-error`` there would mean the schema allows something the validators refuse.
"""

from __future__ import annotations

import schemathesis
from schemathesis import GenerationMode

#: problem types (urn:phasescreen:problem:<kind>) of refusals no schema can foresee
SEMANTIC_KINDS = frozenset(
    {
        "invalid-reference",  # an unknown timm/pkg name, an option combination (seed= without blend=), a dataset
        "asset-unavailable",  # a file or package missing here, a dataset without its files
        "invalid-settings",  # settings the dataset or deployment cannot run (n above what it holds, max_n)
        "exceeds-worker-memory",
        "exceeds-worker-budget",  # settings whose estimated compute passes PHASESCREEN_MAX_JOB_SECONDS
        "unsupported-model",
        "duplicate-models",  # a batch naming one model twice in two spellings (canonical forms collide)
        "idempotency-key-reused",
    }
)


@schemathesis.check
def valid_data_refused_only_for_meaning(ctx, response, case):  # noqa: ANN001, ANN201
    meta = case.meta
    if meta is None or meta.generation.mode is not GenerationMode.POSITIVE or response.status_code != 422:
        return None
    try:
        kind = str(response.json().get("type", "")).rsplit(":", 1)[-1]
    except Exception:  # noqa: BLE001 - not a problem document at all
        kind = "(no problem document)"
    if kind not in SEMANTIC_KINDS:
        raise AssertionError(
            f"schema-valid request refused as {kind!r}: the schema allows what the validators refuse "
            f"({response.text[:300]})"
        )
    return None
