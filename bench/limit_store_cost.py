"""What a limited request's two Redis calls cost the relay's own process.

Admits and settles requests through ``RedisLimitStore`` (the relay's pipelined script
calls, ``relay/batching.py``) for one key with every limit set, one at a time and 64 at
once, and prints the process CPU per request (admission + settlement): the client's
share of the limits path, kernel time for the socket included. Needs the project's
environment (REDIS_URL):

    python bench/limit_store_cost.py [--requests 3000] [--rounds 3]

One at a time, every call is a round trip of its own; 64 at once, the calls of one loop
turn share a write and a read.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import redis.asyncio as aioredis  # noqa: E402
from django.conf import settings  # noqa: E402

from relay.limits import Limits, RedisLimitStore, Scope  # noqa: E402

SCOPES = [Scope("key:1", Limits(rpm=10**9, tpm=2 * 10**9, concurrency=10**6, daily_tokens=10**15))]


async def _cpu_per_request(requests: int, concurrency: int) -> float:
    client = aioredis.Redis.from_url(settings.REDIS_URL)
    store = RedisLimitStore(client, f"bench-store-{uuid.uuid4().hex[:8]}")
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with gate:
            admission = await store.acquire(SCOPES, f"r{index}", 89, 630)
            await store.release(SCOPES, f"r{index}", admission, 42, None, None, b"{}", None)

    try:
        await asyncio.gather(*(one(i) for i in range(200)))  # connection and scripts loaded
        started = time.process_time()
        await asyncio.gather(*(one(i) for i in range(requests)))
        return (time.process_time() - started) / requests * 1e6
    finally:
        await client.delete(f"{store.prefix}:usage:queue")
        await store.close()
        await client.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for concurrency in (1, 64):
        runs = [
            asyncio.run(_cpu_per_request(args.requests, concurrency)) for _ in range(args.rounds)
        ]
        print(
            f"c={concurrency}: {statistics.median(runs):.0f} us of CPU per admission + "
            f"settlement (runs: {', '.join(f'{r:.0f}' for r in runs)})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
