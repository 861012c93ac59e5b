"""The grammar the API publishes (service.contract) against the parsers behind it: whatever the schema's patterns
allow parses, or is refused only for what a pattern cannot say; request bodies are strictly typed."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from jobs.screenings import decode_cursor, encode_cursor
from phasecore.errors import InvalidReference, PhasescreenError
from phasecore.references.refs import ModelRef
from phasecore.settings import EngineSettings
from problems import Problem
from service.contract import (
    DATASET_PATTERN,
    DATASET_SETS,
    IDEMPOTENCY_KEY_PATTERN,
    REFERENCE_MAX_LENGTH,
    REFERENCE_PATTERN,
    check_reference_syntax,
)
from service.deps import checked_idempotency_key
from service.schemas import ScreeningRequest
from store.models import new_id

#: what ModelRef.parse may still refuse in a reference the pattern allows: option combinations
_COMBINATIONS = re.compile(
    r"appears twice|seed=|blend=t mixes|with blend=t or weights=random"
    # a zoo recipe: a missing tower, a key without meaning for its mode, a value out of range
    r"|names no tower|has no meaning|must be an integer from|must be a number in|text objective|partner;"
    r"|own initialisation"
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(REFERENCE_PATTERN, fullmatch=True).filter(lambda text: len(text) <= REFERENCE_MAX_LENGTH))
def test_a_reference_the_pattern_allows_parses_or_breaks_an_option_rule(text):
    # the API's contract is the pattern and the length limit together (the JSON Schema's maxLength)
    check_reference_syntax(text, "vision")
    try:
        ref = ModelRef.parse(text)
    except InvalidReference as exc:
        assert _COMBINATIONS.search(str(exc)), str(exc)
        return
    assert re.fullmatch(REFERENCE_PATTERN, ref.canonical())  # batches submit canonical forms again


@pytest.mark.parametrize(
    "text",
    ["hf:bert-base-uncased", "timm:resnet18?weights=random&seed=3", "pkg:all-minilm-l6-v2?blend=1e-05",
     "file:vit.safetensors?arch=vit_small_patch16_224", "hf:org/name@refs/pr/1?pooling=cls", "timm:resnet18?blend=1",
     "zoo:shapes?tower=vision&mode=joint&seed=0&steps=600", "zoo:shapes?tower=text&lr=1e-05&out=100&blend=0.25",
     "zoo:shapes?tower=text&mode=unimodal&objective=masked&caption_noise=0.3&text=gru"],
)
def test_usual_references_fit_the_pattern(text):
    assert re.fullmatch(REFERENCE_PATTERN, text)
    assert re.fullmatch(REFERENCE_PATTERN, ModelRef.parse(text).canonical())


@pytest.mark.parametrize(
    "text", [" hf:x", "hf:x ", "hf:a b", "hf:x?weights=ran%64om", "hf:x?foo=1", "nosuchsource:x", "hf:é", "hf:x\n"]
)
def test_the_pattern_refuses_what_the_api_refuses(text):
    assert not re.fullmatch(REFERENCE_PATTERN, text)
    with pytest.raises(InvalidReference):
        check_reference_syntax(text, "vision")


def test_the_dataset_pattern_names_every_torchvision_set():
    from phasecore.data.torchvision_sets import SETS

    assert set(DATASET_SETS) == set(SETS)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(DATASET_PATTERN, fullmatch=True))
def test_a_dataset_the_pattern_allows_loads_or_is_refused_as_a_domain_error(tmp_path_factory, text):
    from phasecore.data import load_dataset

    # missing files, ranges of the shapes options: a domain problem, answered 422; anything else fails the test
    with contextlib.suppress(PhasescreenError):
        load_dataset(text, n=8, data_root=tmp_path_factory.getbasetemp())


def test_request_bodies_are_strictly_typed():
    body = {"vision": "hf:a", "language": "hf:b", "dataset": "digits"}
    for bad in ({"reuse": "true"}, {"reuse": 1}, {"options": {"n": "64"}}, {"options": {"ground_truth": 1}},
                {"options": {"probes": 65}}, {"options": {"stability_lr_scales": ["1"]}}, {"vision": 12}):
        with pytest.raises(ValidationError):
            ScreeningRequest.model_validate({**body, **bad})
    ok = ScreeningRequest.model_validate({**body, "options": {"n": 64.0, "memory_budget_gb": 4, "probes": "exact"}})
    assert ok.options.n == 64 and isinstance(ok.options.n, int)  # JSON Schema's integer 64.0 is an integer
    # settings the CLI built are taken as they are
    built = ScreeningRequest(**body, options=EngineSettings(n=32, stability_lr_scales=(2.0,)))
    assert built.options.n == 32 and built.options.stability_lr_scales == (1.0, 2.0)


def test_stored_settings_with_eight_step_sizes_validate_again():
    settings = EngineSettings(stability_lr_scales=[2, 3, 4, 5, 6, 7, 8, 9])
    assert len(settings.stability_lr_scales) == 9  # c = 1 added
    assert EngineSettings.model_validate(settings.model_dump()) == settings  # the worker reads them back
    with pytest.raises(ValidationError):
        EngineSettings(stability_lr_scales=list(range(2, 11)))


def test_the_cursor_is_an_id_and_anything_of_that_form_is_a_position():
    ident = new_id()
    assert decode_cursor(encode_cursor(ident)) == ident
    assert decode_cursor("ffffffff-ffff-ffff-ffff-ffffffffffff")
    for bad in ("", "garbage", ident.upper(), ident + "0"):
        with pytest.raises(Problem):
            decode_cursor(bad)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=260))
def test_the_idempotency_key_pattern_is_the_check(value):
    # HTTP drops spaces at either end of a header value, so the check sees the stripped text
    sent = value.strip(" \t")
    try:
        checked_idempotency_key(sent)
        accepted = True
    except Problem:
        accepted = False
    assert accepted == bool(re.fullmatch(IDEMPOTENCY_KEY_PATTERN, sent)), repr(sent)
