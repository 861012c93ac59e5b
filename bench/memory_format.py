"""One batched forward + backward of a vision model in PyTorch's two memory formats (a lead for issue 23).

    PYTHONPATH=. python bench/memory_format.py [--models efficientnet-lite0,resnet18] [--batch 32] [--repeat 3]
                                               [--threads 0]

The stability probe's T + 1 loss passes are plain batched forward + backward passes of the model (METRICS §3);
they are half of EfficientNet-Lite0's kernel stage on a 2-core CPU. This times that pass, interleaved in one
process (best of ``--repeat``), with the model and a (batch, 3, 224, 224) input in the contiguous (NCHW) format the
engine uses and in ``torch.channels_last`` (NHWC, oneDNN's preferred layout for convolutions on a CPU), and prints
contiguous / channels_last beside the CPU model and the commit. It also prints the largest relative difference of
the parameter gradients between the two formats: the same sums in another order, so float32 rounding only.
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.stability import commit, cpu_model
from phasecore.sources import load_encoder

MODELS = {"efficientnet-lite0": "pkg:efficientnet-lite0", "resnet18": "timm:resnet18?weights=random"}


def _pass(model: torch.nn.Module, x: torch.Tensor) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    start = time.perf_counter()
    out = model(x)
    out.float().square().sum().backward()
    seconds = time.perf_counter() - start
    return seconds, [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="efficientnet-lite0,resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: as torch chose)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads, commit {commit()}, batch {args.batch} at 224 px")
    for name in args.models.split(","):
        model = load_encoder(MODELS[name]).model
        x = torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        best = {"contiguous": float("inf"), "channels_last": float("inf")}
        grads: dict[str, list[torch.Tensor]] = {}
        for _ in range(args.repeat):  # interleaved, so drift in the machine's speed hits both alike
            for fmt, memory_format in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
                model = model.to(memory_format=memory_format)
                seconds, grads[fmt] = _pass(model, x.contiguous(memory_format=memory_format))
                best[fmt] = min(best[fmt], seconds)
        diff = max(
            float((a - b).abs().max() / a.abs().max().clamp_min(1e-30))
            for a, b in zip(grads["contiguous"], grads["channels_last"], strict=True)
        )
        print(
            f"{name:20s} contiguous {best['contiguous']:6.2f} s  channels_last {best['channels_last']:6.2f} s  "
            f"ratio {best['contiguous'] / best['channels_last']:.2f}x  max rel. grad difference {diff:.1e}"
        )


if __name__ == "__main__":
    main()
