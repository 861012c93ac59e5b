"""Embedded mode with several job threads: two jobs on one cached encoder never change its requires_grad flags
under each other (the engine sets them for θ and restores them afterwards)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import phasecore.screening.pipeline
import phasecore.sources
from jobs import functions
from phasecore.errors import InvalidSettings
from phasecore.kernels.engine import _prepared
from tests.helpers.services import tiny_request

# real commits: job threads
pytestmark = pytest.mark.commits


class _Identity:
    def to_dict(self):
        return {"ref": "fake", "n_params": 10}


class _FakeEncoder(torch.nn.Sequential):
    def __init__(self) -> None:
        super().__init__(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
        self.identity = _Identity()


def test_two_job_threads_on_one_cached_encoder_do_not_share_its_flags(client, make_runtime, monkeypatch):
    runtime = make_runtime(embedded_workers=2, encoder_cache_size=2)
    encoder = _FakeEncoder()
    loads: list[str] = []
    seen: list[dict[str, bool]] = []
    using, most = [0], [0]
    lock = threading.Lock()

    def load_encoder(model_ref, **kwargs):
        loads.append(model_ref)
        return encoder

    def compute_profile(*args, encoder, progress, **kwargs):
        with lock:
            using[0] += 1
            most[0] = max(most[0], using[0])
        seen.append({name: p.requires_grad for name, p in encoder.named_parameters()})
        with _prepared(encoder, {"1.weight"}):  # what params="last:1" does to the shared model
            for step in range(4):
                progress("computing", step / 4)
                time.sleep(0.1)
        with lock:
            using[0] -= 1
        raise InvalidSettings("stop here")

    monkeypatch.setattr(phasecore.sources, "load_encoder", load_encoder)
    monkeypatch.setattr(phasecore.screening.pipeline, "compute_profile", compute_profile)
    # two profiles of the same vision model (two seeds), run by two threads at once
    ids = [client.post("/v1/screenings", json=tiny_request(seed=s)).json()["profiles"]["vision"]["id"] for s in (1, 2)]
    threads = [
        threading.Thread(target=functions.run_profile_job, args=(pid,), kwargs={"runtime": runtime}) for pid in ids
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(seen) == 2 and len(loads) == 1  # both jobs ran, on the one cached encoder
    assert all(all(flags.values()) for flags in seen), seen  # each found the model as loaded
    assert most[0] == 1  # one job at a time on one model
    assert all(p.requires_grad for p in encoder.parameters())  # and it was left as loaded
