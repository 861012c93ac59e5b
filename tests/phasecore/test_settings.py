"""Engine settings: two groups that partition the fields, so every profile-level setting is in the profile key."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from phasecore import METRICS_VERSION
from phasecore.screening.profile import profile_key
from phasecore.settings import EngineSettings, PairSettings, ProfileSettings


def test_the_two_groups_partition_every_setting() -> None:
    profile, pair = set(ProfileSettings.model_fields), set(PairSettings.model_fields)
    assert not profile & pair
    assert set(EngineSettings.model_fields) == profile | pair
    settings = EngineSettings(n=60, knn_k=5)
    assert settings.profile.n == 60 and settings.pair.knn_k == 5
    # a setting added after keys were stored is left out at the value earlier keys meant (stored keys stay)
    assert set(settings.profile_fields()) == profile - {"stability_precision"}
    assert set(settings.model_copy(update={"stability_precision": "float64"}).profile_fields()) == profile


@pytest.mark.parametrize("name", list(ProfileSettings.model_fields))
def test_every_profile_setting_moves_the_profile_key(name: str) -> None:
    base = EngineSettings()
    changed = {
        "n": 64, "seed": 1, "probes": 2, "method": "sketch", "memory_budget_gb": 2.0, "chunk_size": 8,
        "sketch_dim": 128, "params": "last:2", "stability_steps": 3, "stability_subset": 16,
        "stability_lr_scales": [2], "agop_k": 8, "agop_censor_below": 1e-4, "agop_unstable_log10": 0.5,
        "agop_rtol": 1e-8, "agop_input_space": True, "info_plane": True, "language_pooling": "cls",
        "stability_precision": "float64",
    }
    assert set(changed) == set(ProfileSettings.model_fields), "a new profile setting needs a value here"
    other = EngineSettings.model_validate({name: changed[name]})  # the defaults but for this one setting
    ref = "timm:resnet18?weights=random"
    assert profile_key(ref, "vision", "digits", base) != profile_key(ref, "vision", "digits", other)


def test_pair_settings_share_the_profile_and_the_stratum_follows_the_outcome_settings() -> None:
    base = EngineSettings()
    ref = "timm:resnet18?weights=random"
    assert profile_key(ref, "vision", "digits", base) == profile_key(
        ref, "vision", "digits", EngineSettings(knn_k=3, null_permutations=50, outcome_alpha=0.01)
    )
    stratum = base.stratum("digits")
    assert stratum["metrics_version"] == METRICS_VERSION and stratum["dataset"] == "digits"
    assert stratum["key"] == EngineSettings(knn_k=3).stratum("digits")["key"]  # nulls do not change a label
    assert stratum["key"] != EngineSettings(outcome_alpha=0.01).stratum("digits")["key"]
    assert stratum["key"] != EngineSettings(n=64).stratum("digits")["key"]
    assert stratum["key"] != base.stratum("cifar10")["key"]


@pytest.mark.parametrize(
    "options",
    [{"probes": 0}, {"probes": 65}, {"params": "last:" + "9" * 5000}, {"params": "first:2"},
     {"stability_lr_scales": [0]}, {"stability_lr_scales": []}, {"outcome_alpha": 0.5}, {"agop_k": 1}],
)
def test_out_of_range_settings_are_refused(options: dict) -> None:
    with pytest.raises(ValidationError):
        EngineSettings.model_validate(options)


def test_the_step_size_scales_always_hold_one_and_are_sorted() -> None:
    assert EngineSettings(stability_lr_scales=[4, 2]).stability_lr_scales == (1.0, 2.0, 4.0)


def test_a_setting_added_later_keeps_the_keys_stored_before_it() -> None:
    """``stability_precision`` came after profiles, fingerprints and strata were stored: at float32, what every
    earlier key meant, the keys are those of the settings without the field."""
    import hashlib
    import json

    from phasecore import ENGINE_VERSION
    from phasecore.references.refs import ModelRef

    settings = EngineSettings()
    assert settings.stability_precision == "float32"
    before = {k: v for k, v in settings.profile.model_dump(mode="json").items() if k != "stability_precision"}
    ref = "timm:resnet18?weights=random"
    payload = {"model": ModelRef.parse(ref).canonical(), "modality": "vision", "dataset": "digits",
               "settings": before, "engine": ENGINE_VERSION}  # fmt: skip
    assert profile_key(ref, "vision", "digits", settings) == hashlib.sha256(
        json.dumps(payload, sort_keys=True).encode()
    ).hexdigest()
    everything = {k: v for k, v in settings.model_dump(mode="json").items() if k != "stability_precision"}
    assert settings.fingerprint() == hashlib.sha256(
        json.dumps({"settings": everything, "engine": ENGINE_VERSION}, sort_keys=True).encode()
    ).hexdigest()
    double = EngineSettings(stability_precision="float64")
    assert double.fingerprint() != settings.fingerprint()
    assert double.stratum("digits")["key"] != settings.stratum("digits")["key"]


def test_float64_probes_cost_more_in_the_estimate() -> None:
    from phasecore.settings import compute_estimate

    single = compute_estimate(EngineSettings().profile)["stability probe passes"]
    double = compute_estimate(EngineSettings(stability_precision="float64").profile)["stability probe passes"]
    assert double == pytest.approx(4 * single)


def test_one_home_for_caches_and_the_database_apart_from_it_by_default(tmp_path, monkeypatch) -> None:
    """PHASESCREEN_HOME holds a run's database and caches together; unset, caches go to ~/.cache/phasescreen and
    the embedded database to the XDG data directory (it holds what cannot be recomputed)."""
    from cli.local import profile_cache
    from phasecore.paths import default_cache_home
    from phasecore.zoo.train import zoo_cache_root
    from store.settings import default_home

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("PHASESCREEN_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    assert default_cache_home() == tmp_path / ".cache" / "phasescreen"
    assert zoo_cache_root() == tmp_path / ".cache" / "phasescreen" / "zoo"
    no_flags = SimpleNamespace(cache_dir=None, no_cache=False)
    assert profile_cache(no_flags).root == tmp_path / ".cache" / "phasescreen" / "profiles"
    assert default_home() == tmp_path / ".local" / "share" / "phasescreen"
    monkeypatch.setenv("PHASESCREEN_HOME", str(tmp_path / "run"))
    assert default_cache_home() == default_home() == tmp_path / "run"
    assert zoo_cache_root() == tmp_path / "run" / "zoo"
    assert profile_cache(no_flags).root == tmp_path / "run" / "profiles"
