"""The NTK engine against its floor and the usual alternatives, side by side in one run.

    python bench/ntk_engine.py [--n 64[,576]] [--models resnet18,efficientnet_lite0,vit_small,bert_base,gpt2]
                               [--device cpu|cuda] [--max-jacobian-gb 6] [--chunk 32] [--seed 0]
                               [--note "machine shared with ..."]
    python bench/ntk_engine.py --only bert_base:exact:576      # one measurement, in this process

For random-init models (timm ``resnet18``, ``tf_efficientnet_lite0``, ``vit_small_patch16_224`` with
``num_classes=0``; a ``bert-base-uncased``-shaped ``BertModel`` and a ``gpt2``-shaped ``GPT2Model`` built
from their configs with eager attention, masked-mean pooled to (B, d) with batch-shaped ``position_ids``)
and N random inputs (224×224 RGB images; token ids of length 16 with a ragged attention mask), it times:

- ``floor``: one batched forward + backward of the summed outputs, in chunks of ``--chunk`` samples
  (what any gradient-based method has to pay at least once);
- ``exact`` / ``sketch``: ``phasecore.kernels.ntk_gram(model, x, probes=1, method=..., chunk_size=--chunk)``;
- ``naive``: per sample, forward + backward of ``u·f(x_i)`` with the engine's probe
  (``make_probes(1, d, seed)``), flattened into J (N × P), then ``J Jᵀ / d``; skipped when J would
  exceed ``--max-jacobian-gb``. When it is skipped, ``loop`` times the same per-sample backward loop
  without keeping J: a lower bound on the naive time, marked ``≥`` in the table;
- ``func``: the PyTorch tutorial's NTK by Jacobian contraction (``vmap(jacrev(...))`` over
  ``functional_call``, trace contraction by einsum), only where its Jacobian (d × P × N floats) fits
  ``--max-jacobian-gb``. For the text models ``jacrev`` runs one sample at a time: transformers' mask
  code branches on the mask's values, which ``vmap`` cannot batch. This is the exact trace NTK (all d
  outputs), not the one-probe estimate, so it is not compared with the naive Gram.

Every measurement runs in a fresh subprocess (this script with ``--only MODEL:METHOD:N``), which reports
its own peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``; on CUDA also ``torch.cuda.max_memory_allocated``)
so peaks never mix; "setup" is the RSS after imports, model and inputs, before the method runs. Each child
builds the model and inputs from the same seed, so the Grams of different methods are comparable: the table
gives ``‖G_engine − G_naive‖_F / ‖G_naive‖_F``. One warm-up forward of two samples precedes every timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODELS = ("resnet18", "efficientnet_lite0", "vit_small", "bert_base", "gpt2")
TIMM_NAMES = {
    "resnet18": "resnet18",
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "vit_small": "vit_small_patch16_224",
}
METHODS = ("floor", "exact", "sketch", "naive", "loop", "func")
TEXT_LEN = 16
RESULT_TAG = "BENCH-RESULT "


# --------------------------------------------------------------------------------------------- child side


def _build(name: str, n: int, seed: int, device: str) -> tuple[Any, Any]:
    """The random-init model (eval mode) and its N inputs, identical in every child for the same seed."""
    import torch

    torch.manual_seed(seed)
    if name in TIMM_NAMES:
        import timm

        model = timm.create_model(TIMM_NAMES[name], pretrained=False, num_classes=0)
        gen = torch.Generator().manual_seed(seed + 1)
        inputs: Any = torch.randn(n, 3, 224, 224, generator=gen)
    else:
        import transformers

        if name == "bert_base":
            # the bert-base-uncased shapes: 12 layers × 768, vocab 30522
            config = transformers.BertConfig(attn_implementation="eager")
            backbone = transformers.BertModel(config)
        else:
            # the gpt2 shapes: 12 layers × 768, vocab 50257
            config = transformers.GPT2Config(attn_implementation="eager", use_cache=False)
            backbone = transformers.GPT2Model(config)

        from text_models import MeanPooled

        model = MeanPooled(backbone)
        gen = torch.Generator().manual_seed(seed + 1)
        ids = torch.randint(0, config.vocab_size, (n, TEXT_LEN), generator=gen)
        lengths = torch.randint(4, TEXT_LEN + 1, (n,), generator=gen)
        mask = (torch.arange(TEXT_LEN).unsqueeze(0) < lengths.unsqueeze(1)).long()
        inputs = {"input_ids": ids, "attention_mask": mask}
    model = model.to(device).eval()
    inputs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)
    return model, inputs


def _rows(inputs: Any, sl: slice) -> Any:
    return {k: v[sl] for k, v in inputs.items()} if isinstance(inputs, dict) else inputs[sl]


def _call(model: Any, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _floor(model: Any, inputs: Any, n: int, chunk: int) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    for start in range(0, n, chunk):
        out = _call(model, _rows(inputs, slice(start, start + chunk)))
        out.sum().backward()
    for p in params:
        p.grad = None


def _probe(model: Any, inputs: Any, seed: int) -> Any:
    import torch

    from phasecore.kernels.engine import make_probes

    with torch.no_grad():
        d = _call(model, _rows(inputs, slice(0, 1))).shape[1]
    u, _ = make_probes(1, d, seed, next(model.parameters()).dtype)
    return u[0]


def _naive(model: Any, inputs: Any, n: int, seed: int, keep: bool) -> Any:
    """Per-sample forward + backward of u·f(x_i); J (N × P) and J Jᵀ / d when ``keep``."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    u = _probe(model, inputs, seed).to(next(model.parameters()).device)
    jac = torch.zeros(n, n_params, device=u.device) if keep else None
    for i in range(n):
        out = _call(model, _rows(inputs, slice(i, i + 1)))
        grads = torch.autograd.grad((out[0] * u).sum(), params, allow_unused=True)
        if jac is not None:
            offset = 0
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    jac[i, offset : offset + p.numel()] = g.reshape(-1)
                offset += p.numel()
    if jac is None:
        return None
    gram = torch.zeros(n, n, dtype=torch.float64, device=jac.device)
    for start in range(0, n_params, 1 << 20):  # float64 products, one column block at a time
        block = jac[:, start : start + (1 << 20)].double()
        gram += block @ block.T
    return gram / u.shape[0]


