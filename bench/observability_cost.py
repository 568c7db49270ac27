"""What the relay's observability costs per request, timed directly in one process.

The end-to-end variants (metrics off, JSON access log on) differ from the default by less
than the run-to-run noise of a shared 2-core machine, so this times the calls themselves:
``metrics.observe_record`` as the relay makes it once per request, on a running event loop
(prometheus-client in multiprocess mode, as the bench serves it; the folds of the counts
into it included), with metrics off, and with the JSON access log written to a file. Run
by bench/runner.py in the project's environment:

    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) python bench/observability_cost.py
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-prom-")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from pythonjsonlogger.json import JsonFormatter  # noqa: E402

from billing.pricing import PricePair, Prices  # noqa: E402
from relay import metrics  # noqa: E402
from relay.metering import Usage, UsageRecord  # noqa: E402

CALLS = 20_000


def record() -> UsageRecord:
    prices = Prices(input=150_000, cached_input=75_000, output=600_000, request_fee=0,
                    currency="USD")  # fmt: skip
    return UsageRecord(
        request_id="req_" + "0" * 32,
        created_at=datetime.now(UTC),
        tenant_id=1,
        api_key_id=1,
        model="sim-small",
        stream=False,
        status_code=200,
        total_latency_ms=12,
        channel_id=1,
        upstream_model="sim-small",
        upstream_latency_ms=9,
        attempts=[{"channel": 1, "status": 200, "latency_ms": 9}],
        usage=Usage(prompt_tokens=25, completion_tokens=20),
        price=PricePair(retail=prices, wholesale=prices, reseller_id=None),
    )


def per_call_us(calls: int = CALLS) -> float:
    """Microseconds per call, on an event loop as in the relay (the counts wait there for
    their fold, whose cost is included)."""

    async def timed() -> float:
        sample = record()
        metrics.observe_record(sample)  # label children created outside the timing
        metrics.flush()
        started = time.perf_counter()
        for _ in range(calls):
            metrics.observe_record(sample)
        metrics.flush()
        return (time.perf_counter() - started) / calls * 1e6

    return asyncio.run(timed())


def main() -> None:
    assert metrics.MULTIPROCESS, "PROMETHEUS_MULTIPROC_DIR must be set before the import"
    results: dict[str, float] = {}
    settings.RELAY_METRICS = False
    results["observe_record, metrics off"] = per_call_us()
    settings.RELAY_METRICS = True
    results["observe_record, metrics on (multiprocess)"] = per_call_us()
    access = logging.getLogger("relay.access")
    with tempfile.NamedTemporaryFile("w", suffix=".log") as sink:
        handler = logging.FileHandler(sink.name)
        handler.setFormatter(JsonFormatter(settings.LOGGING["formatters"]["json"]["fmt"]))
        handler.addFilter(metrics.RequestIdFilter())
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
        results["observe_record, metrics on + JSON access log to a file"] = per_call_us()
        access.removeHandler(handler)
        handler.close()
    print(json.dumps({name: round(us, 2) for name, us in results.items()}))


if __name__ == "__main__":
    main()
