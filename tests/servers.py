"""Run an ASGI app on a real loopback port in a background thread, for tests.

Tests talk to the simulator and to the relay over real HTTP, so streaming, disconnects and
connection pooling behave as in production rather than through an in-process transport.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


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
        **config,
    }
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **options))
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


@contextlib.contextmanager
def running_server(app: Any, host: str = "127.0.0.1", **config: Any) -> Iterator[str]:
    """``serve_in_thread`` as a context manager that yields the base URL."""
    base_url, stop = serve_in_thread(app, host, **config)
    try:
        yield base_url
    finally:
        stop()