def _func(model: Any, inputs: Any, n: int) -> Any:
    """The PyTorch tutorial's empirical NTK by Jacobian contraction, trace mode, averaged over outputs."""
    import torch
    from torch.func import functional_call, jacrev, vmap

    params = {k: v.detach() for k, v in model.named_parameters()}
    if isinstance(inputs, dict):
        keys = list(inputs)

        def fnet_single(p: dict[str, Any], *xs: Any) -> Any:
            kw = {k: x.unsqueeze(0) for k, x in zip(keys, xs, strict=True)}
            return functional_call(model, p, (), kw).squeeze(0)

        args = tuple(inputs[k] for k in keys)
    else:

        def fnet_single(p: dict[str, Any], *xs: Any) -> Any:
            return functional_call(model, p, (xs[0].unsqueeze(0),)).squeeze(0)

        args = (inputs,)
    if isinstance(inputs, dict):
        # transformers' mask preparation branches on the mask's values, which vmap cannot batch:
        # the same jacrev, one sample at a time
        rows = [jacrev(fnet_single)(params, *(a[i] for a in args)) for i in range(n)]
        jac = [torch.stack([r[k] for r in rows]).flatten(2) for k in params]
    else:
        jac = vmap(jacrev(fnet_single), (None, 0))(params, *args)  # {name: (N, d, *shape)}
        jac = [j.flatten(2) for j in jac.values()]
    d = jac[0].shape[1]
    # the tutorial's "trace" contraction, x1 = x2: sum over outputs of <J_a(x1), J_a(x2)>
    gram = torch.stack([torch.einsum("Naf,Maf->NM", j, j) for j in jac]).sum(0)
    return gram.double() / d


