"""API keys (hashed, required on every /v1 request when enabled) and rate limits (tenants: test_tenancy)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from service.app import create_app
from store.apikeys import create_api_key
from store.models import ApiKey
from tests.helpers.services import REPO, tiny_request, worker_env


def _key(runtime, **kwargs) -> str:
    with runtime.session() as session:
        _, secret = create_api_key(session, "ci", **kwargs)
        session.commit()
    return secret


def test_with_keys_required_every_request_needs_one(make_runtime):
    runtime = make_runtime(require_api_key=True)
    secret = _key(runtime)
    with TestClient(create_app(runtime=runtime)) as client:
        refused = client.post("/v1/screenings", json=tiny_request())
        assert refused.status_code == 401 and refused.json()["type"].endswith("api-key-required")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = client.post("/v1/screenings", json=tiny_request(), headers={"Authorization": "Bearer psk_nope"})
        assert wrong.status_code == 401 and wrong.json()["type"].endswith("invalid-api-key")

        accepted = client.post("/v1/screenings", json=tiny_request(), headers={"Authorization": f"Bearer {secret}"})
        assert accepted.status_code == 202
        also = client.post("/v1/screenings", json=tiny_request(seed=2), headers={"X-API-Key": secret})
        assert also.status_code == 202
        assert client.get("/v1/screenings").status_code == 401  # reading needs a key too
        assert client.get("/v1/screenings", headers={"X-API-Key": secret}).status_code == 200
        cancel = client.post(f"/v1/screenings/{accepted.json()['id']}/cancel")
        assert cancel.status_code == 401

    with runtime.session() as session:  # only the hash is stored
        stored = session.scalars(select(ApiKey)).one()
        assert secret not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
        assert stored.last_used_at is not None


def test_idempotency_keys_belong_to_their_api_key(make_runtime):
    runtime = make_runtime(require_api_key=True)
    alice, bob = _key(runtime), _key(runtime)
    with TestClient(create_app(runtime=runtime)) as client:
        headers = {"Idempotency-Key": "same"}
        a = client.post("/v1/screenings", json=tiny_request(), headers={**headers, "X-API-Key": alice})
        b = client.post("/v1/screenings", json=tiny_request(seed=5), headers={**headers, "X-API-Key": bob})
        assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


def test_rate_limit_per_key_answers_429_with_retry_after(make_runtime):
    runtime = make_runtime(rate_limit_per_minute=3)
    limited, generous = _key(runtime), _key(runtime, rate_limit_per_minute=100)
    with TestClient(create_app(runtime=runtime)) as client:
        codes = [client.get("/v1/screenings", headers={"X-API-Key": limited}).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        over = client.get("/v1/screenings", headers={"X-API-Key": limited})
        assert over.headers["content-type"].startswith("application/problem+json")
        assert 1 <= int(over.headers["retry-after"]) <= 60
        # another key has its own budget (and its own limit); health checks are never limited
        assert client.get("/v1/screenings", headers={"X-API-Key": generous}).status_code == 200
        assert all(client.get("/healthz").status_code == 200 for _ in range(5))


@pytest.mark.commits  # the CLI subprocess writes the key
def test_apikey_create_command_prints_a_working_key(make_settings, make_runtime):
    settings = make_settings()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from cli import main; sys.exit(main())",
            "apikey",
            "create",
            "--name",
            "cli",
        ],
        cwd=REPO,
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    secret = done.stdout.strip()
    assert secret.startswith("psk_")
    runtime = make_runtime(require_api_key=True)
    with TestClient(create_app(runtime=runtime)) as client:
        response = client.post("/v1/screenings", json=tiny_request(), headers={"X-API-Key": secret})
        assert response.status_code == 202


def _cli(settings, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "apikey", *args],
        cwd=REPO,
        env=worker_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.commits  # the CLI subprocess writes the key
def test_apikey_list_and_revoke_commands(make_settings, make_runtime):
    settings = make_settings()
    created = _cli(settings, "create", "--name", "bot", "--tenant", "acme", "--scope", "read", "--expires-in", "2")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    assert "tenant acme" in created.stderr and "scopes read" in created.stderr
    listed = _cli(settings, "list")
    assert listed.returncode == 0 and secret not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if " bot " in line)
    assert "acme" in row and "read" in row and "live" in row and secret[:12] in row
    assert _cli(settings, "create", "--scope", "root").returncode == 2  # unknown scope

    runtime = make_runtime(require_api_key=True)
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/v1/screenings", headers={"X-API-Key": secret}).status_code == 200
        revoked = _cli(settings, "revoke", secret[:12])
        assert revoked.returncode == 0, revoked.stderr
        assert client.get("/v1/screenings", headers={"X-API-Key": secret}).status_code == 401
    assert "revoked" in _cli(settings, "list", "--tenant", "acme").stdout
    assert _cli(settings, "revoke", secret[:12]).returncode == 1
