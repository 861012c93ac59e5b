"""Chaos run: screenings submitted while worker processes are SIGKILLed and restarted at random.

    python bench/chaos.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/scratch \\
        --redis-url redis://127.0.0.1:6379/9 [--screenings 30] [--kills 20] [--workers 2]

EMPTIES the tables of that database and FLUSHES that Redis database: give it scratch ones. Uses the tests'
tiny models (a random-init timm network and a 2-layer BERT on 60 digits), each screening its own pair of
profiles. Kills hit workers in the middle of a job (a running row names them). Prints what happened to every
screening (all should succeed), the attempts the kills cost, and the time to finish, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--screenings", type=int, default=30)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lease-timeout", type=float, default=3.0)
    parser.add_argument("--kill-every", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"))
    parser.add_argument("--time-limit", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from fastapi.testclient import TestClient
    from sqlalchemy import func, select

    from jobs.runner import open_runtime
    from service.app import create_app
    from service.settings import ApiSettings
    from store.models import Screening, StoredProfile
    from tests.helpers.services import reset_scratch, worker_env
    from tests.helpers.tiny import build_tiny_bert

    rng = random.Random(args.seed)
    reset_scratch(args.database_url, args.redis_url)

    workdir = Path(tempfile.mkdtemp(prefix="phasescreen-chaos-"))
    settings = ApiSettings(
        home=workdir,
        model_root=build_tiny_bert(workdir / "models"),
        database_url=args.database_url,
        redis_url=args.redis_url,
        queue_name="chaos",
        auto_migrate=False,
        lease_timeout=args.lease_timeout,
        reconcile_grace=0.0,
        reconcile_interval=max(1.0, args.lease_timeout / 2),
        retry_backoff=(0,),
        max_attempts=10,  # 20 kills over few jobs: a job may be hit more than the default 3 times
        rate_limit_per_minute=0,
    )
    env = {**worker_env(settings), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

    def start(i: int) -> subprocess.Popen[bytes]:
        log = (workdir / f"worker-{i}-{time.monotonic_ns()}.log").open("wb")
        command = [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "worker"]
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    runtime = open_runtime(settings)
    options = {"n": 60, "probes": 2, "stability_steps": 2, "stability_subset": 8, "null_permutations": 50}
    options["gt_folds"] = 2
    started = time.monotonic()
    ids: list[str] = []
    with TestClient(create_app(runtime=runtime)) as client:
        for i in range(args.screenings):
            request = {
                "vision": "timm:test_efficientnet?weights=random",
                "language": "file:tiny-bert?weights=random",
                "dataset": "digits",
                "options": {**options, "seed": i},
            }
            response = client.post("/v1/screenings", json=request)
            response.raise_for_status()
            ids.append(response.json()["id"])
        workers = [start(i) for i in range(args.workers)]
        kills, kill_log = 0, []
        next_kill = time.monotonic() + rng.uniform(*args.kill_every)

        def states() -> dict[str, int]:
            with runtime.session() as session:
                rows = session.execute(
                    select(Screening.state, func.count()).where(Screening.id.in_(ids)).group_by(Screening.state)
                ).all()
            return {state: count for state, count in rows}

        try:
            while time.monotonic() - started < args.time_limit:
                current = states()
                if current.get("succeeded", 0) + current.get("failed", 0) + current.get("cancelled", 0) == len(ids):
                    break
                if kills < args.kills and time.monotonic() >= next_kill:
                    # a worker in the middle of a job (its name, host:pid, on a running row)
                    with runtime.session() as session:
                        busy = {
                            worker
                            for table in (StoredProfile, Screening)
                            for worker in session.scalars(
                                select(table.worker).where(table.state == "running", table.lease_token.is_not(None))
                            )
                        }
                    pids = {f"{socket.gethostname()}:{w.pid}": i for i, w in enumerate(workers)}
                    candidates = sorted(pids[name] for name in busy if name in pids)
                    if candidates:
                        victim = rng.choice(candidates)
                        workers[victim].send_signal(signal.SIGKILL)
                        workers[victim].wait()
                        kills += 1
                        kill_log.append(round(time.monotonic() - started, 1))
                        workers[victim] = start(victim)
                        next_kill = time.monotonic() + rng.uniform(*args.kill_every)
                time.sleep(0.1)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            for worker in workers:
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
        elapsed = time.monotonic() - started
        with runtime.session() as session:
            profiles = session.execute(select(StoredProfile.state, StoredProfile.attempts)).all()
            screenings = session.execute(
                select(Screening.state, Screening.attempts, Screening.problem).where(Screening.id.in_(ids))
            ).all()
            keys = session.scalar(select(func.count(func.distinct(StoredProfile.key))))
    runtime.close()
    report = {
        "screenings": len(ids),
        "kills": kills,
        "workers": args.workers,
        "lease_timeout_s": args.lease_timeout,
        "elapsed_s": round(elapsed, 1),
        "screening_states": dict(sorted(_count(s.state for s in screenings).items())),
        "screening_problems": [s.problem.get("type") for s in screenings if s.problem and s.state != "succeeded"],
        "profiles": len(profiles),
        "profile_keys": keys,
        "profile_attempts": dict(sorted(_count(p.attempts for p in profiles).items())),
        "pair_attempts": dict(sorted(_count(s.attempts for s in screenings).items())),
        "kills_at_s": kill_log,
        "logs": str(workdir),
    }
    print(json.dumps(report, indent=2))
    return 0 if report["screening_states"] == {"succeeded": len(ids)} else 1


def _count(values: object) -> dict[object, int]:
    counts: dict[object, int] = {}
    for value in values:  # type: ignore[attr-defined]
        counts[value] = counts.get(value, 0) + 1
    return counts


if __name__ == "__main__":
    os.environ.setdefault("PHASESCREEN_LOG_LEVEL", "WARNING")
    sys.exit(main())
