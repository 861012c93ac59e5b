"""Profiles of the paper's 24 encoders on one device, timed stage by stage, with exactness checks.

    PYTHONPATH=. python bench/gpu_profiles.py [--device cuda] [--out DIR] [--budget-s 400]
    PYTHONPATH=. python bench/gpu_profiles.py --device cpu --smoke        # the same code at tiny sizes

Run on a lent GPU through ``bench/gpu.sh`` (docs/benchmarks.md, "GPU (not yet measured)"). Every model of
``grids/paper-144.yaml`` is built at random init from its architecture's config (timm from code;
Hugging Face models from the hub configs' shapes, written out below since nothing can be fetched there),
wrapped in phasescreen's own ``VisionEncoder`` / ``TextEncoder`` (a word-hash tokenizer stands in for the
real one: the token counts of the digits captions are alike, the ids are not), and profiled by
``phasecore.screening.profile.compute_profile`` on the digits sample with the default settings at N and M.

Per model it records the stage times (``kernel``, ``stability``, ``spectrum`` = AGOP, and the rest), the peak
device memory (``torch.cuda.max_memory_allocated``, reset per model; null on a CPU), the method the engine
chose, and the kernel stage against its floor (M batched forward + backward passes of the same distinct
samples, in chunks of the chunk size, timed in the same run). Phases, all under one time budget:

1. exactness (two small models, N = ``--exact-n``): the exact probe Gram in float64 on the device against a
   float64 CPU reference (relative Frobenius error), the same in float32 on the device, and S_NTK on the
   device against S_NTK on the CPU (float32 each);
2. scan: every model at ``--scan-n`` (all stages), so that each has a measured time;
3. full: models in order of their scan time at ``--n``, each only if its projection (scan time × the
   scaling measured so far, ×1.5) fits the budget left; a model that overruns its per-model guard is
   stopped at the next progress report and recorded ``skipped: time budget``.

Figures are labelled ``measured`` or ``projected``; the 144-pair grid's wall time is projected from the 24
profile times at N (profiles dominate; the 144 pair steps reuse them and are not timed here).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import time
import zlib
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]

# The hub configs' shapes (config.json of each checkpoint); only what differs from transformers' defaults.
HF_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "bert-base-uncased": ("bert", {}),
    "bert-large-uncased": ("bert", dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                        intermediate_size=4096)),
    "distilbert-base-uncased": ("distilbert", {}),
    "roberta-base": ("roberta", dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                     layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2)),
    "roberta-large": ("roberta", dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                      layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                      hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                                      intermediate_size=4096)),
    "distilroberta-base": ("roberta", dict(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                           layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                                           num_hidden_layers=6)),
    "albert-base-v2": ("albert", dict(vocab_size=30000, embedding_size=128, hidden_size=768, num_hidden_layers=12,
                                      num_attention_heads=12, intermediate_size=3072, hidden_act="gelu_new")),
    "albert-large-v2": ("albert", dict(vocab_size=30000, embedding_size=128, hidden_size=1024,
                                       num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                                       hidden_act="gelu_new")),
    "gpt2": ("gpt2", {}),
    "gpt2-medium": ("gpt2", dict(n_embd=1024, n_layer=24, n_head=16)),
    "distilgpt2": ("gpt2", dict(n_layer=6)),
    "xlnet-base-cased": ("xlnet", dict(vocab_size=32000, d_model=768, n_layer=12, n_head=12, d_inner=3072)),
}  # fmt: skip
SMOKE_MODELS = [
    ("vision", "timm:test_vit"),
    ("language", "hf:tiny-bert"),
]
SMOKE_TIMM = {"test_vit": dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)}
SMOKE_HF = {"tiny-bert": ("bert", dict(vocab_size=200, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=24))}  # fmt: skip
EXACT_MODELS = ("timm:vit_small_patch16_224", "hf:distilbert-base-uncased")


class OutOfTime(Exception):  # noqa: N818 - a control-flow signal, raised from the progress callback
    pass


class WordTokenizer:
    """Stands in for a checkpoint's tokenizer (its files cannot be fetched on the GPU machine): a begin id
    (3), one id per word (10 + crc32 of the word mod the rest of the vocabulary), an end id (4); pads with 0
    (masked). Ids 0-2 are pad/bos/eos in some vocabularies (RoBERTa's pad is 1), so they are never used."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.unk_token_id, self.pad_token, self.eos_token, self.unk_token = None, "<pad>", "<eos>", "<unk>"

    def __call__(self, items: list[str], **_: Any) -> dict[str, torch.Tensor]:
        rows = [[3] + [10 + zlib.crc32(w.encode()) % (self.vocab_size - 10) for w in s.split()][:62] + [4]
                for s in items]
        t = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), t, dtype=torch.long)
        mask = torch.zeros(len(rows), t, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}


