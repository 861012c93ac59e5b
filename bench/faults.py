"""Fault scenarios against a live API (uvicorn on loopback) and `phasescreen worker` processes.

    python bench/faults.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/scratch \\
        --redis-url redis://127.0.0.1:6379/9 [--scenario redis-flush idempotency hostile pg-cut]

EMPTIES the tables of that database and FLUSHES that Redis database before each scenario: give it scratch
ones. Tiny models (a random-init timm network and a 2-layer BERT on 20 digits, 1 probe). Scenarios:

  redis-flush   10 screenings queued, FLUSHDB on the queue's database, then a worker starts: all 10 must
                succeed (the reconciler enqueues again from PostgreSQL).
  idempotency   100 concurrent POST /v1/screenings with one Idempotency-Key: one row, one id, no 5xx.
  hostile       30 hostile bodies: no 5xx; every accepted one is then run by a worker, which must survive.
  pg-cut        PostgreSQL cut for 10 s (through a loopback TCP proxy) while a job runs: no 500 answered,
                every screening succeeds once it is back.

Prints one JSON report per scenario; exits 1 if any scenario's check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = {"n": 20, "probes": 1, "stability_steps": 1, "stability_subset": 4, "null_permutations": 20, "gt_folds": 2}
VISION, LANGUAGE, DATASET = "timm:test_vit?weights=random", "file:tiny-bert?weights=random", "digits"
TERMINAL = ("succeeded", "failed", "cancelled")


def request(**options: Any) -> dict[str, Any]:
    return {"vision": VISION, "language": LANGUAGE, "dataset": DATASET, "options": {**TINY, **options}}


class Harness:
    """Empty database and Redis, settings, a uvicorn API on a free loopback port, worker processes."""

    def __init__(self, args: argparse.Namespace, name: str, database_url: str | None = None) -> None:

        from jobs.runner import open_runtime
        from service.app import create_app
        from service.settings import ApiSettings
        from tests.helpers.services import reset_scratch, worker_env
        from tests.helpers.tiny import build_tiny_bert

        reset_scratch(args.database_url, args.redis_url)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"phasescreen-{name}-"))
        self.settings = ApiSettings(
            home=self.workdir,
            model_root=build_tiny_bert(self.workdir / "models"),
            database_url=database_url or args.database_url,
            redis_url=args.redis_url,
            queue_name=f"faults-{name}",
            auto_migrate=False,
            lease_timeout=5.0,
            reconcile_grace=0.0,
            reconcile_interval=2.0,
            retry_backoff=(0,),
            rate_limit_per_minute=0,
        )
        self.env = {**worker_env(self.settings), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.runtime = open_runtime(self.settings)
        import uvicorn

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        self.base = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            create_app(runtime=self.runtime), host="127.0.0.1", port=port, log_level="warning", limit_concurrency=1000
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.workers: list[subprocess.Popen[bytes]] = []

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"worker-{time.monotonic_ns()}.log").open("wb")
        command = [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "worker"]
        worker = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.workers.append(worker)
        return worker

    def states(self, ids: list[str]) -> dict[str, str]:
        from sqlalchemy import select

        from store.models import Screening

        with self.runtime.session() as session:
            return dict(session.execute(select(Screening.id, Screening.state).where(Screening.id.in_(ids))).all())

    def profile_attempts(self) -> dict[int, int]:
        from sqlalchemy import select

        from store.models import StoredProfile

        with self.runtime.session() as session:
            return dict(sorted(Counter(session.scalars(select(StoredProfile.attempts))).items()))

    def wait_terminal(self, ids: list[str], limit: float) -> float:
        started = time.monotonic()
        while time.monotonic() - started < limit:
            try:
                if all(state in TERMINAL for state in self.states(ids).values()):
                    break
            except Exception:  # the database may be away (pg-cut)
                pass
            time.sleep(0.5)
        return round(time.monotonic() - started, 1)

    def close(self) -> list[int | None]:
        codes = [w.poll() for w in self.workers]  # None: alive until we stopped it
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.runtime.close()
        return codes


def redis_flush(args: argparse.Namespace) -> dict[str, Any]:
    from redis import Redis

    h = Harness(args, "flush")
    import httpx

    with httpx.Client(base_url=h.base, timeout=30) as client:
        ids = [client.post("/v1/screenings", json=request(seed=i)).json()["id"] for i in range(10)]
    depth_before = h.runtime.queue.depth()
    Redis.from_url(args.redis_url).flushdb()
    depth_after = h.runtime.queue.depth()
    h.start_worker()
    elapsed = h.wait_terminal(ids, args.time_limit)
    states = Counter(h.states(ids).values())
    attempts = h.profile_attempts()
    codes = h.close()
    return {
        "screenings": len(ids),
        "queue_depth_before_flush": depth_before,
        "queue_depth_after_flush": depth_after,
        "states": dict(states),
        "elapsed_s": elapsed,
        "profile_attempts": attempts,
        "worker_exit_codes": codes,
        "ok": states == Counter({"succeeded": len(ids)}),
    }


def idempotency(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from sqlalchemy import func, select

    from store.models import Screening, StoredProfile

    h = Harness(args, "idem")
    barrier = threading.Barrier(100)
    answers: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def post() -> None:
        with httpx.Client(base_url=h.base, timeout=60) as client:
            barrier.wait(timeout=60)
            try:
                response = client.post("/v1/screenings", json=request(), headers={"Idempotency-Key": "one-key"})
                body = response.json() if response.headers.get("content-type", "").endswith("json") else {}
                answer = (response.status_code, body.get("id") or body.get("type"))
            except httpx.HTTPError as exc:
                answer = (0, type(exc).__name__)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=post) for _ in range(100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    with h.runtime.session() as session:
        rows = session.scalar(select(func.count()).select_from(Screening))
        profiles = session.scalar(select(func.count()).select_from(StoredProfile))
    depth = h.runtime.queue.depth()
    h.close()
    statuses = Counter(status for status, _ in answers)
    ids = {value for status, value in answers if status in (200, 201, 202)}
    others = Counter(value for status, value in answers if status not in (200, 201, 202))
    return {
        "requests": len(answers),
        "statuses": dict(sorted(statuses.items())),
        "distinct_ids": len(ids),
        "non_2xx_types": dict(others),
        "screening_rows": rows,
        "profile_rows": profiles,
        "queue_depth": depth,
        # 503 database-busy (pool exhausted, with Retry-After) is an answer a client retries; a 500 is a bug
        "ok": rows == 1 and len(ids) == 1 and not any((s >= 500 and s != 503) or s == 0 for s in statuses),
    }


def hostile_bodies() -> list[tuple[str, bytes, str]]:
    def js(value: Any) -> bytes:
        return json.dumps(value).encode()

    good = request()
    ctype = "application/json"
    bodies: list[tuple[str, bytes, str]] = [
        ("malformed JSON", b'{"vision": "timm:x", ', ctype),
        ("empty body", b"", ctype),
        ("null", b"null", ctype),
        ("a list", b"[1, 2, 3]", ctype),
        ("a string", b'"screen me"', ctype),
        ("vision is a number", js({**good, "vision": 5}), ctype),
        ("options is a list", js({**good, "options": [1, 2]}), ctype),
        ("n is a word", js(request(n="twenty")), ctype),
        ("n = 10^30", js(request(n=10**30)), ctype),
        (
            "n = 1e308",
            b'{"vision":"%s","language":"%s","dataset":"digits","options":{"n":1e308}}'
            % (VISION.encode(), LANGUAGE.encode()),
            ctype,
        ),
        ("n = -1", js(request(n=-1)), ctype),
        ("seed = 2^70", js(request(seed=2**70)), ctype),
        ("null_permutations = 10^9", js(request(null_permutations=10**9)), ctype),
        (
            "NaN option",
            b'{"vision":"%s","language":"%s","dataset":"digits","options":{"memory_budget_gb":NaN}}'
            % (VISION.encode(), LANGUAGE.encode()),
            ctype,
        ),
        (
            "Infinity option",
            b'{"vision":"%s","language":"%s","dataset":"digits","options":{"n":Infinity}}'
            % (VISION.encode(), LANGUAGE.encode()),
            ctype,
        ),
        ("NUL and control characters in vision", js({**good, "vision": "timm:test_vit\x00\x01\x1b[2J"}), ctype),
        ("newline in language", js({**good, "language": "file:tiny-bert\n?weights=random"}), ctype),
        ("path traversal in language", js({**good, "language": "file:../../../../etc/passwd"}), ctype),
        ("control characters in dataset", js({**good, "dataset": "digits\x07\x7f"}), ctype),
        ("100 kB model reference", js({**good, "vision": "timm:" + "a" * 100_000}), ctype),
        ('probes "exact" at N = 576', js(request(n=576, probes="exact")), ctype),
        ("sketch_dim 2^20, 64 probes", js(request(sketch_dim=2**20, probes=64, method="sketch")), ctype),
        ('params "last:" + 5000 digits', js(request(params="last:" + "9" * 5000)), ctype),
        ("unknown top-level field", js({**good, "surprise": {"a": 1}}), ctype),
        ("unknown option", js(request(turbo=True)), ctype),
        (
            "deep nesting (20 000 levels, under the body limit)",
            b'{"vision":' + b"[" * 20_000 + b"]" * 20_000 + b"}",
            ctype,
        ),
        ("2 MB body", js({**good, "padding": "x" * 2_000_000}), ctype),
        (
            "duplicate keys",
            b'{"vision":"a","vision":"%s","language":"%s","dataset":"digits","options":%s}'
            % (VISION.encode(), LANGUAGE.encode(), js(TINY)),
            ctype,
        ),
        ("text/plain content type", js(request(seed=7)), "text/plain"),
        ("not UTF-8", b'{"vision":"\xff\xfe","language":"x","dataset":"digits"}', ctype),
    ]
    return bodies


def hostile(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    h = Harness(args, "hostile")
    results = []
    with httpx.Client(base_url=h.base, timeout=60) as client:
        for name, body, ctype in hostile_bodies():
            try:
                response = client.post("/v1/screenings", content=body, headers={"content-type": ctype})
                status = response.status_code
                try:
                    payload = response.json()
                except ValueError:
                    payload = {}
            except httpx.HTTPError as exc:
                status, payload = 0, {"type": type(exc).__name__}
            entry: dict[str, Any] = {"body": name, "status": status}
            if status in (200, 201, 202):
                entry["id"] = payload.get("id")
            else:
                entry["type"] = str(payload.get("type", ""))[-40:] if isinstance(payload, dict) else ""
            results.append(entry)
    accepted = [r["id"] for r in results if r.get("id")]
    worker = h.start_worker() if accepted else None
    elapsed = h.wait_terminal(accepted, args.time_limit) if accepted else 0.0
    states = h.states(accepted)
    for entry in results:
        if entry.get("id"):
            entry["ran"] = states.get(entry.pop("id"))
    alive = worker is None or worker.poll() is None
    h.close()
    return {
        "bodies": len(results),
        "statuses": dict(sorted(Counter(r["status"] for r in results).items())),
        "results": results,
        "accepted_ran_in_s": elapsed,
        "worker_alive_after": alive,
        "ok": all(0 < r["status"] < 500 for r in results)
        and alive
        and all(r.get("ran", "succeeded") in TERMINAL for r in results),
    }


def pg_cut(args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from sqlalchemy.engine import make_url

    from tests.helpers.proxy import TcpProxy

    target = make_url(args.database_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    h = Harness(args, "pgcut", database_url=target.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    statuses: Counter[str] = Counter()
    ids: list[str] = []
    restarts = 0
    with httpx.Client(base_url=h.base, timeout=30) as client:
        ids = [client.post("/v1/screenings", json=request(seed=i)).json()["id"] for i in range(4)]
        h.start_worker()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "running" not in h.states(ids).values():
            time.sleep(0.2)
        running_at_cut = Counter(h.states(ids).values())
        proxy.stop()
        cut = time.monotonic()
        i = 100
        while time.monotonic() - cut < args.cut_seconds:
            for method, path, body in (
                ("GET", "/readyz", None),
                ("GET", f"/v1/screenings/{ids[0]}", None),
                ("POST", "/v1/screenings", request(seed=i)),
            ):
                try:
                    response = client.request(method, path, json=body)
                    statuses[
                        f"{method} {path.split('/')[-1] if 'readyz' in path else path.split('/')[2]}"
                        f" {response.status_code}"
                    ] += 1
                    if method == "POST" and response.status_code in (200, 201, 202):
                        ids.append(response.json()["id"])
                except httpx.HTTPError as exc:
                    statuses[f"{method} error {type(exc).__name__}"] += 1
            i += 1
            time.sleep(0.5)
        proxy.start()
        back = time.monotonic()
        while time.monotonic() - back < args.time_limit:
            if all(w.poll() is not None for w in h.workers):  # a supervisor would start it again
                h.start_worker()
                restarts += 1
            try:
                if all(state in TERMINAL for state in h.states(ids).values()):
                    break
            except Exception:
                pass
            time.sleep(0.5)
        recovery = round(time.monotonic() - back, 1)
        after = Counter(client.get("/readyz").status_code for _ in range(3))
    states = Counter(h.states(ids).values())
    attempts = h.profile_attempts()
    codes = h.close()
    proxy.stop()
    return {
        "cut_s": args.cut_seconds,
        "states_at_cut": dict(running_at_cut),
        "answers_during_cut": dict(sorted(statuses.items())),
        "readyz_after": dict(after),
        "screenings": len(ids),
        "states": dict(states),
        "recovered_in_s": recovery,
        "profile_attempts": attempts,
        "worker_restarts": restarts,
        "worker_exit_codes": codes,
        "ok": states == Counter({"succeeded": len(ids)}) and not any(k.endswith(" 500") for k in statuses),
    }


SCENARIOS = {"redis-flush": redis_flush, "idempotency": idempotency, "hostile": hostile, "pg-cut": pg_cut}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--scenario", nargs="+", choices=sorted(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--cut-seconds", type=float, default=10.0)
    parser.add_argument("--time-limit", type=float, default=300.0)
    args = parser.parse_args()
    ok = True
    for name in args.scenario:
        started = time.monotonic()
        report = SCENARIOS[name](args)
        report = {"scenario": name, "wall_s": round(time.monotonic() - started, 1), **report}
        print(json.dumps(report, indent=2), flush=True)
        ok = ok and bool(report["ok"])
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PHASESCREEN_LOG_LEVEL", "WARNING")
    sys.exit(main())
