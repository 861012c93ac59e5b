"""Load on the HTTP API: 50 concurrent clients, POST then GET, against a server started here on loopback.

    python bench/load_api.py [--clients 50] [--seconds 10] [--max-requests 3000]
                             [--database-url URL] [--redis-url redis://127.0.0.1:6379/14]
                             [--truncate] [--workers N] [--pool raw|per-client|shared]
                             [--baseline-ref REV [--rounds R]]

Starts `phasescreen serve` on 127.0.0.1 (a free port) with its own temporary SQLite file unless
--database-url is given, and a Redis queue that no worker consumes (so the numbers measure the API, not
the engine). The Redis database index given is flushed before and after: pick one nothing else uses.
Rows stay in the database between runs (and every POST counts the active screenings): --truncate empties
its tables before each run, for a scratch database only.
The rate limit is off (PHASESCREEN_RATE_LIMIT_PER_MINUTE=0) and the active-screening cap is out of reach,
so every request is served. Each phase stops after --seconds or --max-requests, whichever comes first.
Prints, per phase: requests, errors, p50 and p99 latency, requests per second, and the CPU milliseconds per
request of the server (its processes, from /proc), of this client, and of the machine's PostgreSQL and Redis
server processes (whoever else uses them counts too): on a shared machine the CPU figures move far less than
the latencies.

Each client is one keep-alive connection of its own. --pool raw (the default) drives it with the lean
client below (about 0.1 ms of CPU per request, on uvloop when installed); --pool per-client with one httpx
client each (about 1 ms per request: the figures recorded before 2026-11-30 08:00 used it); --pool shared is
the first version's client, one httpx pool of 50 connections, which on a 2-core machine costs more CPU than
the server it measures (it tops out near 500 req/s against a server that answers instantly).

--baseline-ref REV also runs the server of git revision REV (checked out in a temporary worktree, deleted
afterwards) with the same client, alternating baseline and current --rounds times, then prints the ratios
current / baseline of the medians. Database URL and Redis index are shared: the runs never overlap.
--workers N starts `phasescreen serve --workers N` (N > 1 needs Redis; a baseline without the flag fails).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
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


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _processes() -> dict[int, tuple[str, list[str]]] | None:
    """pid -> (command name, the fields of /proc/PID/stat after it: [1] the parent, [11:15] utime, stime,
    cutime, cstime in clock ticks) of every process; ``None`` without a readable /proc (not Linux)."""
    found: dict[int, tuple[str, list[str]]] = {}
    try:
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    head, _, rest = (entry / "stat").read_text().rpartition(")")  # a name may hold ")"
                except OSError:
                    continue  # exited meanwhile
                found[int(entry.name)] = (head.partition("(")[2], rest.split())
    except OSError:
        return None
    return found


def _cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by process ``root`` and its descendants (Linux /proc; NaN
    elsewhere): the server's cost per request, which a busy shared machine does not inflate as it does
    latencies."""
    processes = _processes()
    if processes is None or root not in processes:
        return float("nan")
    stats = {
        pid: (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS) for pid, (_, fields) in processes.items()
    }
    total, frontier = 0.0, {root}
    while frontier:
        total += sum(stats[pid][1] for pid in frontier)
        frontier = {pid for pid, (parent, _) in stats.items() if parent in frontier}
    return total


