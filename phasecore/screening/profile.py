"""Model profiles: everything about one model on one dataset sample that does not depend on its partner.

A profile holds the NTK Gram Θ̂ (METRICS §1), the AGOP spectrum (§4), the stability probe and phase
(§3), optionally the information plane (§9), the embeddings of the N samples (and, for a language model,
the class prototypes of §7), the model's identity and parameter count, the settings and timings. Kernels
run over the U distinct inputs of the sample and are expanded to N (METRICS §0); every Gram is checked
before its spectrum. It is keyed by
``(model reference, modality, dataset, profile settings, engine version)``: a 12 × 12 grid costs 24
profiles, and every pair step reuses them.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from phasecore import ENGINE_VERSION
from phasecore.data import load_dataset
from phasecore.data.base import PairedDataset
from phasecore.errors import InvalidSettings
from phasecore.kernels import probe_gram
from phasecore.kernels.agop import agop_spectrum, spectrum_from_probe_gram
from phasecore.kernels.config import KernelConfig
from phasecore.kernels.distinct import distinct_inputs
from phasecore.kernels.stability import stability_probe
from phasecore.kernels.validity import check_gram
from phasecore.references.registry import model_version
from phasecore.settings import EngineSettings, profile_key
from phasecore.similarity.infoplane import model_information_plane
from phasecore.sources import load_encoder
from phasecore.sources.base import Encoder

ProgressFn = Callable[[str, float], None]


class _AgopArgs(TypedDict):
    """The AGOP summary settings shared by the parameter- and input-space spectra."""

    k: int
    censor_below: float
    rtol: float


@dataclass
class ModelProfile:
    """Arrays (numpy) + JSON metadata of one model × dataset sample × settings."""

    key: str
    modality: str
    identity: dict[str, Any]
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        header = {"key": self.key, "modality": self.modality, "identity": self.identity, "meta": self.meta}
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            __header__=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            **self.arrays,  # type: ignore[arg-type]  # numpy stub: **arrays may fill allow_pickle (not in 1.26)
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelProfile:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            header = json.loads(npz["__header__"].tobytes().decode())
            arrays = {k: npz[k] for k in npz.files if k != "__header__"}
        return cls(header["key"], header["modality"], header["identity"], header["meta"], arrays)


def select_params(model: nn.Module, spec: str) -> list[str] | None:
    """θ from the ``params`` setting: ``all`` (None), or ``last:K``: the parameters of the last K
    blocks of the model's longest block list (a ModuleList/Sequential such as ``blocks``,
    ``encoder.layer``, ``h``, ``stages``) and of every layer after it (final norms, heads)."""
    if spec == "all":
        return None
    if not spec.startswith("last:") or not spec[5:].isdigit() or int(spec[5:]) < 1:
        raise InvalidSettings(f"params={spec!r} is not 'all' or 'last:K' with K ≥ 1")
    k = int(spec[5:])
    found = block_list(model)
    if found is None:
        raise InvalidSettings("params='last:K' needs a model with a list of blocks; use params='all'")
    name, blocks = found
    names = [n for n, _ in model.named_parameters()]
    prefix, cut = f"{name}." if name else "", max(0, len(blocks) - k)

    def block_of(parameter: str) -> int | None:
        head = parameter[len(prefix) :].split(".", 1)[0] if parameter.startswith(prefix) else ""
        return int(head) if head.isdigit() else None

    inside = [i for i, n in enumerate(names) if block_of(n) is not None]
    # the first parameter of a kept block; when the kept blocks hold none (a trailing ReLU of a Sequential), the
    # first parameter after the block list
    start = next((i for i in inside if (block_of(names[i]) or 0) >= cut), inside[-1] + 1 if inside else len(names))
    return names[start:]


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList | nn.Sequential] | None:
    """(name, module) of the model's longest list of blocks (a ModuleList/Sequential such as ``blocks``,
    ``encoder.layer``, ``h``, ``stages``), or None when it has none."""
    lists = [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m, nn.ModuleList | nn.Sequential) and len(m) > 1
    ]
    return max(lists, key=lambda item: len(item[1])) if lists else None


def _inputs(encoder: Encoder, dataset: PairedDataset) -> Any:
    items = dataset.images if encoder.modality == "vision" else dataset.captions
    return encoder.preprocess(items)


@torch.no_grad()
def class_prototypes(encoder: Encoder, dataset: PairedDataset) -> np.ndarray:
    """t_c (C, d): mean of the L2-normalised embeddings of class c's caption templates (METRICS §7)."""
    rows = []
    for c in range(len(dataset.class_names)):
        batch = encoder.preprocess(dataset.class_captions[c])
        assert isinstance(batch, Mapping), "a language encoder's inputs are keyword tensors"
        emb = encoder(**batch).double()
        emb = emb / emb.norm(dim=1, keepdim=True).clamp_min(1e-12)
        rows.append(emb.mean(0))
    return torch.stack(rows).numpy()


