"""The pkg model version in the profile key: read from the installed metadata, remembered per installed copy."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

from phasecore.references.registry import PACKAGES, _installed_version


def _install(site: Path, version: str) -> None:
    for old in site.glob("phasescreen_fake_model-*.dist-info"):
        shutil.rmtree(old)
    folder = site / f"phasescreen_fake_model-{version}.dist-info"
    folder.mkdir()
    (folder / "METADATA").write_text(f"Metadata-Version: 2.1\nName: phasescreen-fake-model\nVersion: {version}\n")


def test_installed_version_is_importlibs_and_follows_an_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for package in PACKAGES.values():
        try:
            expected = importlib.metadata.version(package.distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        assert _installed_version(package.distribution) == expected
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    _install(site, "1.0")
    assert _installed_version("phasescreen-fake-model") == "1.0"
    assert _installed_version("phasescreen-fake-model") == "1.0"  # remembered
    _install(site, "2.0")  # pip replaces the dist-info folder
    assert _installed_version("phasescreen-fake-model") == "2.0"
    shutil.rmtree(next(site.glob("*.dist-info")))
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        _installed_version("phasescreen-fake-model")
