"""``phasescreen outcome simulate``: a short real contrastive training of screened pairs, reported as outcomes.

Each pair's two towers are loaded as the screening loaded them (its canonical references), a fresh sample of the
screening's dataset is drawn (the screening's N, its seed + 1: the training job's data is not the screening's
sample), and ``held_out_contrastive`` (phasecore.groundtruth.contrastive) trains linear heads per held-out group
and scores the held-out values. Tower outputs are computed once per (reference, sample) and reused across a
batch's pairs. The value is reported through the same path as ``phasescreen outcome report``: the API with
``--server``, else the local database through the application functions the API route calls (jobs.outcomes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

METRIC = "held_out_contrastive"


def _pairs(args: argparse.Namespace, client: Any, session: Any) -> list[tuple[str, dict[str, Any]]]:
    """(screening id, result document) of every succeeded pair named by the arguments."""
    if args.results or args.batch:
        document = json.loads(Path(args.results).read_text()) if args.results else client.batch_results(args.batch)
        pairs = [
            (str(p["screening_id"]), p["result"])
            for p in document.get("pairs", [])
            if p.get("result") is not None and p.get("screening_id")
        ]
        if not pairs:
            raise ValueError("the batch holds no succeeded pair with a screening id (was it stored locally?)")
        return pairs
    return [(sid, _result_of(client, session, sid)) for sid in args.screening_ids]


def _result_of(client: Any, session: Any, screening_id: str) -> dict[str, Any]:
    if client is not None:
        out = client.get_screening(screening_id)
        state, result = out.state, out.result
    else:
        from jobs.screenings import get_screening

        row = get_screening(session, screening_id)
        state, result = row.state, row.result
    if result is None:
        raise ValueError(f"screening {screening_id} has no result (state {state}): only succeeded pairs train")
    return dict(result.model_dump(mode="json"))


class _Towers:
    """Tower outputs per (reference, dataset, N, seed): images or captions, and the class templates."""

    def __init__(self) -> None:
        self.datasets: dict[tuple[str, int, int], Any] = {}
        self.outputs: dict[tuple[str, str, int, int], tuple[np.ndarray, list[np.ndarray] | None]] = {}

    def dataset(self, ref: str, n: int, seed: int) -> Any:
        from phasecore.data import load_dataset

        key = (ref, n, seed)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(ref, n=n, seed=seed)
        return self.datasets[key]

    def outputs_of(self, model: str, dataset_ref: str, n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray] | None]:
        from phasecore.groundtruth.contrastive import tower_outputs
        from phasecore.sources import load_encoder

        key = (model, dataset_ref, n, seed)
        if key not in self.outputs:
            self.outputs[key] = tower_outputs(load_encoder(model), self.dataset(dataset_ref, n, seed))
        return self.outputs[key]


def simulate_pair(result: dict[str, Any], towers: _Towers, *, steps: int) -> dict[str, Any]:
    """``held_out_contrastive`` of a screened pair on a fresh sample of its dataset; with the sample's name."""
    from phasecore.groundtruth.contrastive import held_out_contrastive

    settings, described = result["settings"], result["dataset"]
    dataset_ref = (result.get("stratum") or {}).get("dataset") or described.get("ref") or described["name"]
    n, seed = int(described.get("n") or settings["n"]), int(settings["seed"]) + 1
    E_v, _ = towers.outputs_of(result["vision"]["identity"]["ref"], dataset_ref, n, seed)
    E_l, templates = towers.outputs_of(result["language"]["identity"]["ref"], dataset_ref, n, seed)
    assert templates is not None, "the language tower's outputs carry its class templates"
    data = towers.dataset(dataset_ref, n, seed)
    out = held_out_contrastive(
        E_v, E_l, data.labels, templates, groups=data.outcome_groups, steps=steps, seed=seed,
        failure_threshold=float(settings.get("failure_threshold", 0.03)),
        outcome_alpha=float(settings.get("outcome_alpha", 0.05)),
    )  # fmt: skip
    out["dataset"] = f"{dataset_ref} (n={n}, seed={seed}, held-out values)"
    return out


def _request(out: dict[str, Any], success_above: float) -> dict[str, Any]:
    means = out["group_means"] or {}
    kinds = ", ".join(f"{kind} {value:+.2f}" for kind, value in means.items())
    return {
        "metric": METRIC,
        "value": out["value"],
        "success_threshold": success_above,
        "success_direction": "above",
        "dataset": out["dataset"],
        "examples": out["examples"],
        "steps": out["steps"],
        "method": out["method"],
        "run_url": None,
        "notes": (
            f"phasescreen outcome simulate: frozen towers, linear heads ({out['head_dim']}-d, InfoNCE at "
            f"temperature {out['temperature']:g}, {out['steps']} steps per held-out group of {out['n_groups']}); "
            f"its own sign-flip outcome {out['outcome']} at tau = {out['failure_threshold']:g}"
            + (f"; {kinds}" if kinds else "")
        ),
    }


def simulate_outcomes(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train and report every named pair; one line per pair on stderr; the recorded outcomes. One client (server
    mode) or one database session (local mode) serves every read and report of the run."""
    if args.steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {args.steps}")
    if sum(bool(x) for x in (args.screening_ids, args.results, args.batch)) != 1:
        raise ValueError("name the pairs one way: SCREENING_ID ..., --results FILE or --batch BATCH_ID")
    if args.batch and not args.server:
        raise ValueError("--batch reads a batch from a server: give --server URL, or --results FILE locally")
    with contextlib.ExitStack() as stack:
        if args.server:
            from cli.batch import _client

            client, session = stack.enter_context(_client(args)), None
        else:
            from store.db import local_session

            client, session = None, stack.enter_context(local_session())
        pairs = _pairs(args, client, session)
        towers, recorded = _Towers(), []
        for k, (screening_id, result) in enumerate(pairs, 1):
            out = simulate_pair(result, towers, steps=args.steps)
            recorded.append(_report(client, session, screening_id, _request(out, args.success_above)))
            verdict = "success" if out["value"] >= args.success_above else "failure"
            print(
                f"[{k}/{len(pairs)}] {result['vision']['identity']['ref']} × "
                f"{result['language']['identity']['ref']}: {METRIC} = {out['value']:+.3f} -> {verdict}",
                file=sys.stderr,
            )
    return recorded


def _report(client: Any, session: Any, screening_id: str, request: dict[str, Any]) -> dict[str, Any]:
    if client is not None:
        return dict(client.report_outcome(screening_id, **request).model_dump(mode="json"))
    from cli.local import report_locally

    return report_locally(session, screening_id, request)  # commits the run