def build_encoder(ref: str, device: torch.device, smoke: bool) -> Any:
    from phasecore.sources.base import ModelRef
    from phasecore.sources.encoders import TextEncoder, VisionEncoder, default_pooling
    from phasecore.sources.timm_source import create_timm_model
    from phasecore.sources.weights import random_init

    source, _, name = ref.partition(":")
    parsed = ModelRef.parse(f"{ref}?weights=random")
    if source == "timm" and smoke:
        import timm

        with random_init():
            model = timm.create_model(name, pretrained=False, num_classes=0, **SMOKE_TIMM[name])
        return VisionEncoder(model, ref=parsed, architecture=name, device=device)
    if source == "timm":
        model = create_timm_model(name, pretrained=False)
        return VisionEncoder(model, ref=parsed, architecture=name, device=device)
    import transformers

    kind, overrides = (SMOKE_HF if smoke else HF_CONFIGS)[name]
    config = transformers.AutoConfig.for_model(kind, **overrides)
    with random_init():
        model = transformers.AutoModel.from_config(config, attn_implementation="eager")
    return TextEncoder(model, WordTokenizer(config.vocab_size), ref=parsed, pooling=default_pooling(config),
                       device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def floor_seconds(encoder: Any, inputs: Any, probes: int, chunk: int, device: torch.device) -> float:
    """M batched forward + backward passes of the inputs, in chunks: the least any gradient method pays."""
    from phasecore.sources.base import batch_size, call_encoder, slice_inputs

    n = batch_size(inputs)
    call_encoder(encoder, slice_inputs(inputs, slice(0, 2))).sum().backward()  # warm-up
    sync(device)
    started = time.perf_counter()
    for _ in range(probes):
        for s in range(0, n, chunk):
            call_encoder(encoder, slice_inputs(inputs, slice(s, s + chunk))).sum().backward()
    sync(device)
    seconds = time.perf_counter() - started
    encoder.zero_grad(set_to_none=True)
    return seconds


def profile_one(ref: str, modality: str, n: int, args: argparse.Namespace, device: torch.device,
                guard_s: float) -> dict[str, Any]:
    """One model's profile at N with stage times, peak memory, method and floor ratio (all measured)."""
    from phasecore.data import load_dataset
    from phasecore.kernels.distinct import distinct_inputs
    from phasecore.screening.profile import _inputs, compute_profile
    from phasecore.settings import EngineSettings

    row: dict[str, Any] = {"model": ref, "modality": modality, "n": n, "figures": "measured"}
    started = time.perf_counter()
    deadline = started + guard_s
    stages: dict[str, list[float]] = {}  # stage -> [first, last] progress report times: partial times on a stop
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        encoder = build_encoder(ref, device, args.smoke)
        sync(device)
        row["build_s"] = round(time.perf_counter() - started, 3)
        row["n_params"] = sum(p.numel() for p in encoder.parameters())
        deadline = time.perf_counter() + guard_s  # the guard covers the profile, not the model's random init
        settings = EngineSettings(n=n, probes=args.probes, memory_budget_gb=args.memory_budget_gb,
                                  **(dict(stability_subset=8, stability_steps=1, agop_k=4) if args.smoke else {}))
        dataset = load_dataset("digits", n=n, seed=settings.seed)

        def progress(stage: str, fraction: float) -> None:
            now = time.perf_counter()
            stages.setdefault(stage, [now, now])[1] = now
            if now > deadline:
                raise OutOfTime(stage)

        profile = compute_profile(f"{ref}?weights=random", modality, "digits", settings, encoder=encoder,
                                  dataset=dataset, progress=progress)
        sync(device)
        meta = profile.meta
        row.update(
            stages_s={k: round(v, 3) for k, v in meta["timings"].items()},
            method=meta["kernel"]["method"],
            gradients=meta["kernel"]["gradients"],
            distinct_inputs=meta["distinct_inputs"],
            per_sample_loop_params=len(meta["kernel"]["per_sample_loop_params"]),
            s_ntk=meta["stability"]["s_ntk"],
        )
        distinct = distinct_inputs(_inputs(encoder, dataset))
        floor = floor_seconds(encoder, distinct.inputs, args.probes, settings.chunk_size, device)
        row["floor_s"] = round(floor, 3)
        row["kernel_over_floor"] = round(meta["timings"]["kernel"] / floor, 2)
        row["profile_s"] = round(sum(meta["timings"].values()), 3)
        row["status"] = "ok"
    except OutOfTime as stop:
        row["status"] = f"skipped: time budget (guard {guard_s:.0f} s, stopped in {stop})"
        row["partial_stages_s"] = {k: round(b - a, 3) for k, (a, b) in stages.items()}
    except Exception as error:  # recorded, the run goes on to the next model
        row["status"] = f"error: {type(error).__name__}: {str(error)[:300]}"
    row["wall_s"] = round(time.perf_counter() - started, 3)
    row["peak_gib"] = (round(torch.cuda.max_memory_allocated(device) / 2**30, 3) if device.type == "cuda" else None)
    return row


def exactness(ref: str, n: int, probes: int, device: torch.device, smoke: bool) -> dict[str, Any]:
    """Exact probe Gram on the device (float64, float32) against float64 on the CPU; S_NTK device vs CPU."""
    import numpy as np

    from phasecore.data import load_dataset
    from phasecore.kernels import probe_gram
    from phasecore.kernels.stability import stability_probe
    from phasecore.screening.profile import _inputs

    started = time.perf_counter()
    modality = "vision" if ref.startswith("timm:") else "language"
    cpu = torch.device("cpu")
    encoder = build_encoder(ref, cpu, smoke)
    dataset = load_dataset("digits", n=max(n, 8), seed=0)
    x_cpu = _inputs(encoder, dataset)

    def to(x: Any, dev: torch.device) -> Any:
        return {k: v.to(dev) for k, v in x.items()} if isinstance(x, dict) else x.to(dev)

    def gram(dtype: torch.dtype, dev: torch.device) -> np.ndarray:
        encoder.to(device=dev, dtype=dtype)
        x = to(x_cpu, dev)
        if not isinstance(x, dict):
            x = x.to(dtype)
        return probe_gram(encoder, x, probes=probes, method="exact", cross_probe=True, chunk_size=8).gram

    reference = gram(torch.float64, cpu)
    out: dict[str, Any] = {"model": ref, "n": max(n, 8), "probes": probes, "figures": "measured"}
    for label, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        got = gram(dtype, device)
        out[f"rel_err_{label}_device_vs_cpu64"] = float(np.linalg.norm(got - reference) / np.linalg.norm(reference))
    s = {}
    for dev in (cpu, device):
        encoder.to(device=dev, dtype=torch.float32)
        s[dev.type] = stability_probe(encoder, to(x_cpu, dev), probes=probes, method="exact", subset=max(n, 8),
                                      steps=1 if smoke else 10, chunk_size=8).s_ntk
    out["s_ntk_cpu"], out["s_ntk_device"] = s["cpu"], s[device.type]
    out["s_ntk_abs_diff"] = abs(s["cpu"] - s[device.type])
    out["modality"] = modality
    out["wall_s"] = round(time.perf_counter() - started, 3)
    return out


def _commit() -> str:
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown (no .git: set BENCH_COMMIT)"


def grid_models(path: Path) -> list[tuple[str, str]]:
    import yaml

    grid = yaml.safe_load(path.read_text())
    return [("vision", m) for m in grid["vision"]] + [("language", m) for m in grid["language"]]


def projected(row: dict[str, Any], n_from: int, n_to: int, exponents: dict[str, float]) -> dict[str, Any]:
    """A row at ``n_to`` projected from one at ``n_from``: each stage × (n_to/n_from)^exponent."""
    factor = n_to / n_from
    stages = {k: round(v * factor ** exponents.get(k, 1.0), 3) for k, v in row.get("stages_s", {}).items()}
    return {"model": row["model"], "modality": row["modality"], "n": n_to, "figures": f"projected from N={n_from}",
            "stages_s": stages, "profile_s": round(sum(stages.values()), 3), "method": row.get("method"),
            "status": "projected"}


def scaling(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float]:
    """Per stage, the median exponent b of time ∝ N^b over models measured at two N."""
    import math
    import statistics

    found: dict[str, list[float]] = {}
    for small, large in pairs:
        for stage, t_small in small.get("stages_s", {}).items():
            t_large = large.get("stages_s", {}).get(stage)
            if t_large and t_small > 0.05 and stage != "loading":  # tiny times are noise
                found.setdefault(stage, []).append(math.log(t_large / t_small) / math.log(large["n"] / small["n"]))
    return {k: round(statistics.median(v), 2) for k, v in found.items()}


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# GPU profiles ({report['device_name']}, {report['started']})", "",
             f"N = {report['n']}, M = {report['probes']}, budget {report['budget_s']} s; "
             f"torch {report['torch']}, commit {report['commit']}", "", "## Exactness (measured)", "",
             "| model | N | rel. err. float64 device vs CPU | rel. err. float32 device vs CPU float64 | "
             "S_NTK CPU | S_NTK device |", "|---|---|---|---|---|---|"]
    for e in report["exactness"]:
        if "error" in e:
            lines.append(f"| {e['model']} | | {e['error']} | | | |")
            continue
        lines.append(f"| {e['model']} | {e['n']} | {e['rel_err_float64_device_vs_cpu64']:.1e} | "
                     f"{e['rel_err_float32_device_vs_cpu64']:.1e} | {e['s_ntk_cpu']:.6f} | {e['s_ntk_device']:.6f} |")
    lines += ["", f"Scaling exponents (time ∝ N^b, {report['scaling_source']}): {report['scaling']}"
              + (" — **interrupted by the time limit**" if report.get("interrupted") else ""), "",
              "## Profiles", "", "| model | N | figures | kernel s | stability s | AGOP s | profile s | "
              "floor s | kernel/floor | peak GiB | method | status |", "|" + "---|" * 12]
    for r in report["profiles"]:
        st = r.get("stages_s", {})

        def f(v: Any) -> str:
            return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

        lines.append(f"| {r['model']} | {r['n']} | {r['figures']} | {f(st.get('kernel'))} | {f(st.get('stability'))} | "
                     f"{f(st.get('spectrum'))} | {f(r.get('profile_s'))} | {f(r.get('floor_s'))} | "
                     f"{f(r.get('kernel_over_floor'))} | {f(r.get('peak_gib'))} | {f(r.get('method'))} | "
                     f"{r['status']} |")
    g = report["grid"]
    lines += ["", f"Grid of {g['pairs']} pairs, {g['profiles']} profiles at N = {report['n']}: "
              f"{g['profile_s_total']:.0f} s of profiles ({g['measured']} measured, {g['projected']} projected, "
              f"{g['missing']} missing), **projected**, one device, pair steps not included.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny models and sizes (N = 16, M = 2), for CI")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "out"))
    ap.add_argument("--grid", default=str(ROOT / "grids" / "paper-144.yaml"))
    ap.add_argument("--n", type=int, default=576)
    ap.add_argument("--probes", type=int, default=4)
    ap.add_argument("--scan-n", type=int, default=64)
    ap.add_argument("--exact-n", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=400.0, help="all phases together, after imports")
    ap.add_argument("--memory-budget-gb", type=float, default=4.0, help="the engine's memory_budget_gb")
    args = ap.parse_args()
    if args.smoke:
        args.n, args.probes, args.scan_n, args.exact_n = 16, 2, 8, 8
    device = torch.device(args.device)
    t0 = time.perf_counter()

    def left() -> float:
        return args.budget_s - (time.perf_counter() - t0)

    models = SMOKE_MODELS if args.smoke else grid_models(Path(args.grid))
    exact_models = [m for _, m in SMOKE_MODELS[:1]] if args.smoke else list(EXACT_MODELS)
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "smoke": args.smoke, "n": args.n, "probes": args.probes,
        "scan_n": args.scan_n, "budget_s": args.budget_s, "memory_budget_gb": args.memory_budget_gb,
        "commit": os.environ.get("BENCH_COMMIT") or _commit(), "cpus": os.cpu_count(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "exactness": [], "profiles": [],
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (out / "gpu_profiles.json").write_text(json.dumps(report, indent=1))

    scan: dict[str, dict[str, Any]] = {}
    measured_pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    full: dict[str, dict[str, Any]] = {}
    try:
        # 1. exactness
        for ref in exact_models:
            if left() < args.budget_s * 0.75:
                report["exactness"].append({"model": ref, "error": "skipped: time budget"})
                continue
            try:
                report["exactness"].append(exactness(ref, args.exact_n, 2, device, args.smoke))
            except Exception as error:
                report["exactness"].append({"model": ref, "error": f"{type(error).__name__}: {str(error)[:300]}"})
            print(json.dumps(report["exactness"][-1]), flush=True)
            save()
        # 2. scan at the small N: every model gets a measured time
        for i, (modality, ref) in enumerate(models):
            guard = max(10.0, min(60.0, left() * 0.6 / max(1, len(models) - i)))
            row = profile_one(ref, modality, args.scan_n, args, device, guard)
            scan[ref] = row
            print(json.dumps(row), flush=True)
            save()
        # 3. full N, cheapest first, each only if its projection fits what is left
        order = sorted((r for r in scan.values() if r["status"] == "ok"), key=lambda r: r["wall_s"])
        for row in order:
            exps = scaling(measured_pairs) or {"kernel": 1.5, "stability": 1.0, "spectrum": 2.0}
            guess = projected(row, args.scan_n, args.n, exps)["profile_s"] * 1.5 + row.get("build_s", 0) + 2 * (
                row.get("floor_s", 0) * args.n / args.scan_n)
            if guess > left():
                continue
            result = profile_one(row["model"], row["modality"], args.n, args, device, min(left(), max(30.0, guess * 2)))
            print(json.dumps(result), flush=True)
            full[row["model"]] = result
            if result["status"] == "ok":
                measured_pairs.append((row, result))
            report["scaling"] = scaling(measured_pairs)
            save()
    except KeyboardInterrupt:  # bench/gpu.sh's timeout: report what was measured
        report["interrupted"] = True
    exps = scaling(measured_pairs) or {"kernel": 1.5, "stability": 1.0, "spectrum": 2.0}
    report["scaling"] = exps
    report["scaling_source"] = "measured" if measured_pairs else "assumed (no model measured at both N)"
    report["scan"] = list(scan.values())
    report["scaling_models"] = [small["model"] for small, _ in measured_pairs]
    for _, ref in models:
        at_n = full.get(ref)
        if at_n and at_n["status"] == "ok":
            report["profiles"].append(at_n)
        elif ref in scan and scan[ref]["status"] == "ok":
            report["profiles"].append(projected(scan[ref], args.scan_n, args.n, exps) | (
                {"note": at_n["status"]} if at_n else {}))
        elif ref in scan:
            report["profiles"].append(scan[ref] | {"n": args.scan_n})
        else:
            report["profiles"].append({"model": ref, "n": args.n, "figures": "none", "status": "not reached"})
    rows = [r for r in report["profiles"] if r["n"] == args.n and "profile_s" in r]
    report["grid"] = {
        "pairs": sum(m == "vision" for m, _ in models) * sum(m == "language" for m, _ in models),
        "profiles": len(models),
        "profile_s_total": sum(r["profile_s"] for r in rows),
        "measured": sum(r["figures"] == "measured" for r in rows),
        "projected": sum(r["figures"] != "measured" for r in rows),
        "missing": len(models) - len(rows),
        "figures": "projected",
    }
    report["elapsed_s"] = round(time.perf_counter() - t0, 1)
    save()
    (out / "gpu_profiles.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
