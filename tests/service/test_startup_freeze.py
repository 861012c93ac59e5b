"""The server process freezes what start-up built (gc.freeze): full collections stop pausing every request."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from service.app import create_app


def test_the_server_app_freezes_its_start_up_objects_and_others_do_not(runtime):
    gc.unfreeze()
    try:
        with TestClient(create_app(runtime=runtime)) as client:  # as the tests and embedding code build apps
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() == 0
        with TestClient(create_app(runtime=runtime, freeze_after_startup=True)) as client:  # as `serve` does
            assert client.get("/healthz").status_code == 200
            frozen = gc.get_freeze_count()
            tracked = len(gc.get_objects())  # what a full collection still walks
        # the modules, the app and the warmed-up request checks (~200,000 in a server process) are frozen
        assert frozen > 50_000 and tracked < frozen, (frozen, tracked)
    finally:
        gc.unfreeze()  # the rest of the test session collects as before
