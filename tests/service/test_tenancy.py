"""Tenants over the real API: with keys required one tenant never reads, lists, cancels or reuses another's
work (404, as for what does not exist); scopes, expiry and revocation; wrong keys throttled per client address
without a database query each; X-Forwarded-For only from trusted proxies; /metrics for admin keys, with
bounded labels; the active-screenings and rate limits per tenant."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import event, update

from service.app import create_app
from service.proxies import client_address, parse_networks
from store.apikeys import create_api_key, revoke_api_key
from store.models import SUCCEEDED, Screening, utcnow
from tests.helpers.results import full_result
from tests.helpers.services import tiny_request


def _key(runtime, tenant: str | None = None, **kwargs) -> str:
    with runtime.session() as session:
        _, secret = create_api_key(session, "test", tenant=tenant, **kwargs)
        session.commit()
    return secret


def _as(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _finish(runtime, screening_id: str) -> None:
    """Plant a stored result, as if a worker had finished the screening."""
    with runtime.session() as session:
        session.execute(
            update(Screening)
            .where(Screening.id == screening_id)
            .values(state=SUCCEEDED, progress=1.0, result=full_result(), finished_at=utcnow())
        )
        session.commit()


def test_two_tenants_never_see_each_others_work(make_runtime):
    runtime = make_runtime(require_api_key=True)
    acme, acme_reader, globex = _key(runtime, "acme"), _key(runtime, "acme", scopes="read"), _key(runtime, "globex")
    with TestClient(create_app(runtime=runtime)) as client:
        first = client.post("/v1/screenings", json=tiny_request(), headers=_as(acme))
        assert first.status_code == 202, first.text
        mine = first.json()
        queued = client.post("/v1/screenings", json=tiny_request(seed=3), headers=_as(acme)).json()

        # the other tenant: 404 on read and cancel, an empty list, no profile, no batch
        for path in (f"/v1/screenings/{mine['id']}", f"/v1/profiles/{mine['profiles']['vision']['id']}"):
            refused = client.get(path, headers=_as(globex))
            assert refused.status_code == 404 and refused.json()["type"].endswith("not-found"), path
        assert client.post(f"/v1/screenings/{queued['id']}/cancel", headers=_as(globex)).status_code == 404
        assert client.get("/v1/screenings", headers=_as(globex)).json()["items"] == []

        # a key of the same tenant sees and lists it (read-only keys included)
        assert client.get(f"/v1/screenings/{mine['id']}", headers=_as(acme_reader)).status_code == 200
        listed = client.get("/v1/screenings", headers=_as(acme_reader)).json()["items"]
        assert {item["id"] for item in listed} == {mine["id"], queued["id"]}
        assert client.get(f"/v1/profiles/{mine['profiles']['vision']['id']}", headers=_as(acme)).status_code == 200
        cancelled = client.post(f"/v1/screenings/{queued['id']}/cancel", headers=_as(acme))
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

        # reuse stays within the tenant: the other one gets fresh work, its own profiles, no foreign id
        _finish(runtime, mine["id"])
        theirs = client.post("/v1/screenings", json=tiny_request(), headers=_as(globex))
        assert theirs.status_code == 202 and theirs.json()["reused_from"] is None
        assert mine["id"] not in theirs.text
        assert {p["id"] for p in theirs.json()["profiles"].values()}.isdisjoint(
            p["id"] for p in mine["profiles"].values()
        )
        again = client.post("/v1/screenings", json=tiny_request(), headers=_as(acme))
        assert again.status_code == 201 and again.json()["reused_from"] == mine["id"]

        # the study reads only the caller's tenant's results
        assert client.get("/v1/study", headers=_as(acme)).json()["n_records"] == 1
        assert client.get("/v1/study", headers=_as(globex)).json()["n_records"] == 0

        # batches: 404 for the other tenant on every view
        batch = client.post(
            "/v1/batches",
            json={
                "vision": [tiny_request()["vision"]],
                "language": [tiny_request()["language"]],
                "dataset": "digits",
                "options": tiny_request()["options"],
            },
            headers=_as(globex),
        )
        assert batch.status_code in (201, 202), batch.text
        href = batch.json()["href"]
        for suffix in ("", "/results.json", "/results.csv", "/report"):
            assert client.get(href + suffix, headers=_as(acme)).status_code == 404, suffix
            assert client.get(href + suffix, headers=_as(globex)).status_code == 200, suffix
        # the batch's pair reused globex's own finished screening? no: it was still queued; it is globex's anyway
        cell = batch.json()["matrix"][0][0]
        assert client.get(cell["href"], headers=_as(acme)).status_code == 404


def test_scopes_expiry_and_revocation(make_runtime):
    runtime = make_runtime(require_api_key=True)
    reader = _key(runtime, "acme", scopes="read")
    writer_only = _key(runtime, "acme", scopes="screen")
    expired = _key(runtime, "acme", expires_at=utcnow() - timedelta(seconds=1))
    live_until_later = _key(runtime, "acme", expires_at=utcnow() + timedelta(days=1))
    revoked = _key(runtime, "acme")
    with runtime.session() as session:
        from store.apikeys import find_api_key

        assert revoke_api_key(session, find_api_key(session, revoked[:12]).id)
        session.commit()
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/v1/screenings").status_code == 401  # reads need a key too
        refused = client.post("/v1/screenings", json=tiny_request(), headers=_as(reader))
        assert refused.status_code == 403 and refused.json()["type"].endswith("insufficient-scope")
        assert client.get("/v1/screenings", headers=_as(reader)).status_code == 200
        assert client.get("/v1/screenings", headers=_as(writer_only)).status_code == 403
        assert client.post("/v1/screenings", json=tiny_request(), headers=_as(writer_only)).status_code == 202
        assert client.get("/v1/screenings", headers=_as(live_until_later)).status_code == 200
        for secret in (expired, revoked):
            response = client.get("/v1/screenings", headers=_as(secret))
            assert response.status_code == 401 and response.json()["type"].endswith("invalid-api-key")
            assert client.post("/v1/screenings", json=tiny_request(), headers=_as(secret)).status_code == 401


def test_anonymous_mode_keeps_one_shared_view(make_runtime):
    runtime = make_runtime()
    key = _key(runtime, "acme")
    with TestClient(create_app(runtime=runtime)) as client:
        made = client.post("/v1/screenings", json=tiny_request(), headers=_as(key)).json()
        assert client.get(f"/v1/screenings/{made['id']}").status_code == 200
        assert [item["id"] for item in client.get("/v1/screenings").json()["items"]] == [made["id"]]
        assert client.get("/metrics").status_code == 200


def test_wrong_keys_are_throttled_per_address_without_a_query_each(make_runtime):
    runtime = make_runtime(require_api_key=True, auth_failures_per_minute=3)
    good = _key(runtime, "acme")
    lookups: list[str] = []

    # the sessions' bind: the engine, or the test's connection when the test's transaction is rolled back
    @event.listens_for(runtime.sessions.kw.get("bind", runtime.engine), "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if "api_keys" in statement:
            lookups.append(statement)

    app = create_app(runtime=runtime)
    with TestClient(app, client=("192.0.2.7", 4000)) as guesser:
        codes = [guesser.get("/v1/screenings", headers=_as(f"psk_guess{i}")).status_code for i in range(3)]
        assert codes == [401, 401, 401] and len(lookups) == 3
        for i in range(5):
            response = guesser.get("/v1/screenings", headers=_as(f"psk_more{i}"))
            assert response.status_code == 429 and 1 <= int(response.headers["retry-after"]) <= 60
        assert len(lookups) == 3  # beyond the limit not one more database query
    with TestClient(app, client=("192.0.2.8", 4000)) as other:  # another address is not punished
        assert other.get("/v1/screenings", headers=_as("psk_typo")).status_code == 401
        assert other.get("/v1/screenings", headers=_as(good)).status_code == 200


def test_forwarded_for_is_believed_only_from_trusted_proxies(make_runtime):
    runtime = make_runtime(rate_limit_per_minute=2, trusted_proxies="10.0.0.0/8")
    app = create_app(runtime=runtime)
    with TestClient(app, client=("203.0.113.9", 4000)) as direct:  # not a proxy: its header is ignored
        codes = [
            direct.get("/v1/screenings", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(3)
        ]
        assert codes == [200, 200, 429]
    with TestClient(app, client=("10.0.0.5", 4000)) as proxy:
        alice = {"X-Forwarded-For": "198.51.100.1"}
        assert [proxy.get("/v1/screenings", headers=alice).status_code for _ in range(3)] == [200, 200, 429]
        # a forged left-most hop does not help: the proxy appended the real address on the right
        forged = {"X-Forwarded-For": "198.51.100.99, 198.51.100.1"}
        assert proxy.get("/v1/screenings", headers=forged).status_code == 429
        assert proxy.get("/v1/screenings", headers={"X-Forwarded-For": "198.51.100.2"}).status_code == 200


def test_client_address_rules():
    trusted = parse_networks(("10.0.0.0/8", "::1"))
    assert client_address("203.0.113.9", ["1.2.3.4"], trusted) == "203.0.113.9"
    assert client_address("10.1.1.1", ["1.2.3.4"], trusted) == "1.2.3.4"
    assert client_address("10.1.1.1", ["6.6.6.6, 1.2.3.4, 10.2.2.2"], trusted) == "1.2.3.4"
    assert client_address("10.1.1.1", [], trusted) == "10.1.1.1"
    assert client_address("10.1.1.1", ["1.2.3.4"], ()) == "10.1.1.1"


def test_metrics_need_an_admin_key_and_labels_stay_bounded(make_runtime):
    runtime = make_runtime(require_api_key=True)
    admin, reader = _key(runtime, "ops", scopes="admin"), _key(runtime, "acme", scopes="read")
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=_as(reader)).status_code == 403
        for i in range(5):
            client.request("PROPFIND", f"/nowhere/{i}")
            client.request(f"BREW{i}", "/v1/screenings")
            client.get(f"/v1/screenings/not-an-id-{i}", headers=_as(reader))
        scraped = client.get("/metrics", headers=_as(admin))
        assert scraped.status_code == 200
        text = scraped.text
        assert "/nowhere" not in text and "BREW" not in text and "not-an-id" not in text
        assert 'method="OTHER"' in text and 'route="<unmatched>"' in text
        assert 'route="/v1/screenings/{screening_id}"' in text


def test_active_screenings_and_rate_limits_are_per_tenant(make_runtime):
    runtime = make_runtime(require_api_key=True, max_active_screenings=1, rate_limit_per_minute=4)
    acme, acme2, globex = _key(runtime, "acme"), _key(runtime, "acme"), _key(runtime, "globex")
    with TestClient(create_app(runtime=runtime)) as client:
        assert client.post("/v1/screenings", json=tiny_request(), headers=_as(acme)).status_code == 202
        busy = client.post("/v1/screenings", json=tiny_request(seed=2), headers=_as(acme2))
        assert busy.status_code == 503 and busy.json()["type"].endswith("busy")
        assert client.post("/v1/screenings", json=tiny_request(), headers=_as(globex)).status_code == 202
        # acme has spent 2 of its 4; its two keys share the rest, globex keeps its own budget
        codes = [client.get("/v1/screenings", headers=_as(k)).status_code for k in (acme, acme2, acme2)]
        assert codes == [200, 200, 429]
        assert client.get("/v1/screenings", headers=_as(globex)).status_code == 200
