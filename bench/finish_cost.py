"""What the finishing side of a request costs, timed directly in one process.

Process CPU per call (median of 5 runs) of what runs once per request after the upstream
answered: ``metrics.observe_record`` on a running event loop (prometheus-client in
multiprocess mode, as the bench serves it, folds included), the record's retail cost,
reading an OpenAI ``usage`` object, the queued record's JSON, and the usage writer's event
fields. Run from a checkout (any commit: the folds are timed only where they exist):

    python bench/finish_cost.py
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-prom-")

import django  # noqa: E402

django.setup()

from bench.observability_cost import record  # noqa: E402
from relay import metrics  # noqa: E402
from relay.metering import Usage  # noqa: E402

OPENAI_USAGE = {
    "prompt_tokens": 25,
    "completion_tokens": 20,
    "total_tokens": 45,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def per_call_us(run: Callable[[int], None], calls: int) -> float:
    runs = []
    for _ in range(5):
        started = time.process_time()
        run(calls)
        runs.append((time.process_time() - started) / calls * 1e6)
    return sorted(runs)[2]


def repeat(call: Callable[[], object]) -> Callable[[int], None]:
    def run(calls: int) -> None:
        for _ in range(calls):
            call()

    return run


def main() -> None:
    sample = record()
    flush = getattr(metrics, "flush", lambda: None)
    results: dict[str, float] = {}

    async def observe() -> None:
        metrics.observe_record(sample)  # label children created outside the timing
        flush()

        def run(calls: int) -> None:
            for _ in range(calls):
                metrics.observe_record(sample)
            flush()

        results["metrics.observe_record"] = per_call_us(run, 20_000)

    asyncio.run(observe())
    results["UsageRecord.known_cost"] = per_call_us(repeat(sample.known_cost), 20_000)
    results["Usage.from_openai"] = per_call_us(
        repeat(lambda: Usage.from_openai(OPENAI_USAGE, None)), 20_000
    )
    results["UsageRecord.to_json"] = per_call_us(repeat(sample.to_json), 20_000)
    results["UsageRecord.to_event_fields"] = per_call_us(repeat(sample.to_event_fields), 10_000)
    print(json.dumps({name: round(us, 2) for name, us in results.items()}))


if __name__ == "__main__":
    main()
