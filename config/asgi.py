"""ASGI entry point: ``/v1/*`` and the probes go to the lean relay app, the rest to Django.

Serve with ``uvicorn config.asgi:application --http relay.server:HttpToolsProtocol`` (the
protocol adds read deadlines; see ``relay.server`` and deploy/Procfile).
"""

from __future__ import annotations

import gc
import os
from typing import Any

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_asgi_application()

from relay.app import RelayApp  # noqa: E402 - needs Django set up first

relay_application = RelayApp()
# Served by the relay app as well: the bare /v1 (an OpenAI-style 404), the probes and the
# Prometheus metrics.
LEAN_PATHS = frozenset({"/v1", "/healthz", "/readyz", "/metrics"})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and (
        scope["path"].startswith("/v1/") or scope["path"] in LEAN_PATHS
    ):
        await relay_application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
    elif scope["type"] == "websocket":
        # Nothing here speaks WebSocket (Django would raise): refuse the handshake, which
        # the server answers with a bare 403.
        await send({"type": "websocket.close", "code": 1008})
    else:
        await django_application(scope, receive, send)


def freeze_startup_objects() -> None:
    """Keep the objects made while starting (Django, the relay, every module: ~115,000 in
    a relay worker) out of the garbage collector's reach: they live as long as the worker.
    Otherwise every full collection walks them all and stops the event loop, and every
    request in flight, for it: 71 ms every ~3,000 streamed requests under
    ``bench/relay_cpu.py`` on a loaded 2-core machine, 0.3-4.5 ms once they are frozen.
    What requests make afterwards is collected as before.

    And collect the young less often (``RELAY_GC_THRESHOLD``, 5,000 objects rather than
    Python's 700): each young collection walks what the requests in flight hold, so at
    700 a worker serving 64 requests at once spent ~8 % of its CPU in the collector, and
    a third to a half of that at 5,000, for pauses of ~2 ms rather than ~0.3 ms
    (bench/README.md, issue 18, tenth round)."""
    gc.collect()
    gc.freeze()
    if settings.RELAY_GC_THRESHOLD > 0:
        gc.set_threshold(settings.RELAY_GC_THRESHOLD, *gc.get_threshold()[1:])


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            freeze_startup_objects()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await relay_application.shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
