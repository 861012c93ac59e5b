"""Errors that reach API clients name no absolute path, no model-root contents, no host and no raw
exception text of a library."""

from __future__ import annotations

from pathlib import Path

import pytest

from phasecore.errors import AssetUnavailable, InvalidReference, PhasescreenError, SourceNotAllowed, describe, scrub
from phasecore.paths import resolve_under
from phasecore.references.registry import check_reference
from problems import from_domain_error


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "models-secret-root"
    root.mkdir()
    (root / "private-model.safetensors").write_bytes(b"x")
    (root / "other-team").mkdir()
    return root


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("missing.safetensors", AssetUnavailable),
        ("sub/missing", AssetUnavailable),
        ("../escape", SourceNotAllowed),
        ("/etc/passwd", SourceNotAllowed),
    ],
)
def test_file_errors_name_neither_the_root_nor_its_contents(root: Path, name: str, error: type) -> None:
    with pytest.raises(error) as info:
        check_reference(f"file:{name}", "vision", model_root=root)
    message = from_domain_error(info.value).document().detail
    for leak in (str(root), "models-secret-root", "private-model", "other-team", "/etc/passwd"):
        assert leak not in message, message


def test_an_absolute_path_is_shown_relative_to_the_root_or_not_at_all(root: Path) -> None:
    with pytest.raises(AssetUnavailable) as info:
        resolve_under(root, root / "nope", what="model")
    assert str(root) not in str(info.value) and "'nope'" in str(info.value)  # relative to the root
    with pytest.raises(SourceNotAllowed) as outside:
        resolve_under(root, "/etc/passwd", what="model")
    assert "absolute path" in str(outside.value) and "passwd" not in str(outside.value)


def test_a_symlink_out_of_the_root_does_not_reveal_its_target(root: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SourceNotAllowed) as info:
        resolve_under(root, "link", what="model")
    assert str(tmp_path) not in str(info.value) and "'link'" in str(info.value)


def test_scrub_takes_out_paths_urls_hosts_and_addresses() -> None:
    text = scrub(
        "Can't load /home/alice/.cache/huggingface/hub/models--org--m/config.json from "
        "https://huggingface.co/org/m/resolve/main via proxy.corp.internal (10.1.2.3:8080)"
    )
    for leak in ("/home/alice", "huggingface.co", "corp.internal", "10.1.2.3", "https://"):
        assert leak not in text, text
    assert "config.json" in text  # the file's own name still says what was missing
    assert describe(OSError("")) == "OSError"


def test_domain_errors_are_scrubbed_on_their_way_to_a_problem_document() -> None:
    problem = from_domain_error(InvalidReference("bad weights at /srv/models/team-a/x.bin on gpu-7.lab.internal"))
    detail = problem.document().detail
    assert "/srv/models" not in detail and "lab.internal" not in detail and "x.bin" in detail


def test_loader_errors_of_libraries_carry_no_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from phasecore import sources

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"Error while opening {tmp_path}/secret/weights.bin on host db.example.com")

    monkeypatch.setitem(sources.SOURCE_LOADERS, "timm", boom)
    with pytest.raises(PhasescreenError) as info:
        sources.load_encoder("timm:resnet18?weights=random", model_root=tmp_path)
    assert str(tmp_path) not in str(info.value) and "example.com" not in str(info.value)
    assert "RuntimeError" in str(info.value) and "weights.bin" in str(info.value)
