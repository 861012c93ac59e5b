"""Where the stability probe's time goes, against the kernel stage of the same model, in one run.

    PYTHONPATH=. python bench/stability.py [--models efficientnet-lite0,minilm,resnet18] [--n 576] [--probes 4]
                                           [--subset 128] [--steps 10] [--dataset digits] [--out FILE.json]

Per model, as ``phasecore.screening.profile.compute_profile`` runs it (the demo's settings by default: digits, N = 576,
M = 4, method auto, n_s = 128, T = 10): the kernel stage (``probe_gram`` over the distinct inputs, cross-probe),
then the stability probe twice, ``before`` (its own Θ̂(θ_0) of the subset, as until this bench) and ``after``
(Θ̂(θ_0) taken as a block of the kernel just computed), with the probe's parts (``gram_0``, ``k_0``, the T
``steps``, ``gram_T``). It prints wall seconds and CPU seconds (all threads), and the ratio stability / kernel of
each, beside the CPU model, thread count and commit. A ratio, not a time, is the figure to compare across
machines and load. Models: ``efficientnet-lite0`` (pkg, ImageNet weights), ``minilm`` (pkg:all-minilm-l6-v2),
``resnet18`` (timm, random init).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import torch

from phasecore.data import load_dataset
from phasecore.host import cpu_model as cpu_model  # the sibling benches import it from here
from phasecore.kernels.distinct import distinct_inputs
from phasecore.kernels.engine import probe_gram
from phasecore.kernels.stability import stability_probe
from phasecore.screening.profile import select_params
from phasecore.sources import load_encoder

MODELS = {
    "efficientnet-lite0": "pkg:efficientnet-lite0",
    "minilm": "pkg:all-minilm-l6-v2",
    "resnet18": "timm:resnet18?weights=random",
}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def one(name: str, args: argparse.Namespace) -> dict[str, Any]:
    encoder = load_encoder(MODELS[name])
    data = load_dataset(args.dataset, n=args.n, seed=0)
    inputs = encoder.preprocess(data.images if encoder.modality == "vision" else data.captions)
    params = select_params(encoder, "all")
    engine = dict(probes=args.probes, sketch_dim=8192, seed=0, chunk_size=32, params=params)
    distinct = distinct_inputs(inputs)
    gram, k_wall, k_cpu = timed(
        lambda: probe_gram(encoder, distinct.inputs, method="auto", cross_probe=True, memory_budget_gb=4.0, **engine)
    )
    kernel = distinct.expand_gram(gram.ntk())
    row: dict[str, Any] = {"model": name, "ref": MODELS[name], "method": gram.method, "n": args.n,
                           "kernel": {"wall": k_wall, "cpu": k_cpu}}  # fmt: skip
    for label, reuse in (("before", None), ("after", kernel)):
        result, wall, cpu = timed(
            lambda reuse=reuse: stability_probe(
                encoder, inputs, method=gram.method, steps=args.steps, subset=args.subset, kernel=reuse,
                kernel_chunk=int(gram.info.get("chunk_size", 32)), **engine,
            )
        )
        row[label] = {"wall": wall, "cpu": cpu, "parts": result.timings, "s_ntk": result.s_ntk,
                      "ratio_wall": wall / k_wall, "ratio_cpu": cpu / k_cpu}  # fmt: skip
        print(
            f"{name:20s} {label:6s} stability {wall:7.1f} s wall ({cpu:7.1f} s CPU) = {wall / k_wall:.2f}x the "
            f"kernel's {k_wall:.1f} s ({cpu / k_cpu:.2f}x CPU); parts "
            + ", ".join(f"{k} {v:.1f}" for k, v in result.timings.items())
            + f"; S_NTK {result.s_ntk:.6f}",
            flush=True,
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--subset", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args()
    head = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "commit": commit(), "torch": torch.__version__}
    print(" ".join(f"{k}={v}" for k, v in head.items()), flush=True)
    rows = [one(name, args) for name in args.models.split(",")]
    if args.out:
        Path(args.out).write_text(json.dumps({**head, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
