"""What a limited request costs Redis itself: its admission and settlement scripts.

Runs the checkout's own ``ACQUIRE_LUA`` and ``FINISH_LUA`` (``relay/limits/scripts.py``)
for one key with every limit set (requests and tokens per minute, concurrency, tokens a
day, as the bench's limited key), 3,000 requests per simulated minute (the scripts take
the time as an argument, so a minute passes in well under one), and reads Redis's own
time in them from ``INFO commandstats``. The first minute fills the window; the later
ones show a steady rate, where each second's counts leave the window as a new second
starts. Run from a checkout (any commit), against a Redis nobody else is using heavily:

    python bench/limits_lua_cost.py [--redis-url redis://127.0.0.1:6379/13] [--minutes 3]

It flushes the database of ``--redis-url`` first: give it one of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from relay.limits.scripts import ACQUIRE_LUA, FINISH_LUA  # noqa: E402

PER_MINUTE = 3000
LIMITS = [10**9, 2 * 10**9, 10**6, 10**15]  # rpm, tpm, concurrency, daily tokens: never refused
TOKENS, USED = 89, 42


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--minutes", type=int, default=3)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.redis_url)
    client.flushdb()
    keys = [f"bench-lua:{name}" for name in ("requests", "tokens", "conc", "day")]
    acquire, finish = (hashlib.sha1(s.encode()).hexdigest() for s in (ACQUIRE_LUA, FINISH_LUA))  # noqa: S324 - Redis names scripts by SHA-1
    client.script_load(ACQUIRE_LUA)
    client.script_load(FINISH_LUA)
    start_ms = int(time.time()) * 1000
    step_ms = 60_000 // PER_MINUTE
    for minute in range(args.minutes):
        client.config_resetstat()
        pipe = client.pipeline(transaction=False)
        for index in range(PER_MINUTE):
            now_ms = start_ms + minute * 60_000 + index * step_ms
            request_id = f"req_{uuid.uuid4().hex}"
            pipe.evalsha(acquire, 4, *keys, now_ms, request_id, TOKENS, 630_000, 1, *LIMITS,
                         0, 0, 0, 0, 0, 0)  # fmt: skip
            pipe.evalsha(finish, 6, *keys, "bench-lua:queue", f"bench-lua:settled:{request_id}",
                         request_id, now_ms // 1000, USED - TOKENS, 1, 0, 0, -1, "", "", 0,
                         30_000)  # fmt: skip
        pipe.execute()
        spent = client.info("commandstats")["cmdstat_evalsha"]["usec"] / PER_MINUTE
        label = "filling the window" if minute == 0 else "steady"
        print(f"minute {minute + 1} ({label}): {spent:.1f} us of Redis per limited request")
    client.flushdb()
    return 0


if __name__ == "__main__":
    sys.exit(main())