def compute_profile(
    model_ref: str,
    modality: str,
    dataset_ref: str,
    settings: EngineSettings,
    *,
    model_root: str | Path | None = None,
    data_root: str | Path | None = None,
    allowed_sources: Any = None,
    progress: ProgressFn | None = None,
    encoder: Encoder | None = None,
    dataset: PairedDataset | None = None,
    device: str | torch.device | None = "cpu",
) -> ModelProfile:
    """Compute one model's profile (stages: loading, kernel, stability, spectrum, embeddings).

    ``device`` (``auto``, ``cpu``, ``cuda[:N]``) is where a model loaded here runs; an ``encoder`` passed in
    runs where it is. The device is recorded in ``meta["device"]`` but is not part of the key."""
    timings: dict[str, float] = {}
    tick = time.perf_counter()

    def report(stage: str, fraction: float) -> None:
        if progress:
            progress(stage, fraction)

    report("loading", 0.0)
    if encoder is None:
        pooling = settings.language_pooling if modality == "language" else None
        encoder = load_encoder(
            model_ref,
            model_root=model_root,
            allowed_sources=allowed_sources,
            pooling=pooling,
            device=device,
        )
    if encoder.modality != modality:
        raise InvalidSettings(f"{model_ref} is a {encoder.modality} model, given as the {modality} model")
    if dataset is None:
        dataset = load_dataset(dataset_ref, n=settings.n, seed=settings.seed, data_root=data_root)
    inputs = _inputs(encoder, dataset)
    params = select_params(encoder, settings.params)
    report("loading", 1.0)
    timings["loading"] = time.perf_counter() - tick

    tick = time.perf_counter()
    kernel_config = KernelConfig(
        probes=settings.probes,
        method=settings.method,
        sketch_dim=settings.sketch_dim,
        seed=settings.seed,
        chunk_size=settings.chunk_size,
        params=None if params is None else frozenset(params),
        memory_budget_gb=settings.memory_budget_gb,
    )
    distinct = distinct_inputs(inputs)  # METRICS §0: kernels over the U distinct inputs, expanded to N
    gram = probe_gram(encoder, distinct.inputs, kernel_config, cross_probe=True, progress=progress, stage="kernel")
    ntk_distinct = gram.ntk()
    check_gram(ntk_distinct, f"{modality} NTK")
    ntk = distinct.expand_gram(ntk_distinct)
    timings["kernel"] = time.perf_counter() - tick

    tick = time.perf_counter()
    stability = stability_probe(
        encoder,
        inputs,
        kernel_config,
        method=gram.method,
        steps=settings.stability_steps,
        subset=settings.stability_subset,
        lr_scales=settings.stability_lr_scales,
        precision=settings.stability_precision,
        progress=progress,
        kernel=ntk,  # Θ̂(θ_0) of the probe subset is a block of this kernel: same probes, method and seed
        kernel_chunk=int(gram.info.get("chunk_size", settings.chunk_size)),
    )
    timings["stability"] = time.perf_counter() - tick

    tick = time.perf_counter()
    report("spectrum", 0.0)
    agop = _AgopArgs(k=settings.agop_k, censor_below=settings.agop_censor_below, rtol=settings.agop_rtol)
    spectrum = spectrum_from_probe_gram(
        gram, counts=distinct.counts, unstable_log10=settings.agop_unstable_log10, **agop
    )
    meta_input: dict[str, Any] | None = None
    if settings.agop_input_space:
        meta_input = agop_spectrum(encoder, inputs, kernel_config, space="inputs", **agop).to_dict()
    report("spectrum", 1.0)
    timings["spectrum"] = time.perf_counter() - tick

    embeddings = distinct.expand_rows(gram.outputs)
    arrays: dict[str, np.ndarray] = {
        "ntk": ntk,
        "agop_eigenvalues": spectrum.eigenvalues,
        "embeddings": embeddings,
        "labels": dataset.labels,
    }
    if modality == "language":
        tick = time.perf_counter()
        arrays["prototypes"] = class_prototypes(encoder, dataset)
        timings["prototypes"] = time.perf_counter() - tick
    info_plane: dict[str, Any] | None = None
    if settings.info_plane:
        tick = time.perf_counter()
        info_plane = model_information_plane(
            encoder, inputs, dataset.labels, block_list(encoder), chunk_size=settings.chunk_size
        )
        timings["info_plane"] = time.perf_counter() - tick

    identity = encoder.identity.to_dict()
    meta = {
        "dataset": dataset.describe(),
        "dataset_ref": dataset_ref,
        "captions": dataset.captions,
        "settings": settings.profile_fields(),
        "engine_version": ENGINE_VERSION,
        "device": str(next(encoder.parameters()).device),
        "distinct_inputs": distinct.u,
        "kernel": {
            "method": gram.method,
            "distinct_inputs": distinct.u,
            "probes": gram.n_probes,
            "probe_kind": gram.probe_kind,
            "sketch_dim": gram.sketch_dim,
            "n_params": gram.n_params,
            "n_outputs": gram.n_outputs,
            "seed": gram.seed,
            "per_sample_loop_params": gram.info["per_sample_loop_params"],
            "gradients": gram.info["gradients"],
            "stored_bytes": gram.info["stored_bytes"],
        },
        "agop": spectrum.to_dict(),
        "agop_inputs": meta_input,
        "stability": stability.to_dict(),
        "info_plane": info_plane,
        "timings": timings,
    }
    key = versioned_profile_key(model_ref, modality, dataset_ref, settings, model_root=model_root)
    return ModelProfile(key=key, modality=modality, identity=identity, meta=meta, arrays=arrays)


def versioned_profile_key(
    model_ref: str,
    modality: str,
    dataset_ref: str,
    settings: EngineSettings,
    *,
    model_root: str | Path | None = None,
) -> str:
    """The profile key with the model's content version (``phasecore.references.registry.model_version``: package
    version, the files of a ``file:`` model, a pinned hub revision), as the service keys its profiles: a changed
    model is never served from the profile of its old bytes. The key local caches use."""
    version = model_version(model_ref, model_root=Path(model_root) if model_root is not None else None)
    return profile_key(model_ref, modality, dataset_ref, settings, model_version=version)


class ProfileCache:
    """Profiles on disk, one ``<key>.npz`` each (the embedded default's cache)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def get(self, key: str) -> ModelProfile | None:
        path = self.root / f"{key}.npz"
        return ModelProfile.from_bytes(path.read_bytes()) if path.exists() else None

    def put(self, profile: ModelProfile) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{profile.key}.tmp"
        tmp.write_bytes(profile.to_bytes())
        tmp.replace(self.root / f"{profile.key}.npz")  # atomic: readers never see half a file