def run_one(name: str, method: str, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this process; returns the record the parent prints."""
    import numpy as np
    import torch

    device = args.device
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    record: dict[str, Any] = {"model": name, "method": method, "n": n, "device": device}
    record["threads"] = torch.get_num_threads()
    record["engine_source"] = _engine_source()
    model, inputs = _build(name, n, args.seed, device)
    params = list(model.parameters())
    record["params"] = sum(p.numel() for p in params)
    with torch.no_grad():
        warm = _call(model, _rows(inputs, slice(0, 2)))
    record["d"] = int(warm.shape[1])
    record["setup_rss_gb"] = _rss_gb()
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    gram = None
    sync()
    started = time.perf_counter()
    if method == "floor":
        _floor(model, inputs, n, args.chunk)
    elif method in ("exact", "sketch"):
        from phasecore.kernels import ntk_gram

        gram = ntk_gram(model, inputs, probes=1, method=method, chunk_size=args.chunk, seed=args.seed)
    elif method in ("naive", "loop"):
        gram = _naive(model, inputs, n, args.seed, keep=method == "naive")
    elif method == "func":
        gram = _func(model, inputs, n)
    else:
        raise SystemExit(f"unknown method {method!r}; one of {', '.join(METHODS)}")
    sync()
    record["seconds"] = time.perf_counter() - started
    record["peak_rss_gb"] = _rss_gb()
    if device.startswith("cuda"):
        record["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
    if gram is not None and args.gram_out:
        gram = gram.cpu().numpy() if isinstance(gram, torch.Tensor) else np.asarray(gram)
        np.save(args.gram_out, gram.astype(np.float64))
        record["gram"] = args.gram_out
    return record


def _engine_source() -> str:
    """A short digest of the engine's source files, so a run that spans an edit of the engine shows it."""
    import hashlib

    import phasecore.kernels

    digest = hashlib.sha256()
    for path in sorted(Path(phasecore.kernels.__file__).parent.glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _volunteer_for_oom() -> None:
    """Be the kernel's first choice if memory runs out (inherited by the measurements), so that other
    jobs on a shared machine survive a benchmark that overreaches."""
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


# -------------------------------------------------------------------------------------------- parent side


def _child(name: str, method: str, n: int, args: argparse.Namespace, gram_dir: str) -> dict[str, Any]:
    gram_out = os.path.join(gram_dir, f"{name}-{method}-{n}.npy")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--only",
        f"{name}:{method}:{n}",
        "--device",
        args.device,
        "--chunk",
        str(args.chunk),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--gram-out",
        gram_out,
    ]
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout:.0f} s"}
    wall = time.perf_counter() - started
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            record = json.loads(line[len(RESULT_TAG) :])
            record["wall"] = wall
            return record
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    last = tail[-1] if tail else f"exit status {proc.returncode}"
    if proc.returncode < 0 or proc.returncode == 137:
        last = f"killed (signal {-proc.returncode if proc.returncode < 0 else 9}; out of memory?)"
    name = last.split(":", 1)[0]
    if "." in name and " " not in name:  # "package.module.SomeError: message" -> "SomeError: message"
        last = name.rsplit(".", 1)[1] + last[len(name) :]
    return {"error": last if len(last) <= 160 else last[:157] + "..."}


def _rel(a_path: str | None, b_path: str | None) -> float | None:
    import numpy as np

    if not a_path or not b_path or not os.path.exists(a_path) or not os.path.exists(b_path):
        return None
    a, b = np.load(a_path), np.load(b_path)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _fmt_s(rec: dict[str, Any] | None, lower_bound: bool = False) -> str:
    if rec is None:
        return "—"
    if "skipped" in rec:
        return f"skipped ({rec['skipped']})"
    if "error" in rec:
        return f"error: {rec['error']}"
    return ("≥ " if lower_bound else "") + f"{rec['seconds']:.1f}"


def _fmt_mem(rec: dict[str, Any] | None, gpu: bool) -> str:
    if rec is None or "seconds" not in rec:
        return "—"
    text = f"{rec['peak_rss_gb']:.2f}"
    if gpu and "gpu_peak_gb" in rec:
        text += f" / {rec['gpu_peak_gb']:.2f}"
    return text


