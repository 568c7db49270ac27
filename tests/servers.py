"""Run an ASGI app on a real loopback port in a background thread, for tests.

Tests talk to the simulator and to the relay over real HTTP, so streaming, disconnects and
connection pooling behave as in production rather than through an in-process transport.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class _Server(uvicorn.Server):
    """uvicorn's server, closing the relay's upstream client of its loop when it stops
    (what the relay's lifespan shutdown does in production; tests run without lifespan)."""

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().serve(sockets)
        finally:
            upstream = sys.modules.get("relay.upstream")
            if upstream is not None:
                await upstream.close_client()


def serve_in_thread(
    app: Any, host: str = "127.0.0.1", **config: Any
) -> tuple[str, Callable[[], None]]:
    """Start ``app`` under uvicorn on a free port of ``host``; return its URL and a stopper.

    The URL has no trailing slash (``http://127.0.0.1:54321``). ``config`` goes to
    ``uvicorn.Config`` over test-friendly defaults: no lifespan, warnings only, and no
    changes to the process's logging configuration. Calling the stopper twice is harmless.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # Binding port 0 here, rather than guessing a free port, leaves no window for a race.
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    options: dict[str, Any] = {
        "log_level": "warning",
        "lifespan": "off",
        "log_config": None,
        # A request the test left hanging must not keep the server alive for ever.
        "timeout_graceful_shutdown": 2,
        # Idle connections are closed by the clients first (httpx after 5 s, the relay's
        # upstream pool after 30 s), never by the server as a client reuses one: at
        # uvicorn's 5 s both sides closed at once and a request met a reset connection.
        "timeout_keep_alive": 60,
        **config,
    }
    server = _Server(uvicorn.Config(app, host=host, port=port, **options))
    failures: list[BaseException] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced by the start-up wait below
            failures.append(exc)

    thread = threading.Thread(target=run, name=f"test-server-{port}", daemon=True)
    thread.start()

    def stop() -> None:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():
            server.force_exit = True
            thread.join(STOP_TIMEOUT)
        sock.close()

    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            stop()
            cause = failures[0] if failures else None
            raise RuntimeError(f"test server on {host}:{port} did not start") from cause
        time.sleep(0.005)
    netloc = f"[{host}]" if family == socket.AF_INET6 else host
    return f"http://{netloc}:{port}", stop


async def asgi_body(receive: Any) -> bytes:
    """The whole body of the request an ASGI app (a test's upstream) is serving."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """``serve_in_thread`` as a context manager that yields the base URL."""
    base_url, stop = serve_in_thread(app, host, **config)
    try:
        yield base_url
    finally:
        stop()


class RelayProcess:
    """``uvicorn config.asgi:application`` on a free port, with the given environment."""

    def __init__(self, env: dict[str, str], *args: str, launcher: str = "uvicorn") -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # A file, not a pipe: a pipe nobody reads fills up and blocks the server's logging.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(  # noqa: S603 - our own server, fixed arguments
            [
                sys.executable,
                "-m",
                launcher,  # uvicorn, or a module that runs it (tests/relay/clocked_relay.py)
                "config.asgi:application",
                "--port",
                str(self.port),
                "--timeout-graceful-shutdown",
                "20",
                "--no-access-log",
                # The production protocol (deploy/Procfile): its read deadlines included.
                "--http",
                "relay.server:HttpToolsProtocol",
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.monotonic() + 60  # a loaded CI machine starts Django slowly
        # The port was free when picked, but another process (another xdist worker's
        # server) may take it before this one binds: only once this process says it
        # listens there is an answer on the port its own.
        bound = f"Uvicorn running on {self.url} "
        while True:
            try:
                if bound in self.logged():
                    httpx.get(self.url + "/healthz", timeout=1)
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(self.logged())
            time.sleep(0.1)

    def logged(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def database_url(port: int | None = None) -> str:
    """The test database's URL, for a server in another process (optionally via ``port``)."""
    from django.db import connection

    db = connection.settings_dict
    return (
        f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{port or db['PORT']}"
        f"/{db['NAME']}"
    )


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a Celery worker of ours: the test database, this run's Redis
    namespace and broker, and tasks sent to the broker (never run eagerly)."""
    from django.conf import settings

    return {
        **os.environ,
        "DATABASE_URL": database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
        **extra,
    }


def celery_worker(
    queue: str, hostname: str, env: dict[str, str], *, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """A solo Celery worker in its own process consuming only ``queue`` (a test's own, so
    no other worker takes its tasks)."""
    command = [
        sys.executable, "-m", "celery", "-A", "config.celery_app", "worker", "--pool=solo",
        "-Q", queue, "--hostname", f"{hostname}@%h",
        "--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel=warning",
    ]  # fmt: skip
    return subprocess.Popen(  # noqa: S603 - our own worker, fixed arguments
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr
    )
