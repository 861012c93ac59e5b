"""``phasescreen serve --workers N`` on Linux: N uvicorn processes, each with its own SO_REUSEPORT listener.

uvicorn's own supervisor binds one socket and shares it, and whichever process wakes first accepts every
connection waiting: 50 keep-alive clients arriving at once split about 40 / 10 between two processes, and the
busy one sets the tail latency (docs/benchmarks.md). With one listener per process the kernel spreads new
connections over the processes by a hash of their addresses. Linux only (elsewhere SO_REUSEPORT does not
balance, and ``serve`` falls back to uvicorn's supervisor). The kernel allows a port's listeners to be shared
only by processes of the same user.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

log = logging.getLogger("phasescreen.serve")



def supported() -> bool:
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listener(host: str, port: int, *, share: bool = True) -> socket.socket:
    """A socket bound to ``host:port`` (not listening yet: uvicorn calls listen), with SO_REUSEPORT when
    ``share``; without it the bind fails if anything holds the port, another SO_REUSEPORT server included."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _child(options: dict[str, Any], started: Any, parent: int) -> None:  # pragma: no cover - spawned process
    """One server process; sets ``started`` (a multiprocessing Event) once it listens and its app started.
    SIGTERM (a graceful stop) when the supervisor dies, even by SIGKILL: no orphan keeps serving the port."""
    import uvicorn

    from jobs.orphans import die_with_parent

    die_with_parent(signal.SIGTERM, parent)

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                started.set()

    sock = listener(options["host"], options["port"])
    Server(uvicorn.Config(**options)).run(sockets=[sock])


class _Supervisor:
    def __init__(self, workers: int, options: dict[str, Any]) -> None:
        self.workers = workers
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[tuple[Any, Any]] = []  # (process, its "started" event)
        self.stopping = threading.Event()

    def start_one(self, index: int) -> tuple[Any, Any]:
        started = self.context.Event()
        process = self.context.Process(
            target=_child, args=(self.options, started, os.getpid()), name=f"phasescreen-api-{index}"
        )
        process.start()
        return process, started

    def run(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: self.stopping.set())
        self.processes = [self.start_one(i) for i in range(self.workers)]
        code = 0
        while not self.stopping.wait(0.5):
            for index, (process, started) in enumerate(self.processes):
                if process.is_alive():
                    continue
                if not started.is_set():  # a port in use, a database it cannot reach, a bad setting: would loop
                    print(
                        f"phasescreen serve: process {index} exited with {process.exitcode} before it started "
                        "serving; stopping (see its log above)",
                        file=sys.stderr,
                    )
                    self.stopping.set()
                    code = 1
                    break
                log.warning("server process %d exited with %s; starting another", index, process.exitcode)
                self.processes[index] = self.start_one(index)
        self.stop()
        return code

    def stop(self, grace: float = 30.0) -> None:
        for process, _ in self.processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
        deadline = time.monotonic() + grace
        for process, _ in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


def serve(workers: int, options: dict[str, Any]) -> int:
    """Run ``workers`` processes of the uvicorn ``options`` (an app factory's import string among them) until
    SIGINT or SIGTERM; a process that dies once it served is replaced. Exit status 1 when one exits before it
    started serving, or when the port cannot be bound at all."""
    if not options.get("port"):
        print("phasescreen serve: --workers above 1 needs a fixed --port (not 0)", file=sys.stderr)
        return 2
    # the error a user can act on, before any process starts: a port another program holds, or another
    # `serve --workers` of this user (whose SO_REUSEPORT listeners would otherwise share its connections)
    try:
        listener(options["host"], options["port"], share=False).close()
    except OSError as exc:
        print(f"phasescreen serve: cannot bind {options['host']}:{options['port']}: {exc}", file=sys.stderr)
        return 1
    return _Supervisor(workers, options).run()