def _ratio(num: dict[str, Any] | None, den: dict[str, Any] | None, prefix: str = "") -> str:
    if not num or not den or "seconds" not in num or "seconds" not in den or den["seconds"] <= 0:
        return "—"
    return f"{prefix}{num['seconds'] / den['seconds']:.2f}×"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_all(args: argparse.Namespace) -> int:
    ns = [int(x) for x in str(args.n).split(",") if x.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown models {unknown}; choose from {', '.join(MODELS)}")
    limit = args.max_jacobian_gb * 2**30
    gpu = args.device.startswith("cuda")
    started = time.perf_counter()
    load_before = os.getloadavg()
    results: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="ntk-bench-") as gram_dir:
        for n in ns:
            for name in models:
                recs: dict[str, dict[str, Any]] = {}
                results[(name, n)] = recs
                for method in ("floor", "exact", "sketch"):
                    _log(f"[{time.perf_counter() - started:6.0f} s] {name} N={n} {method} ...")
                    recs[method] = _child(name, method, n, args, gram_dir)
                    _log(f"         -> {_fmt_s(recs[method])} s")
                info = next((r for r in recs.values() if "params" in r), None)
                if info is None:
                    recs["naive"] = recs["func"] = {"error": "no run reported the model's size"}
                    continue
                p, d = info["params"], info["d"]
                j_bytes = n * p * 4
                if j_bytes > limit:
                    recs["naive"] = {"skipped": f"J would be {j_bytes / 2**30:.1f} GB"}
                    _log(f"         naive skipped (J would be {j_bytes / 2**30:.1f} GB); timing the loop alone")
                    recs["loop"] = _child(name, "loop", n, args, gram_dir)
                else:
                    _log(f"[{time.perf_counter() - started:6.0f} s] {name} N={n} naive ...")
                    recs["naive"] = _child(name, "naive", n, args, gram_dir)
                    _log(f"         -> {_fmt_s(recs['naive'])} s")
                f_bytes = d * p * n * 4
                if f_bytes > limit:
                    recs["func"] = {
                        "skipped": f"d·P·N Jacobian would be {f_bytes / 2**30:,.0f} GB > {args.max_jacobian_gb:g} GB"
                    }
                else:
                    _log(f"[{time.perf_counter() - started:6.0f} s] {name} N={n} func ...")
                    recs["func"] = _child(name, "func", n, args, gram_dir)
                for method in ("exact", "sketch"):
                    recs[method]["rel_vs_naive"] = _rel(recs[method].get("gram"), recs["naive"].get("gram"))
    total = time.perf_counter() - started
    if args.json:
        raw = [
            {"model": name, "n": n, "method": method, **rec}
            for (name, n), recs in results.items()
            for method, rec in recs.items()
        ]
        Path(args.json).write_text(json.dumps(raw, indent=1))
    _report(args, results, ns, models, gpu, total, load_before, os.getloadavg())
    return 0