class RawConnection:
    """One HTTP/1.1 keep-alive connection that sends a request and reads a Content-Length response, and no
    more: the lean client of ``--pool raw``. An httpx client costs about a millisecond of CPU per request,
    as much as the server's GET, so on a 2-core machine it measures itself as much as the API."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: dict | None) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + payload)
        header = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = header.decode("latin-1").split("\r\n")
        length, close = 0, False
        for line in lines:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding":
                raise ValueError("chunked responses are not read by the lean client")
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        content = await self.reader.readexactly(length)
        if close:
            await self.close()
        return int(status_line.split(" ", 2)[1]), content

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _cpu_of_services() -> float:
    """CPU seconds used so far by every PostgreSQL and Redis server process on this machine (0 where there is
    no /proc): their cost per request, which the server's own figure leaves out. Other users of the same
    servers count too, so read it on an idle machine."""
    # utime + stime, plus cutime + cstime: the postmaster's reaped backends (a backend that has exited has left
    # /proc, and its CPU moved to its parent's children's times)
    return sum(
        sum(int(field) for field in fields[11:15]) / _TICKS
        for name, fields in (_processes() or {}).values()
        if name in ("postgres", "redis-server")
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(
    port: int, database_url: str | None, redis_url: str, home: Path, tree: Path, workers: int = 1
) -> subprocess.Popen:
    env = {
        **os.environ,
        "PHASESCREEN_HOME": str(home),
        "PHASESCREEN_REDIS_URL": redis_url,
        "PHASESCREEN_QUEUE_NAME": "bench",
        "PHASESCREEN_RATE_LIMIT_PER_MINUTE": "0",
        "PHASESCREEN_MAX_ACTIVE_SCREENINGS": "1000000",
        "PHASESCREEN_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(tree),  # the server runs the code of `tree` (this checkout, or the baseline's)
    }
    if database_url:
        env["PHASESCREEN_DATABASE_URL"] = database_url
        env["PHASESCREEN_AUTO_MIGRATE"] = "true"
    else:
        env.pop("PHASESCREEN_DATABASE_URL", None)
    code = "import sys; from cli import main; sys.exit(main())"
    extra = ["--workers", str(workers)] if workers != 1 else []
    return subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--host", "127.0.0.1", "--port", str(port), *extra],
        cwd=tree,
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


async def _phase(
    base: str, clients: int, seconds: float, max_requests: int, make_request, pool: str = "per-client"
) -> dict:
    """``clients`` closed-loop clients sending ``make_request(i)`` until the deadline or the cap. ``pool``:
    "raw" (one keep-alive connection per client, the lean client below), "per-client" (one httpx client per
    client) or "shared" (one httpx pool of ``clients`` connections)."""
    latencies: list[float] = []
    errors = 0
    issued = 0
    created: list[str] = []
    deadline = time.monotonic() + seconds

    def new_client(connections: int) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(base_url=base, limits=limits, timeout=30)

    async def one_client(http: httpx.AsyncClient) -> None:
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

    async def own_connection() -> None:
        async with new_client(1) as http:
            await one_client(http)

    async def raw_client() -> None:
        nonlocal errors, issued
        connection = RawConnection(base)
        try:
            while time.monotonic() < deadline and issued < max_requests:
                issued += 1
                method, url, body = make_request(issued)
                started = time.perf_counter()
                try:
                    status, payload = await connection.request(method, url, body)
                    ok = status < 400
                    if ok and method == "POST":
                        created.append(json.loads(payload)["id"])
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    ok = False
                    await connection.close()  # a broken connection is replaced on the next request
                latencies.append(time.perf_counter() - started)
                errors += not ok
        finally:
            await connection.close()

    started = time.perf_counter()
    if pool == "raw":
        await asyncio.gather(*(raw_client() for _ in range(clients)))
    elif pool == "shared":
        async with new_client(clients) as http:
            await asyncio.gather(*(one_client(http) for _ in range(clients)))
    else:
        await asyncio.gather(*(own_connection() for _ in range(clients)))
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


async def _run(args: argparse.Namespace, tree: Path) -> dict[str, dict]:
    """One server of ``tree``: the POST phase, then the GET phase on what it created."""
    from redis import Redis

    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    if args.truncate and args.database_url:
        _truncate(args.database_url)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as home:
        server = _start_server(port, args.database_url, args.redis_url, Path(home), tree, args.workers)
        try:
            await _wait_ready(base, server)
            cpu = [_cpu_seconds(server.pid), time.process_time(), _cpu_of_services()]
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
                args.pool,
            )
            cpu = _account(post, server.pid, cpu)
            ids = post["created"] or ["00000000-0000-0000-0000-000000000000"]
            get = await _phase(
                base,
                args.clients,
                args.seconds,
                args.max_requests,
                lambda i: ("GET", f"/v1/screenings/{random.choice(ids)}", None),
                args.pool,
            )
            _account(get, server.pid, cpu)
        finally:
            server.terminate()
            server.wait(timeout=30)
            redis.flushdb()
    return {"POST": post, "GET": get}


def _account(phase: dict, server_pid: int, before: list[float]) -> list[float]:
    """Adds the server's and this client's CPU milliseconds per request of ``phase``; returns the new marks."""
    now = [_cpu_seconds(server_pid), time.process_time(), _cpu_of_services()]
    count = max(1, phase["requests"])
    phase["server_cpu_ms"] = (now[0] - before[0]) * 1000 / count
    phase["client_cpu_ms"] = (now[1] - before[1]) * 1000 / count
    phase["services_cpu_ms"] = (now[2] - before[2]) * 1000 / count
    return now


def _truncate(url: str) -> None:
    """Empty the application's tables (those that exist) so every run starts from the same database: the
    active-screenings count each POST makes grows with the rows earlier runs left."""
    from sqlalchemy import create_engine, inspect, text

    from store.models import Base

    engine = create_engine(url)
    try:
        present = set(inspect(engine).get_table_names())
        tables = [name for name in Base.metadata.tables if name in present]
        if tables:
            with engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
    finally:
        engine.dispose()


def _load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def _row(label: str, name: str, phase: dict) -> str:
    return (
        f"{label:<10} {name:<6} {phase['requests']:>9} {phase['errors']:>7} {phase['p50_ms']:>8.1f} "
        f"{phase['p99_ms']:>8.1f} {phase['rps']:>8.1f} {phase['server_cpu_ms']:>10.2f} {phase['client_cpu_ms']:>10.2f} "
        f"{phase['services_cpu_ms']:>10.2f}"
    )


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--max-requests", type=int, default=3000, help="cap of each phase")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--workers", type=int, default=1, help="server processes (phasescreen serve --workers)")
    parser.add_argument(
        "--pool",
        choices=("raw", "per-client", "shared"),
        default="raw",
        help="raw: one keep-alive connection per client with the lean client (default); per-client: one httpx "
        "client per client (the figures before 2026-11-30 08:00); shared: the first version's httpx pool",
    )
    parser.add_argument(
        "--truncate",
        action="store_true",
        help="empty the application's tables of --database-url before each run (PostgreSQL; a scratch database!)",
    )
    parser.add_argument("--baseline-ref", default=None, help="git revision to compare with (e.g. main, HEAD~3)")
    parser.add_argument("--rounds", type=int, default=1, help="baseline/current pairs with --baseline-ref")
    args = parser.parse_args()
    if not 1 <= args.clients <= 200 or not 0 < args.seconds <= 120:
        raise SystemExit("keep it bounded: 1-200 clients, at most 120 s per phase")
    if not 1 <= args.rounds <= 10 or not 1 <= args.workers <= 16:
        raise SystemExit("keep it bounded: 1-10 rounds, 1-16 workers")

    here = Path(__file__).resolve().parent.parent
    store = "SQLite (temporary)" if not args.database_url else args.database_url.split("@")[-1]
    print(
        f"database {store}, {args.clients} clients ({args.pool} connections), phases of {args.seconds:g} s, "
        f"{args.workers} server process(es)"
    )
    runs: list[tuple[str, dict[str, dict]]] = []
    if args.baseline_ref is None:
        print(f"current tree {_git('rev-parse', '--short', 'HEAD', cwd=here)}; {_load()}")
        runs.append(("current", await _run(args, here)))
    else:
        base_commit = _git("rev-parse", "--short", args.baseline_ref, cwd=here)
        with tempfile.TemporaryDirectory() as scratch:
            base_tree = Path(scratch) / "baseline"
            _git("worktree", "add", "--detach", str(base_tree), args.baseline_ref, cwd=here)
            try:
                current = _git("rev-parse", "--short", "HEAD", cwd=here)
                print(f"baseline {args.baseline_ref} ({base_commit}), current tree {current} and its changes")
                for round_ in range(args.rounds):
                    order = [("baseline", base_tree), ("current", here)]
                    for label, tree in order if round_ % 2 == 0 else order[::-1]:
                        print(f"round {round_ + 1}: {label}; {_load()}", flush=True)
                        runs.append((label, await _run(args, tree)))
            finally:
                _git("worktree", "remove", "--force", str(base_tree), cwd=here)
    print(f"finished; {_load()}")
    print(
        f"{'server':<10} {'phase':<6} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} "
        f"{'server CPU':>10} {'client CPU':>10} {'db+redis':>10}  (CPU: ms per request)"
    )
    for label, result in runs:
        for name, phase in result.items():
            print(_row(label, name, phase))
    if args.baseline_ref is not None:
        print("ratios current / baseline (medians over rounds; req/s: higher is better, latency: lower is better)")
        for name in ("POST", "GET"):

            def median(label: str, key: str, name: str = name) -> float:
                return statistics.median(result[name][key] for run_label, result in runs if run_label == label)

            keys = ("rps", "p50_ms", "p99_ms", "server_cpu_ms", "services_cpu_ms")
            # nan where the baseline spent nothing (PostgreSQL's CPU when the database is SQLite)
            ratios = {key: median("current", key) / (median("baseline", key) or float("nan")) for key in keys}
            print(
                f"{name:<6} req/s {ratios['rps']:.2f}x   p50 {ratios['p50_ms']:.2f}x   p99 {ratios['p99_ms']:.2f}x   "
                f"server CPU per request {ratios['server_cpu_ms']:.2f}x   PostgreSQL+Redis CPU "
                f"{ratios['services_cpu_ms']:.2f}x"
            )


if __name__ == "__main__":
    try:  # the server runs on uvloop too (uvicorn picks it when installed)
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
