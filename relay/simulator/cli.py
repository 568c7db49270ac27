"""Running the simulator: ``python -m relay.simulator`` and ``manage.py simulate_upstream``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from relay.simulator.app import build_app
from relay.simulator.options import DEFAULT_MODELS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line options, shared with ``manage.py simulate_upstream``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=9100, help="port to listen on")
    parser.add_argument("--latency-ms", type=float, default=0, help="delay before each answer")
    parser.add_argument("--tps", type=float, default=0, help="stream tokens/second (0: no delay)")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids to list"
    )
    parser.add_argument(
        "--completion-tokens", type=int, default=16, help="tokens in each completion"
    )


def serve(
    *,
    host: str,
    port: int,
    models: list[str] | None = None,
    latency_ms: float = 0,
    tokens_per_second: float = 0,
    completion_tokens: int = 16,
) -> None:
    """Serve a simulator with uvicorn until interrupted."""
    import uvicorn  # here, so importing the app alone stays light

    app = build_app(
        models=models,
        latency_ms=latency_ms,
        tokens_per_second=tokens_per_second,
        completion_tokens=completion_tokens,
    )
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    print(
        f"Simulated upstream on http://{host}:{port}/v1 (behaviours: /sim/<options>/v1)",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.Server(config).run()


def serve_from_arguments(arguments: argparse.Namespace | dict[str, Any]) -> None:
    """Start ``serve`` from parsed ``add_arguments`` options."""
    values = vars(arguments) if isinstance(arguments, argparse.Namespace) else arguments
    models = [name.strip() for name in values["models"].split(",") if name.strip()]
    serve(
        host=values["host"],
        port=values["port"],
        models=models or None,
        latency_ms=values["latency_ms"],
        tokens_per_second=values["tps"],
        completion_tokens=values["completion_tokens"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relay.simulator", description=__doc__)
    add_arguments(parser)
    arguments = parser.parse_args(argv)
    serve_from_arguments(arguments)
    return 0
