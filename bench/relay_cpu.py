"""The relay's own CPU per request, timed in one process without the HTTP server.

Drives the relay's ASGI application directly (no uvicorn, no load generator in this
process) against an upstream on loopback (the simulator, in its own process), with the
bench's plain key and its limited key, alternating the cases round by round so that a
shared, loaded machine weighs on each alike. For each case it prints the process CPU per
request (this process: the relay, its HTTP and Redis clients, the usage drainer thread)
and, at concurrency 1, the wall time per request, and the time the garbage collector took
per request. Once warm, the process's objects are frozen and the collector's threshold set
as a relay worker's start-up does (``config.asgi.freeze_startup_objects``); pass
``--gc-threshold 700`` for Python's own.

    python bench/relay_cpu.py --key-file KEY --limited-key-file KEY \
        [--modes plain,stream,...] [--concurrency 1,8,64] [--requests 400] [--rounds 5] \
        [--gc-threshold N]

``--modes`` takes ``bench/run``'s modes (``responses-stream``, ``chat-anthropic``, ...);
the translated and Anthropic ones need ``bench/seed.py translated-model`` too.

It needs the project's environment (DATABASE_URL, REDIS_URL) and a database seeded as the
bench does it (``seed_demo`` against the simulator, ``bench/seed.py limited-key``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from bench.targets import PLAIN_BODY, STREAM_BODY, SURFACE_MODES  # noqa: E402
from relay.app import RelayApp  # noqa: E402

PATH = "/v1/chat/completions"


async def _one(app: RelayApp, secret: bytes, body: bytes, path: str = PATH) -> int:
    """One request through the ASGI app; returns the response status."""
    finished = asyncio.Event()
    sent_body = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body"):
            finished.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", b"Bearer " + secret),
        ],
        "client": ("127.0.0.1", 40000),
    }
    await app(scope, receive, send)
    return status


class _Collections:
    """The wall time the garbage collector's runs took (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started


_collections = _Collections()
gc.callbacks.append(_collections)


async def _case(
    app: RelayApp, secret: bytes, request: tuple[str, bytes], requests: int, concurrency: int
) -> tuple[float, float, float]:
    """(CPU ms, wall ms, collector ms) per request for ``requests`` requests at
    ``concurrency``."""
    per_task = max(requests // concurrency, 1)
    statuses: list[int] = []

    async def worker() -> None:
        for _ in range(per_task):
            statuses.append(await _one(app, secret, request[1], request[0]))

    cpu, wall, collecting = time.process_time(), time.perf_counter(), _collections.seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    collecting = _collections.seconds - collecting
    bad = [s for s in statuses if s != 200]
    if bad:
        raise SystemExit(f"{len(bad)} requests failed, e.g. status {bad[0]}")
    done = per_task * concurrency
    return cpu * 1000 / done, wall * 1000 / done, collecting * 1000 / done


async def main(args: argparse.Namespace) -> dict[str, Any]:
    app = RelayApp()
    keys = {
        "nolimits": Path(args.key_file).read_text().split()[0].encode(),
        "limits": Path(args.limited_key_file).read_text().split()[0].encode(),
    }
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in ("plain", "stream", *SURFACE_MODES)]
    if unknown:
        raise SystemExit(f"unknown mode {unknown[0]!r}")
    bodies = {
        "plain": (PATH, json.dumps(PLAIN_BODY).encode()),
        "stream": (PATH, json.dumps(STREAM_BODY).encode()),
        **{m: (path, json.dumps(body).encode()) for m, (path, body) in SURFACE_MODES.items()},
    }
    keys = {k: v for k, v in keys.items() if k in args.keys.split(",")}
    cases = [(m, k, c) for c in args.concurrency for m in modes for k in keys]
    for mode, key, concurrency in cases:  # warm every path and the caches
        await _case(app, keys[key], bodies[mode], max(concurrency, 50), concurrency)
    gc.collect()
    gc.freeze()
    gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
    samples: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for case in cases:
            mode, key, concurrency = case
            samples[case].append(
                await _case(app, keys[key], bodies[mode], args.requests, concurrency)
            )
    await app.shutdown()
    out: dict[str, Any] = {}
    for (mode, key, concurrency), values in samples.items():
        out[f"{mode}/{key}/c{concurrency}"] = {
            "cpu_ms": round(statistics.median(v[0] for v in values), 4),
            "wall_ms": round(statistics.median(v[1] for v in values), 4),
            "gc_ms": round(statistics.median(v[2] for v in values), 4),
        }
    return out


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--limited-key-file", required=True)
    parser.add_argument("--modes", default="plain,stream")
    parser.add_argument("--keys", default="nolimits,limits")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 64]
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=settings.RELAY_GC_THRESHOLD or 700,
        help="the collector's first threshold once warm (default: the relay's setting)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    result = asyncio.run(main(_parse()))
    for name, figures in result.items():
        print(
            f"{name:24} cpu {figures['cpu_ms']:.3f} ms  wall {figures['wall_ms']:.3f} ms  "
            f"gc {figures['gc_ms']:.4f} ms"
        )
