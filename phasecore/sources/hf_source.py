"""``hf:<org/name>[@revision]``: a Hugging Face text model (AutoModel + AutoTokenizer).

Remote code is never executed (``trust_remote_code=False``); attention is built ``eager`` so the kernel
engine's per-sample gradients pass through plain matmuls rather than fused kernels.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError, RevisionNotFoundError
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging as hf_logging

from phasecore.errors import AssetUnavailable, InvalidReference, UnsupportedModel, describe
from phasecore.sources.base import ModelRef
from phasecore.sources.encoders import TextEncoder, default_pooling
from phasecore.sources.weights import apply_blend, random_init

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_ALTERNATIVES = "a saved model folder as file:<folder>, or the offline pkg:all-minilm-l6-v2"


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers draws its own "Loading weights" bar; phasescreen reports loading as a stage of its own."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # transformers: no annotations
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]  # transformers: no annotations


@contextmanager
def _hub_errors(location: str, revision: str | None) -> Iterator[None]:
    """Turn the hub's and transformers' exceptions into phasecore errors that say what would work."""
    at = f"{location}@{revision}" if revision else location
    try:
        yield
    except (OSError, ValueError) as error:
        kinds = {type(e) for e in _causes(error)}
        if kinds & {RepositoryNotFoundError, HFValidationError}:
            raise InvalidReference(
                f"{at!r} is not a model on the hub nor a local model folder; check the name "
                f"(e.g. hf:sentence-transformers/all-MiniLM-L6-v2)"
            ) from error
        if RevisionNotFoundError in kinds:
            raise InvalidReference(
                f"revision {revision!r} of {location!r} does not exist on the hub"
            ) from error
        if "trust_remote_code" in str(error):
            raise UnsupportedModel(
                f"{at!r} needs its own remote code, which phasescreen never runs; choose a model that "
                "transformers supports natively"
            ) from error
        if isinstance(error, ValueError):
            raise InvalidReference(f"{at!r} cannot be loaded: {describe(error)}") from error
        raise AssetUnavailable(
            f"{at!r} cannot be fetched from the hub or found in the local cache ({describe(error)}); "
            f"download it where the hub is reachable, or use {_ALTERNATIVES}"
        ) from error


def _check_tokenizer(tokenizer: Any, location: str) -> None:
    """transformers builds an empty tokenizer when a folder has no tokenizer files: every word is unknown."""
    ids = tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and all(i == tokenizer.unk_token_id for i in ids):
        raise AssetUnavailable(
            f"{location!r} has no usable tokenizer (every word maps to {tokenizer.unk_token}); "
            "save it next to the model with tokenizer.save_pretrained(<folder>)"
        )


def _ensure_pad_token(tokenizer: Any, location: str) -> None:
    """Decoder-only tokenizers (GPT-2) have no pad token; batches pad with eos, masked out by pooling."""
    if tokenizer.pad_token is not None:
        return
    fallback = tokenizer.eos_token or tokenizer.unk_token
    if fallback is None:
        raise UnsupportedModel(
            f"the tokenizer of {location!r} has no pad, eos or unk token to pad batches with"
        )
    tokenizer.pad_token = fallback


def build_text_encoder(
    location: str,
    *,
    ref: ModelRef,
    device: str | torch.device,
    revision: str | None = None,
    weights_sha256: str | None = None,
    extra: dict[str, Any] | None = None,
) -> TextEncoder:
    """A TextEncoder from a hub id or a local transformers folder ``location``.

    ``ref.weights == "random"`` initialises from the config alone (seeded by ``ref.init_seed``); ``ref.blend``
    mixes the pretrained weights with that initialisation (``apply_blend``); ``ref.pooling`` overrides
    the default pooling (``last`` for decoder-only models, else ``mean``). Encoder-decoder models
    contribute their encoder.
    """
    options = {"revision": revision, "trust_remote_code": False}
    with _hub_errors(location, revision), _quiet_loading():
        config = AutoConfig.from_pretrained(location, **options)
        tokenizer = AutoTokenizer.from_pretrained(location, **options)
        def from_config() -> Any:
            return AutoModel.from_config(  # type: ignore[no-untyped-call]  # transformers: from_config is untyped
                config, attn_implementation="eager", trust_remote_code=False
            )

        if ref.weights == "random":
            with random_init(ref.init_seed):
                model = from_config()
        else:
            # keywords spelled out: transformers 5.x types from_pretrained's parameters, which **options hides
            model = AutoModel.from_pretrained(
                location, revision=revision, trust_remote_code=False, attn_implementation="eager", dtype=torch.float32
            )
            if ref.blend is not None:
                extra = (extra or {}) | {"blend": apply_blend(model, ref, from_config)}
    if config.is_encoder_decoder:
        model = model.get_encoder()
    _check_tokenizer(tokenizer, location)
    _ensure_pad_token(tokenizer, location)
    return TextEncoder(
        model,
        tokenizer,
        ref=ref,
        pooling=ref.pooling or default_pooling(config),
        device=device,
        revision=getattr(config, "_commit_hash", None) or revision,
        weights_sha256=weights_sha256,
        extra=extra,
    )


def load_hf(ref: ModelRef, *, model_root: Path, device: str | torch.device) -> TextEncoder:
    """``hf:<org/name>[@revision]``; the identity records the resolved commit."""
    # transformers loads any existing local folder of that name: hub ids only, files go through file:
    if not _HUB_ID.fullmatch(ref.name) or ".." in ref.name or Path(ref.name).exists():
        raise InvalidReference(
            f"hf:{ref.name} is not a hub id of the form name or org/name; "
            "for a local folder use file:<folder>"
        )
    return build_text_encoder(ref.name, ref=ref, device=device, revision=ref.revision)
