"""How far S_NTK moves with the thread count, in float32 and in float64 (the stability probe's ``precision``).

    PYTHONPATH=. python bench/stability_spread.py [--models efficientnet-lite0,minilm] [--threads 1,2]
                                                  [--n 576] [--subset 128] [--probes 4] [--out FILE.json]

The probe's T gradient steps amplify float32 rounding, and the rounding depends on the thread count and the CPU
(the order of reductions, the vector width). For each model and precision the probe runs once per thread count,
each in a fresh subprocess (``torch.set_num_threads`` before anything runs), on the demo's sample (digits,
N = 576, the seeded subset of 128, T = 10, M = 4, exact where it fits as the profile does); it prints each S_NTK,
the spread (max − min) per precision, and the seconds, beside the CPU model. Compare spreads, not times.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODELS = {"efficientnet-lite0": "pkg:efficientnet-lite0", "minilm": "pkg:all-minilm-l6-v2",
          "resnet18": "timm:resnet18?weights=random"}  # fmt: skip


def child(model: str, precision: str, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    from phasecore.data import load_dataset
    from phasecore.kernels.stability import stability_probe
    from phasecore.sources import load_encoder

    encoder = load_encoder(MODELS[model])
    data = load_dataset("digits", n=args.n, seed=0)
    inputs = encoder.preprocess(data.images if encoder.modality == "vision" else data.captions)
    start = time.perf_counter()
    result = stability_probe(
        encoder, inputs, probes=args.probes, method="auto", subset=args.subset, steps=10, seed=0,
        precision=precision,  # type: ignore[arg-type]
    )  # fmt: skip
    return {"model": model, "precision": precision, "threads": threads, "s_ntk": result.s_ntk,
            "s_ntk_centered": result.s_ntk_centered, "seconds": time.perf_counter() - start,
            "timings": result.timings}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0,minilm")
    ap.add_argument("--precisions", default="float32,float64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--subset", type=int, default=128)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        model, precision, threads = args.child.split(":")
        print(json.dumps(child(model, precision, int(threads), args)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from stability import commit, cpu_model

    print(f"cpu={cpu_model()} commit={commit()} n={args.n} subset={args.subset} probes={args.probes}", flush=True)
    rows = []
    for model in args.models.split(","):
        for precision in args.precisions.split(","):
            values = []
            for threads in [int(t) for t in args.threads.split(",")]:
                command = [sys.executable, __file__, "--child", f"{model}:{precision}:{threads}", "--n", str(args.n),
                           "--subset", str(args.subset), "--probes", str(args.probes)]  # fmt: skip
                out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip().splitlines()
                row = json.loads(out[-1])
                rows.append(row)
                values.append(row["s_ntk"])
                print(f"{model:20s} {precision} threads={threads}: S_NTK {row['s_ntk']:.8f} ({row['seconds']:.1f} s)",
                      flush=True)  # fmt: skip
            print(f"{model:20s} {precision} spread over threads: {max(values) - min(values):.2e}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"cpu": cpu_model(), "commit": commit(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
