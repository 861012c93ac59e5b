"""The distribution and the lock: every package ships, the lock covers pyproject, and the wheel works on its own.

The wheel test builds phasescreen's wheel from this checkout, installs it with the locked runtime dependencies
into a clean venv, offline (``--no-index``, from the locked wheels on disk, verified by hash), and runs it from a
directory outside the checkout: ``--help``, ``db upgrade`` on a fresh SQLite file, the API app, a shipped grid
and a tiny screening. The locked wheels are kept in ``$PHASESCREEN_WHEELHOUSE`` (default
``~/.cache/phasescreen/wheelhouse``): the first run on a machine fills it with ``pip download`` (about 4 GB,
mostly torch's CUDA libraries), later runs find them there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
#: what a checkout holds besides its source (venvs, caches, build outputs, evidence runs)
_NOT_SOURCE = (".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".evidence", "result*.json")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", re.MULTILINE)


def pins(lock: Path) -> dict[str, str]:
    return {canonicalize_name(name): version for name, version in _PIN.findall(lock.read_text(encoding="utf-8"))}


def test_every_package_of_the_checkout_ships() -> None:
    setuptools = PYPROJECT["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    mapped = setuptools["package-dir"]
    roots = {name.split(".")[0] for name in listed}
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for root in roots
        for init in (ROOT / root).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    # every folder of Python files under a package root is a package (an __init__.py), and each is listed
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for root in roots
        for path in (ROOT / root).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert folders <= found, f"folders of modules without __init__.py: {sorted(folders - found)}"
    assert found <= listed, f"packages missing from pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
    for package, folder in mapped.items():
        assert package in listed and (ROOT / folder).is_dir()
    assert (ROOT / mapped["store.migrations"] / "env.py").is_file()


@pytest.mark.parametrize(
    ("lock", "groups"), [(LOCK, ("dependencies",)), (DEV_LOCK, ("dependencies", "dev"))], ids=["runtime", "dev"]
)
def test_the_lock_pins_every_dependency_of_pyproject_within_its_range(lock: Path, groups: tuple[str, ...]) -> None:
    locked = pins(lock)
    project = PYPROJECT["project"]
    wanted = [
        Requirement(text)
        for group in groups
        for text in (project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group])
    ]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {lock.name}: run make lock"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{lock.name} pins {name}=={locked[name]}, outside pyproject's {requirement}: run make lock"
        )
    assert "--hash=sha256:" in lock.read_text(encoding="utf-8")


def test_the_two_locks_agree_on_every_shared_package() -> None:
    runtime, dev = pins(LOCK), pins(DEV_LOCK)
    assert runtime.keys() <= dev.keys()
    assert {name: version for name, version in dev.items() if name in runtime} == runtime
    assert (runtime["torch"], runtime["torchvision"]) == ("2.14.1", "0.29.1")


def _run(cmd: list[str | Path], *, timeout: float = 900, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a clean venv holding the wheel and the runtime lock, nothing else."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip"]
    # built from a copy without build outputs: setuptools packs whatever a stale build/lib still holds
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    _run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source])
    (wheel,) = (tmp / "dist").glob("phasescreen-*.whl")
    wheelhouse = Path(os.environ.get("PHASESCREEN_WHEELHOUSE") or "~/.cache/phasescreen/wheelhouse").expanduser()
    _run([*pip, "download", "-q", "--no-deps", "--require-hashes", "-r", LOCK, "-d", wheelhouse])
    _run([sys.executable, "-m", "venv", tmp / "venv"])
    bin_ = tmp / "venv" / "bin"
    offline = ["--no-index", "--find-links", wheelhouse, "--no-deps", "--no-compile"]
    _run([bin_ / "pip", "install", "-q", *offline, "--require-hashes", "-r", LOCK])
    _run([bin_ / "pip", "install", "-q", *offline, wheel])
    _run([bin_ / "pip", "check"])
    return bin_


@pytest.fixture
def outside(installed: Path, tmp_path: Path) -> dict[str, object]:
    """subprocess arguments for running from a folder outside the checkout, on a fresh SQLite file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PHASESCREEN_", "PYTHON", "VIRTUAL_ENV"))}
    env |= {
        "PATH": f"{installed}{os.pathsep}{env.get('PATH', '')}",
        "PHASESCREEN_HOME": str(tmp_path / "home"),
        "PHASESCREEN_DATABASE_URL": f"sqlite:///{tmp_path / 'phasescreen.sqlite'}",
    }
    return {"cwd": tmp_path, "env": env}


def test_the_wheel_runs_outside_the_checkout(installed: Path, outside: dict, tmp_path: Path) -> None:
    python = installed / "python"
    where = _run([python, "-c", "import phasecore, store; print(phasecore.__file__); print(store.__file__)"], **outside)
    assert all(Path(line).is_relative_to(installed.parent) for line in where.stdout.split()), where.stdout

    assert "screen" in _run([installed / "phasescreen", "--help"], **outside).stdout

    _run([installed / "phasescreen", "db", "upgrade"], **outside)
    with sqlite3.connect(tmp_path / "phasescreen.sqlite") as db:
        (revision,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    heads = sorted(p.name.split("_")[0] for p in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert revision == heads[-1]

    app = "from service.app import create_app; app = create_app(); print(app.title, len(app.routes))"
    assert "phasescreen" in _run([python, "-c", app], **outside).stdout.lower()

    grid = "from phasecore.screening.batch import load_grid; g = load_grid('grids/offline.yaml'); print(g.n_pairs)"
    assert int(_run([python, "-c", grid], **outside).stdout) > 0


def test_the_wheel_screens_a_tiny_pair(installed: Path, outside: dict, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    argv = ["screen", "--vision", "timm:test_vit?weights=random", "--language", "pkg:all-minilm-l6-v2", "--n", "20"]
    small = ["probes=1", "stability_steps=2", "stability_subset=10", "null_permutations=20", "gt_folds=2", "agop_k=2"]
    flags = [f"--option={option}" for option in small]
    _run([installed / "phasescreen", *argv, *flags, "--quiet", "--output", out], **outside)
    result = json.loads(out.read_text())
    assert result["vision"]["identity"]["ref"] == "timm:test_vit?weights=random"
    assert 0 <= result["metrics"]["s_ntk_cross"] <= 1
    assert result["ground_truth"]
