"""The grammar of what the API accepts, written once: each pattern is both the OpenAPI ``pattern`` of a field
and the check the API runs on it, so the published schema and the validators cannot drift apart.

Every pattern is a regular expression both Python's ``re`` and ECMA-262 (JSON Schema) read alike: ASCII
classes, no look-arounds, no Unicode escapes. What a pattern cannot say (a timm architecture that does not
exist, a file missing under the model root, a dataset without its files, ``seed=`` without ``blend=``) is
refused after it with a domain problem (422 ``invalid-reference``, ``asset-unavailable``, ``invalid-settings``;
403 ``source-not-allowed``) -- the schema documents those answers.
"""

from __future__ import annotations

import re

from phasecore.errors import InvalidReference

# -- model references: source:name[@revision][?key=value&...] (phasecore.references.refs, stricter where it is lenient)
_NAME = r"[A-Za-z0-9_./-][A-Za-z0-9_./@-]*"
_BLEND = r"(?:0(?:\.[0-9]+)?|1(?:\.0+)?|\.[0-9]+|[0-9](?:\.[0-9]+)?e-[0-9]*[1-9][0-9]*)"  # a number in [0, 1]
_OPTION = (
    r"(?:weights=(?:pretrained|random)"
    r"|pooling=(?:mean|cls|last)"
    r"|arch=[A-Za-z0-9_.-]+"
    r"|revision=[A-Za-z0-9_./-]+"
    rf"|blend={_BLEND}"
    r"|seed=[0-9]+)"
)
# a zoo tower's recipe (phasecore.zoo.recipe): its own keys, and blend
_NUMBER = r"[0-9]*\.?[0-9]+(?:e-?[0-9]+)?"
_ZOO_OPTION = (
    r"(?:tower=(?:vision|text)"
    r"|mode=(?:joint|unimodal|random)"
    r"|(?:seed|partner|steps|width)=[0-9]+"
    r"|text=(?:transformer|gru)"
    r"|objective=(?:class|attribute|masked)"
    rf"|(?:lr|init|out|caption_noise)={_NUMBER}"
    rf"|blend={_BLEND})"
)
#: a model reference as the API takes it (no surrounding spaces, no percent-escapes, ASCII)
REFERENCE_PATTERN = (
    rf"^(?:(?:timm|hf|file|pkg):{_NAME}(?:\?(?:{_OPTION}(?:&{_OPTION})*)?)?"
    rf"|zoo:shapes(?:\?(?:{_ZOO_OPTION}(?:&{_ZOO_OPTION})*)?)?)$"
)
REFERENCE_MAX_LENGTH = 512

# -- datasets (phasecore.data.load_dataset); the torchvision names are phasecore.data.torchvision_sets.SETS
DATASET_SETS = ("cifar10", "cifar100", "svhn")
_SHAPES_OPTION = r"(?:(?:colors|shapes|size)=[0-9]+|caption_noise=[0-9]*\.?[0-9]+)"
DATASET_PATTERN = (
    rf"^(?:digits|shapes(?:\?{_SHAPES_OPTION}(?:&{_SHAPES_OPTION})*)?"
    rf"|(?:{'|'.join(DATASET_SETS)})(?::(?:test|train))?"
    r"|manifest:[A-Za-z0-9_./-][A-Za-z0-9_./@-]*)$"
)
DATASET_MAX_LENGTH = 256

# ids and the list cursor: store.models.ID_PATTERN (ids are made there)
#: the Idempotency-Key header: 1 to 255 printable ASCII characters (HTTP drops spaces at either end)
IDEMPOTENCY_KEY_PATTERN = r"^[!-~](?:[ -~]{0,253}[!-~])?$"
#: free-text filters of the list and study operations: anything but NUL (no database stores it)
NO_NUL_PATTERN = r"^[^\x00]*$"

_REFERENCE = re.compile(REFERENCE_PATTERN)
_DATASET = re.compile(DATASET_PATTERN)


def check_reference_syntax(value: str, role: str) -> None:
    """Raise InvalidReference unless ``value`` is written as REFERENCE_PATTERN says (the refs module then
    checks the option combinations and the source its names)."""
    if len(value) <= REFERENCE_MAX_LENGTH and _REFERENCE.fullmatch(value):
        return
    raise InvalidReference(
        f"{role} model reference {value[:80]!r} is not written source:name[@revision][?key=value&...] with source "
        "one of timm, hf, file, pkg; names are ASCII letters, digits and . _ - / @; the options are weights="
        "pretrained|random, pooling=mean|cls|last, arch=, revision=, blend= (0 to 1) and seed= (an integer); "
        "or zoo:shapes?tower=vision|text&... with the recipe keys mode, seed, partner, steps, width, text, "
        "objective, lr, init, out, caption_noise and blend (docs/zoo.md); no spaces, no percent-escapes"
    )


def check_dataset_syntax(value: str) -> None:
    if len(value) <= DATASET_MAX_LENGTH and _DATASET.fullmatch(value):
        return
    raise InvalidReference(
        f"dataset {value[:80]!r} is not one of digits, shapes[?colors=8&shapes=6&size=224&caption_noise=0], "
        f"{', '.join(f'{s}[:train]' for s in DATASET_SETS)}, manifest:<file.jsonl>"
    )
