"""Load on the HTTP API: 50 concurrent clients, POST then GET, against a server started here on loopback.

    python bench/load_api.py [--clients 50] [--seconds 10] [--max-requests 3000]
                             [--database-url URL] [--redis-url redis://127.0.0.1:6379/14]

Starts `phasescreen serve` on 127.0.0.1 (a free port) with its own temporary SQLite file unless
--database-url is given, and a Redis queue that no worker consumes (so the numbers measure the API, not
the engine). The Redis database index given is flushed before and after: pick one nothing else uses.
Each phase stops after --seconds or --max-requests, whichever comes first. Prints, per phase: requests,
errors, p50 and p99 latency, and requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REQUEST = {
    "vision": "pkg:efficientnet-lite0",
    "language": "pkg:all-minilm-l6-v2",
    "dataset": "digits",
    "options": {"n": 64, "probes": 1},
}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(port: int, database_url: str | None, redis_url: str, home: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PHASESCREEN_HOME": str(home),
        "PHASESCREEN_REDIS_URL": redis_url,
        "PHASESCREEN_QUEUE_NAME": "bench",
        "PHASESCREEN_RATE_LIMIT_PER_MINUTE": "0",
        "PHASESCREEN_MAX_ACTIVE_SCREENINGS": "1000000",
        "PHASESCREEN_LOG_LEVEL": "WARNING",
    }
    if database_url:
        env["PHASESCREEN_DATABASE_URL"] = database_url
        env["PHASESCREEN_AUTO_MIGRATE"] = "true"
    else:
        env.pop("PHASESCREEN_DATABASE_URL", None)
    code = "import sys; from cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _wait_ready(base: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"server exited: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit("server did not become ready")


async def _phase(base: str, clients: int, seconds: float, max_requests: int, make_request) -> dict:
    latencies: list[float] = []
    errors = 0
    issued = 0
    created: list[str] = []
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as http:

        async def one_client() -> None:
            nonlocal errors, issued
            while time.monotonic() < deadline and issued < max_requests:
                issued += 1
                method, url, body = make_request(issued)
                started = time.perf_counter()
                try:
                    response = await http.request(method, url, json=body)
                    ok = response.status_code < 400
                    if ok and method == "POST":
                        created.append(response.json()["id"])
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - started)
                errors += not ok

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000  # noqa: E731
    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": pick(0.50) if latencies else float("nan"),
        "p99_ms": pick(0.99) if latencies else float("nan"),
        "rps": len(latencies) / wall if wall else 0.0,
        "created": created,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--max-requests", type=int, default=3000, help="cap of each phase")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 120:
        raise SystemExit("keep it bounded: 1-200 clients, at most 120 s per phase")

    from redis import Redis

    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        server = _start_server(port, args.database_url, args.redis_url, Path(home))
        try:
            await _wait_ready(base, server)
            store = "SQLite (temporary)" if not args.database_url else args.database_url.split("@")[-1]
            print(f"server {base}, database {store}, {args.clients} clients, phases of {args.seconds:g} s")

            post = await _phase(
                base,
                args.clients,
                args.seconds,
                args.max_requests,
                lambda i: (
                    "POST",
                    "/v1/screenings",
                    {**REQUEST, "options": {**REQUEST["options"], "seed": i}},
                ),
            )
            ids = post["created"] or ["00000000-0000-0000-0000-000000000000"]
            get = await _phase(
                base,
                args.clients,
                args.seconds,
                args.max_requests,
                lambda i: ("GET", f"/v1/screenings/{random.choice(ids)}", None),
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
            redis.flushdb()
    print(f"{'phase':<6} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8}")
    for name, phase in (("POST", post), ("GET", get)):
        print(
            f"{name:<6} {phase['requests']:>9} {phase['errors']:>7} {phase['p50_ms']:>8.1f} "
            f"{phase['p99_ms']:>8.1f} {phase['rps']:>8.1f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
