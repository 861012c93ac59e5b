"""The API does what its OpenAPI document says, case by case (the fuzzer in test_schemathesis.py does it at
large): strict types, every method in Allow, problem documents documented as such, the report drawn once."""

from __future__ import annotations

from tests.helpers.services import assert_problem, tiny_request
from tests.helpers.tiny import batch_request

PROBLEM = "application/problem+json"


def test_a_405_names_every_method_the_path_serves(client):
    response = client.request("OPTIONS", "/v1/screenings")
    assert_problem(response, 405)
    assert {m.strip() for m in response.headers["allow"].split(",")} == {"GET", "HEAD", "POST"}
    response = client.delete("/v1/screenings/00000000-0000-0000-0000-000000000000")
    assert {m.strip() for m in _allow(response)} == {"GET", "HEAD"}
    assert {m.strip() for m in _allow(client.get("/v1/batches"))} == {"POST"}


def _allow(response) -> list[str]:
    assert_problem(response, 405)
    return response.headers["allow"].split(",")


def test_request_bodies_are_strictly_typed(client):
    for body in (
        batch_request(reuse="yes"),
        batch_request(reuse=1),
        batch_request(options={"n": "64"}),
        {**tiny_request(), "reuse": "false"},
        {**tiny_request(), "options": {"ground_truth": 0}},
    ):
        path = "/v1/batches" if isinstance(body["vision"], list) else "/v1/screenings"
        assert_problem(client.post(path, json=body), 422, "validation-error")
    # a JSON integer written with a zero fraction is an integer
    assert client.post("/v1/screenings", json=tiny_request(n=20.0)).status_code == 202


def test_malformed_json_is_400_and_documented_wherever_a_body_is_read(client):
    for path in ("/v1/screenings", "/v1/batches"):
        response = client.post(path, content=b'{"vision": [', headers={"content-type": "application/json"})
        assert_problem(response, 400, "malformed-json")
    document = client.get("/openapi.json").json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= set(responses), (method, path)
            if path.startswith("/v1/"):
                assert {"429", "503"} <= set(responses), (method, path)
            for code, response in responses.items():
                if code.startswith(("4", "5")):
                    assert set(response["content"]) == {PROBLEM}, (method, path, code)
                    assert response["content"][PROBLEM]["schema"] == {"$ref": "#/components/schemas/ProblemOut"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_the_schema_carries_the_patterns_the_api_enforces(client):
    document = client.get("/openapi.json").json()
    request = document["components"]["schemas"]["ScreeningRequest"]["properties"]
    assert request["vision"]["pattern"].startswith("^(?:(?:timm|hf|file|pkg):")
    assert "|zoo:shapes" in request["vision"]["pattern"]
    assert request["dataset"]["pattern"].startswith("^(?:digits|shapes")
    batch = document["components"]["schemas"]["BatchRequest"]["properties"]
    assert batch["vision"]["items"]["pattern"] == request["vision"]["pattern"]
    parameters = {p["name"]: p for p in document["paths"]["/v1/screenings"]["get"]["parameters"]}
    assert parameters["cursor"]["schema"]["pattern"] == "^[0-9a-f-]{36}$"
    header = {p["name"]: p for p in document["paths"]["/v1/screenings"]["post"]["parameters"]}["Idempotency-Key"]
    assert header["schema"]["maxLength"] == 255 and header["schema"]["pattern"]
    # and enforces them
    assert_problem(client.post("/v1/screenings", json={**tiny_request(), "vision": " hf:x"}), 422, "invalid-reference")
    assert_problem(client.post("/v1/batches", json=batch_request(vision=["hf:x?foo=1"])), 422, "invalid-reference")
    assert_problem(client.get("/v1/screenings", params={"cursor": ""}), 400, "invalid-cursor")
    first = client.post("/v1/screenings", json=tiny_request()).json()
    page = client.get("/v1/screenings", params={"cursor": "ffffffff-ffff-ffff-ffff-ffffffffffff"}).json()
    assert [item["id"] for item in page["items"]] == [first["id"]]


def test_the_report_is_drawn_once_per_state_of_the_batch(client):
    batch = client.post("/v1/batches", json=batch_request()).json()
    cache = client.app.state.report_cache
    first = client.get(f"/v1/batches/{batch['id']}/report")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/html")
    again = client.get(f"/v1/batches/{batch['id']}/report")
    assert again.text == first.text and again.headers["etag"] == first.headers["etag"]
    assert cache.renders == 1
    unchanged = client.get(f"/v1/batches/{batch['id']}/report", headers={"If-None-Match": first.headers["etag"]})
    assert unchanged.status_code == 304 and not unchanged.content
    client.post(f"/v1/screenings/{batch['matrix'][0][0]['screening_id']}/cancel")  # the batch changes
    changed = client.get(f"/v1/batches/{batch['id']}/report", headers={"If-None-Match": first.headers["etag"]})
    assert changed.status_code == 200 and changed.headers["etag"] != first.headers["etag"]
    assert cache.renders == 2
