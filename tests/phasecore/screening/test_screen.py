"""End to end: `phasescreen screen` on real (small) models, the result schema, determinism, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from cli import main
from phasecore.screening.pipeline import ProfileCache, compute_profile, profile_key, screen_pair, versioned_profile_key
from phasecore.screening.result import SCHEMA_PATH, ScreeningResult, write_schema
from phasecore.settings import EngineSettings
from tests.helpers.results import RESULT_KEYS

VISION = "timm:test_vit?weights=random"
LANGUAGE = "pkg:all-minilm-l6-v2"
SMALL = {
    "probes": 1,
    "stability_steps": 2,
    "stability_subset": 12,
    "null_permutations": 40,
    "gt_folds": 2,
}


N = 20


@pytest.fixture(scope="module")
def settings() -> EngineSettings:
    return EngineSettings(n=N, **SMALL)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("profiles")


@pytest.fixture(scope="module")
def profiles(settings: EngineSettings, cache_dir: Path, screened):
    """The two profiles that the CLI run computed and cached (no second computation)."""
    cache = ProfileCache(cache_dir)
    return tuple(
        cache.get(versioned_profile_key(ref, mod, "digits", settings))
        for ref, mod in ((VISION, "vision"), (LANGUAGE, "language"))
    )


@pytest.fixture(scope="module")
def screened(tmp_path_factory, cache_dir: Path):
    """One real `phasescreen screen` run: (argv, result path, printed summary)."""
    tmp = tmp_path_factory.mktemp("screen")
    out = tmp / "result.json"
    options = [f"--option={k}={v}" for k, v in SMALL.items() if k != "probes"]
    argv = [
        "screen",
        "--vision",
        VISION,
        "--language",
        LANGUAGE,
        "--dataset",
        "digits",
        "--n",
        str(N),
        "--probes",
        "1",
        "--output",
        str(out),
        "--quiet",
        "--cache-dir",
        str(cache_dir),
        "--no-store",
        *options,
    ]
    import contextlib
    import io

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as env, contextlib.redirect_stdout(printed):
        env.setenv("PHASESCREEN_HOME", str(tmp / "home"))  # an empty local database of its own
        env.delenv("PHASESCREEN_DATABASE_URL", raising=False)
        assert main(argv) == 0
    return argv, out, printed.getvalue()


def test_screen_command_writes_a_valid_result(screened, cache_dir: Path, monkeypatch) -> None:
    argv, out, printed = screened
    monkeypatch.setenv("PHASESCREEN_HOME", str(out.parent / "home"))
    monkeypatch.delenv("PHASESCREEN_DATABASE_URL", raising=False)
    assert "S_cross" in printed and "claimed 94%" in printed
    result = json.loads(out.read_text())
    chance = result["ground_truth"]["chance"]["unseen"]
    assert f"(chance {chance:.3f}, class-clustered p " in printed  # the unseen test's own chance level
    assert all(f"note: {note}" in printed for note in result["metrics"]["notes"])
    # the measured accuracy sits beside each claim: none yet, with an empty local database
    measured = result["predictions"]["agop_rule"]["measured"]
    assert measured["status"] == "insufficient" and measured["n_labelled"] == 0 and measured["accuracy"] is None
    assert "claimed 94%; measured: not yet (0 labelled pairs in this stratum)" in printed
    ScreeningResult.model_validate(result)
    assert set(result) >= RESULT_KEYS
    m = result["metrics"]
    for key in ("s_ntk_cross", "s_ntk_cross_centered", "s_ntk_vision", "s_ntk_language", "cka", "mutual_knn"):
        assert m[key] is not None and math.isfinite(m[key]) and -1 <= m[key] <= 1, key
    for modality in ("vision", "language"):  # λ_1/λ_k, or null with the reason (U·M < 8k at this tiny N)
        agop = m[f"agop_{modality}"]
        assert (m[f"agop_ratio_{modality}"] is None) == (agop["reason"] is not None)
        assert m[f"agop_ratio_{modality}"] is None or m[f"agop_ratio_{modality}"] >= 1
    assert result["metrics_version"] == 2 and result["stratum"]["dataset"] == "digits"
    assert result["ground_truth"]["outcome"] in ("aligned", "failed", "inconclusive")
    assert m["phase_vision"] in {"chaotic", "optimal", "lazy"}
    assert 0 < m["s_ntk_cross_null"]["p_value"] <= 1
    assert result["predictions"]["agop_rule"]["claimed_accuracy"] == 0.94
    assert result["predictions"]["combined_rule"]["claimed_accuracy"] == 0.96
    assert "claim" in result["predictions"]["agop_rule"]["source"]
    assert 0 <= result["ground_truth"]["unseen_accuracy"] <= 1
    assert result["dataset"]["n"] == N and result["dataset"]["n_distinct_captions"] > 5
    # the second screening of the same pair reuses both cached profiles
    assert len(list(cache_dir.glob("*.npz"))) == 2
    assert main(argv) == 0
    again = json.loads(out.read_text())
    assert again["metrics"] == result["metrics"]


def test_bad_reference_exits_2_with_a_clear_message(capsys) -> None:
    assert main(["screen", "--vision", "nope:resnet", "--language", LANGUAGE, "--n", "40", "--quiet"]) == 2
    assert "source:name" in capsys.readouterr().err


def test_too_few_pairs_per_class_for_ground_truth_fails_before_any_profile(capsys, monkeypatch) -> None:
    """N = 40 over 10 classes gives 4 pairs per class: the 5-fold ground truth cannot run, and the CLI
    says so in seconds instead of after both profiles."""
    import phasecore.screening.pipeline

    def no_profiles(*args, **kwargs):
        raise AssertionError("a profile was computed before the request was validated")

    monkeypatch.setattr(phasecore.screening.pipeline, "compute_profile", no_profiles)
    argv = ["screen", "--vision", VISION, "--language", LANGUAGE, "--n", "40", "--quiet", "--no-cache"]
    assert main(argv) == 2
    assert "5-fold ground truth needs ≥ 5 pairs in every class" in capsys.readouterr().err


def test_profiles_are_deterministic_and_round_trip(profiles, settings: EngineSettings) -> None:
    vision, _ = profiles
    again = compute_profile(VISION, "vision", "digits", settings)
    for name, array in vision.arrays.items():
        assert np.array_equal(array, again.arrays[name]), name
    restored = type(vision).from_bytes(vision.to_bytes())
    assert restored.meta == vision.meta and np.array_equal(restored.arrays["ntk"], vision.arrays["ntk"])
    assert vision.key == profile_key(VISION, "vision", "digits", settings)
    assert vision.meta["device"] == "cpu"  # compute_profile's default; recorded, not part of the key
    pair_only = settings.model_copy(update={"null_permutations": 99})
    assert profile_key(VISION, "vision", "digits", pair_only) == vision.key  # pair settings share profiles


def test_a_float64_profile_runs_its_probe_in_float64(profiles, settings: EngineSettings) -> None:
    """``stability_precision`` reaches the probe: the profile records it, keeps every other array, and its S_NTK
    is the float32 one's within the float32 rounding (docs/metrics.md §3)."""
    vision, _ = profiles
    double = compute_profile(VISION, "vision", "digits", settings.model_copy(update={"stability_precision": "float64"}))
    assert double.meta["stability"]["precision"] == "float64" and vision.meta["stability"]["precision"] == "float32"
    assert double.key != vision.key
    assert np.array_equal(double.arrays["ntk"], vision.arrays["ntk"])  # the kernel stage stays float32
    assert double.meta["stability"]["s_ntk"] == pytest.approx(vision.meta["stability"]["s_ntk"], abs=5e-3)


def test_pair_metrics_properties(profiles, settings: EngineSettings) -> None:
    vision, language = profiles
    result = screen_pair(vision, language, settings, dataset_ref="digits")
    same = screen_pair(vision, language, settings, dataset_ref="digits")
    assert result.metrics == same.metrics
    K = vision.arrays["ntk"]
    assert np.allclose(K, K.T) and np.linalg.eigvalsh(K)[0] > -1e-8 * np.abs(K).max()


def test_profile_cache_is_atomic(tmp_path, profiles) -> None:
    cache = ProfileCache(tmp_path)
    cache.put(profiles[0])
    assert cache.get(profiles[0].key).key == profiles[0].key and cache.get("missing") is None
    assert not list(tmp_path.glob(".*.tmp"))


def test_schema_file_is_current(tmp_path) -> None:
    assert write_schema(tmp_path / "s.json") == SCHEMA_PATH.read_text()
