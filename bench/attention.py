"""The kernel engine on a transformers model as users build it (SDPA attention, the default) and built eager.

    PYTHONPATH=. python bench/attention.py [--n 32] [--tokens 16] [--probes 1] [--repeat 2] [--threads 0]
                                           [--device cpu|cuda] [--out FILE.json]

For a ``bert-base-uncased``-shaped ``BertModel`` at random init (the same seed each time), masked-mean pooled
to (B, d), on N random token sequences with a ragged mask, it times in one process, interleaved over
``--repeat`` rounds (best of each kept):

- ``floor``: M batched forward + backward passes of the N samples (chunks of ``--chunk``);
- ``engine``: ``phasecore.kernels.probe_gram(model, x, probes=M, method="exact", chunk_size=--chunk)``;

for three configurations: ``sdpa`` (default build, the engine as it is: switched to eager on the device
types in ``phasecore.kernels.engine.EAGER_ATTENTION_ON``), ``sdpa-noswitch`` (default build, the switch
disabled), ``sdpa-switch`` (default build, the switch forced), and ``eager`` (built with
``attn_implementation="eager"``). It prints ``engine / floor`` per configuration in CPU time
(``time.process_time``, all threads: robust to other load on a shared machine; on CUDA the wall time, after
synchronising, is the figure) and wall time, the attention implementation the model ran during the engine's
passes, and the Grams' relative difference against the eager build's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from text_models import MeanPooled
from torch import nn

import phasecore.kernels.engine as engine
from phasecore.kernels import probe_gram


def build(attn: str | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig() if attn is None else transformers.BertConfig(attn_implementation=attn)
    return MeanPooled(transformers.BertModel(config)).eval()


def inputs(n: int, tokens: int, seed: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (n, tokens), generator=gen)
    lengths = torch.randint(4, tokens + 1, (n,), generator=gen)
    mask = (torch.arange(tokens).unsqueeze(0) < lengths.unsqueeze(1)).long()
    return {"input_ids": ids, "attention_mask": mask}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def floor(model: nn.Module, x: dict[str, torch.Tensor], probes: int, chunk: int) -> tuple[float, float]:
    n = x["input_ids"].shape[0]
    _sync()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(probes):
        for s in range(0, n, chunk):
            out = model(**{k: v[s : s + chunk] for k, v in x.items()})
            out.sum().backward()
    _sync()
    for p in model.parameters():
        p.grad = None
    return time.process_time() - cpu, time.perf_counter() - wall


@contextlib.contextmanager
def _no_switch(record: Any = None, *_: Any):  # noqa: ANN202 - stands in for engine.eager_attention
    yield


def run_engine(
    model: nn.Module, x: dict[str, torch.Tensor], args: argparse.Namespace, switch: bool | None
) -> tuple:
    """The engine as it is (``switch`` None), with the eager switch disabled (False) or forced (True)."""
    saved = engine.eager_attention, engine.EAGER_ATTENTION_ON
    if switch is False:
        engine.eager_attention = lambda model, record=None: _no_switch()
    elif switch:
        engine.EAGER_ATTENTION_ON = frozenset({"cpu", "cuda"})
    try:
        _sync()
        wall, cpu = time.perf_counter(), time.process_time()
        g = probe_gram(model, x, probes=args.probes, method="exact", chunk_size=args.chunk)
        _sync()
        return time.process_time() - cpu, time.perf_counter() - wall, g
    finally:
        engine.eager_attention, engine.EAGER_ATTENTION_ON = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--probes", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=None, help="also write the JSON summary here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x = inputs(args.n, args.tokens, args.seed, transformers.BertConfig().vocab_size)
    x = {k: v.to(device) for k, v in x.items()}
    configs = {
        "sdpa": (None, None),
        "sdpa-noswitch": (None, False),
        "sdpa-switch": (None, True),
        "eager": ("eager", None),
    }
    models = {label: build(attn, args.seed).to(device) for label, (attn, _) in configs.items()}
    seen: dict[str, set[str]] = {label: set() for label in configs}
    for label, model in models.items():
        with torch.no_grad():
            model(**{k: v[:2] for k, v in x.items()})  # warm-up
        model.model.encoder.layer[0].attention.register_forward_pre_hook(
            lambda *_, label=label, model=model: seen[label].add(model.model.config._attn_implementation)
        )
    best: dict[str, dict[str, float]] = {label: {} for label in configs}
    grams: dict[str, Any] = {}
    for _ in range(args.repeat):
        for label, (_, switch) in configs.items():
            model = models[label]
            f_cpu, f_wall = floor(model, x, args.probes, args.chunk)
            seen[label].clear()
            e_cpu, e_wall, g = run_engine(model, x, args, switch)
            grams[label] = g
            times = {"floor_cpu": f_cpu, "floor_wall": f_wall, "engine_cpu": e_cpu, "engine_wall": e_wall}
            for key, value in times.items():
                best[label][key] = min(best[label].get(key, value), value)
    rows: dict[str, Any] = {}
    reference = grams["eager"].ntk()
    for label in configs:
        b, g = best[label], grams[label]
        rows[label] = {
            "built_with": models[label].model.config._attn_implementation,
            "engine_ran": sorted(seen[label]),
            **{k: round(v, 3) for k, v in b.items()},
            "ratio_cpu": round(b["engine_cpu"] / b["floor_cpu"], 2),
            "ratio_wall": round(b["engine_wall"] / b["floor_wall"], 2),
            "gradients": g.info["gradients"],
            "per_sample_loop_params": len(g.info["per_sample_loop_params"]),
            "rel_diff_vs_eager": float(np.linalg.norm(g.ntk() - reference) / np.linalg.norm(reference)),
        }
    from stability import cpu_model  # bench/stability.py, beside this script

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    load = Path("/proc/loadavg").read_text().split()[:3] if platform.system() == "Linux" else None
    summary = {
        "n": args.n, "tokens": args.tokens, "probes": args.probes, "chunk": args.chunk, "repeat": args.repeat,
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "cpus": __import__("os").cpu_count(), "cpu_model": cpu_model(), "loadavg_after": load, "commit": commit,
        "configs": rows,
        "device": str(device), "eager_attention_on": sorted(engine.EAGER_ATTENTION_ON),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print(f"CPU: {summary['cpu_model']}, {summary['threads']} threads, commit {commit}")
    for label, r in rows.items():
        print(f"{label:14s} built {r['built_with']:5s} ran {','.join(r['engine_ran']):11s} "
              f"floor {r['floor_cpu']:6.2f} s cpu, engine {r['engine_cpu']:6.2f} s cpu: "
              f"ratio {r['ratio_cpu']:.2f}x cpu "
              f"({r['ratio_wall']:.2f}x wall); loop params {r['per_sample_loop_params']}")


if __name__ == "__main__":
    main()