def _report(
    args: argparse.Namespace,
    results: dict[tuple[str, int], dict[str, dict[str, Any]]],
    ns: list[int],
    models: list[str],
    gpu: bool,
    total: float,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> None:
    import torch

    cores = os.cpu_count()
    threads = sorted({r["threads"] for recs in results.values() for r in recs.values() if "threads" in r})
    threads = ", ".join(map(str, threads)) or "?"
    busy = max(load_before[0], load_after[0]) > (cores or 1)
    print(f"# NTK engine benchmark — {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")
    print()
    print(
        f"- machine: {platform.node()} · {cores} CPU cores · torch {torch.__version__} "
        f"({threads} threads per measurement) · device {args.device}"
        + (f" ({torch.cuda.get_device_name()})" if gpu and torch.cuda.is_available() else "")
    )
    sources = sorted({r["engine_source"] for recs in results.values() for r in recs.values() if "engine_source" in r})
    print(
        f"- engine source digest: {', '.join(sources) or '?'}"
        + (" — **the engine changed during the run**" if len(sources) > 1 else "")
    )
    print(f"- load average (1 min) at start {load_before[0]:.1f}, at end {load_after[0]:.1f}")
    if busy:
        print("- **the machine was busy with other work during this run: timings are inflated and noisy**")
    if args.note:
        print(f"- note: {args.note}")
    print(f"- command: `python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`")
    print(
        f"- exact / sketch = `ntk_gram(model, x, probes=1, method=..., chunk_size={args.chunk})`; "
        f"floor = batched forward + backward of Σ f in chunks of {args.chunk}; naive = per-sample backward "
        f"+ J Jᵀ (skipped above {args.max_jacobian_gb:g} GB of J; `≥` = the loop alone, J not kept); "
        "func = torch.func tutorial (vmap(jacrev) + einsum trace contraction)"
    )
    print(f"- total wall time {total / 60:.1f} min (each measurement in a fresh subprocess)")
    for n in ns:
        print()
        print(f"## N = {n}")
        print()
        print("Seconds (ratios of those):")
        print()
        print(
            "| model | P | d | floor | exact | sketch | naive | torch.func | exact/floor | sketch/floor | naive/exact |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|")
        for name in models:
            recs = results[(name, n)]
            info = next((r for r in recs.values() if "params" in r), {})
            naive = recs.get("naive")
            lower = naive is not None and "skipped" in naive and "loop" in recs
            shown = recs["loop"] if lower else naive
            naive_cell = _fmt_s(shown, lower_bound=lower)
            if lower and naive is not None:
                naive_cell += f" (J would be {naive['skipped'].split()[-2]} GB)"
            print(
                f"| {name} | {info.get('params', 0) / 1e6:.1f} M | {info.get('d', '?')} "
                f"| {_fmt_s(recs.get('floor'))} | {_fmt_s(recs.get('exact'))} | {_fmt_s(recs.get('sketch'))} "
                f"| {naive_cell} | {_fmt_s(recs.get('func'))} "
                f"| {_ratio(recs.get('exact'), recs.get('floor'))} | {_ratio(recs.get('sketch'), recs.get('floor'))} "
                f"| {_ratio(shown, recs.get('exact'), '≥ ' if lower else '')} |"
            )
        print()
        mem = "Peak RSS, GiB" + (" (RSS / GPU max allocated)" if gpu else "")
        mem += "; setup = after imports, model, inputs:"
        print(mem)
        print()
        print(
            "| model | setup | floor | exact | sketch | naive (or loop) | torch.func "
            "| exact vs naive | sketch vs naive |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in models:
            recs = results[(name, n)]
            setup = next((r["setup_rss_gb"] for r in recs.values() if "setup_rss_gb" in r), None)
            naive = recs.get("naive")
            shown = recs["loop"] if naive is not None and "skipped" in naive and "loop" in recs else naive
            rel = [recs.get(m, {}).get("rel_vs_naive") for m in ("exact", "sketch")]
            print(
                f"| {name} | {setup:.2f} | " if setup is not None else f"| {name} | — | ",
                end="",
            )
            print(
                f"{_fmt_mem(recs.get('floor'), gpu)} | {_fmt_mem(recs.get('exact'), gpu)} "
                f"| {_fmt_mem(recs.get('sketch'), gpu)} | {_fmt_mem(shown, gpu)} | {_fmt_mem(recs.get('func'), gpu)} "
                f"| {'—' if rel[0] is None else f'{rel[0]:.1e}'} | {'—' if rel[1] is None else f'{rel[1]:.1e}'} |"
            )
    print()
    print("relative difference = ‖G − G_naive‖_F / ‖G_naive‖_F with the same probe (make_probes(1, d, seed)).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="64", help="comma-separated sample counts (default 64; e.g. 64,576)")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:k]")
    parser.add_argument("--chunk", type=int, default=32, help="engine chunk size, also the floor's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads per measurement (default: torch's own choice)"
    )
    parser.add_argument("--max-jacobian-gb", type=float, default=6.0, help="skip naive / torch.func above this")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement")
    parser.add_argument("--note", default="", help="a line printed with the machine (e.g. other load)")
    parser.add_argument("--json", help="also write every measurement's record to this file")
    parser.add_argument("--only", help="MODEL:METHOD:N: run one measurement here and print its record")
    parser.add_argument("--gram-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _volunteer_for_oom()
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is available here")
    if args.only:
        try:
            name, method, n = args.only.split(":")
        except ValueError:
            raise SystemExit("--only takes MODEL:METHOD:N, e.g. bert_base:exact:576") from None
        if name not in MODELS or method not in METHODS:
            raise SystemExit(f"--only: models {', '.join(MODELS)}; methods {', '.join(METHODS)}")
        record = run_one(name, method, int(n), args)
        print(RESULT_TAG + json.dumps(record), flush=True)
        if not args.gram_out:  # run by hand: a readable line too
            print(
                f"{name} {method} N={n}: {record['seconds']:.1f} s, peak RSS {record['peak_rss_gb']:.2f} GiB "
                f"(setup {record['setup_rss_gb']:.2f} GiB)"
                + (f", GPU peak {record['gpu_peak_gb']:.2f} GiB" if "gpu_peak_gb" in record else "")
            )
        return 0
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main())
