"""``phasescreen serve --workers N``: N processes on one port, each with its own app and (Linux) its own
SO_REUSEPORT listener; refused without Redis, or without a fixed port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from store.settings import ServiceSettings
from tests.helpers.services import REPO, child_pids, exited, free_port, tiny_request, wait_for, worker_env

SERVE = [sys.executable, "-c", "import sys; from cli import main; sys.exit(main())", "serve", "--host", "127.0.0.1"]


ESTABLISHED, LISTEN = "01", "0A"  # /proc/net/tcp socket states


def _accepted(pid: int, port: int, state: str = ESTABLISHED) -> int:
    """Sockets on ``port`` in ``state`` (established connections by default) that process ``pid`` holds (Linux
    /proc)."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:  # local port, state
                    inodes.add(fields[9])
    held = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                held += link.startswith("socket:[") and link[8:-1] in inodes
    return held


def test_workers_above_one_need_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASESCREEN_")}
    env["PHASESCREEN_HOME"] = str(tmp_path)
    run = subprocess.run([*SERVE, "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "PHASESCREEN_REDIS_URL" in run.stderr
    assert not (tmp_path / "phasescreen.db").exists()  # refused before anything was created


@pytest.mark.commits  # the server processes write through their own connections
def test_two_processes_serve_one_port(make_settings: Callable[..., ServiceSettings], tmp_path: Path) -> None:
    settings = make_settings(auto_migrate=True)
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [*SERVE, "--port", str(port), "--workers", "2"], cwd=REPO, env=worker_env(settings), stdout=log, stderr=log
    )
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return server.poll() is not None  # stop waiting: the assertion below says why

    try:
        wait_for(ready, timeout=120, what="serve --workers 2")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        with httpx.Client(base_url=base, timeout=30) as client:
            created = [client.post("/v1/screenings", json=tiny_request(seed=i)) for i in range(6)]
            assert [r.status_code for r in created] == [202] * 6, [r.text for r in created]
            for response in created:  # whichever process answers sees what the other wrote
                fetched = client.get(response.headers["location"])
                assert fetched.status_code == 200 and fetched.json() == response.json()
        children = child_pids(server.pid)
        assert len(children) >= 2  # the two server processes (multiprocessing may add a helper)
        if sys.platform.startswith("linux"):  # one SO_REUSEPORT listener each: the kernel spreads connections
            # /readyz answered from one process; the other may still be starting: wait until both listen
            listening = lambda: sum(_accepted(c, port, LISTEN) > 0 for c in children) >= 2  # noqa: E731
            wait_for(listening, timeout=60, what="both server processes listening")
            clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
            try:
                wait_for(lambda: sum(_accepted(c, port) for c in children) == 40, timeout=10, what="accepts")
                served = sorted(_accepted(c, port) for c in children)
                assert served[-2] >= 8, served  # both server processes hold some (one socket: 40 / 0 was usual)
            finally:
                for client in clients:
                    client.close()
            # a server process killed is replaced, and the port keeps answering
            spawned = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
            os.kill(spawned[0], signal.SIGKILL)

            def replaced() -> bool:
                now = child_pids(server.pid)
                return spawned[0] not in now and len(now) == len(children)

            wait_for(replaced, timeout=30, what="a replacement server process")
            wait_for(ready, timeout=60, what="the port answering again")
            assert server.poll() is None
            assert all(httpx.get(f"{base}/readyz", timeout=5).status_code == 200 for _ in range(10))
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_workers_need_a_fixed_port_and_a_free_one(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASESCREEN_")}
    env.update(PHASESCREEN_HOME=str(tmp_path), PHASESCREEN_REDIS_URL="redis://127.0.0.1:6379/15")
    run = subprocess.run(
        [*SERVE, "--port", "0", "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    if sys.platform.startswith("linux"):
        assert run.returncode == 2 and "fixed --port" in run.stderr
    with socket.socket() as taken:  # a port another program holds, without SO_REUSEPORT
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        serve = [*SERVE, "--port", str(port), "--workers", "2"]
        run = subprocess.run(serve, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    if sys.platform.startswith("linux"):
        assert run.returncode == 1 and f"cannot bind 127.0.0.1:{port}" in run.stderr
        # another server's SO_REUSEPORT listener (a second `serve --workers` of this user): refused, not shared
        from cli.processes import listener

        with listener("127.0.0.1", 0) as other:
            other.listen()
            port = other.getsockname()[1]
            serve = [*SERVE, "--port", str(port), "--workers", "2"]
            run = subprocess.run(serve, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1 and f"cannot bind 127.0.0.1:{port}" in run.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_server_processes_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed `serve --workers` (no chance to stop its processes) leaves no process serving the port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PHASESCREEN_")}
    env.update(PHASESCREEN_HOME=str(tmp_path), PHASESCREEN_REDIS_URL="redis://127.0.0.1:6379/15")
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    serve = [*SERVE, "--port", str(port), "--workers", "2"]
    server = subprocess.Popen(serve, cwd=REPO, env=env, stdout=log, stderr=log)
    children: list[int] = []
    try:
        def serving() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return server.poll() is not None

        wait_for(serving, timeout=120, what="serve --workers 2")
        assert server.poll() is None, (tmp_path / "serve.log").read_text()
        children = child_pids(server.pid)
        spawned = [c for c in children if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert len(spawned) == 2
        server.kill()
        server.wait()

        wait_for(lambda: all(exited(pid) for pid in spawned), timeout=30, what="the orphaned server processes to stop")
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        if server.poll() is None:
            server.kill()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()
