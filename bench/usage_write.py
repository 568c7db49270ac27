"""What writing one usage event costs the relay, per row, by batch size, timed directly.

The usage writer thread shares its process (and the GIL) with the event loop, so its CPU
is the relay's. This times ``relay.metering.write_events`` (a prepared INSERT run by
psycopg's ``executemany``) against Django's ``bulk_create`` of model instances (what it
replaced), in this process's CPU time, on the database of ``DATABASE_URL`` (PostgreSQL
or SQLite). It uses the database's first tenant and API key, marks every row it writes
with a ``bench-write-`` request id and deletes them at the end. After ``bench/run`` has
prepared the ``bench`` database:

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/bench .venv/bin/python bench/usage_write.py
"""

from __future__ import annotations

import os
import resource
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

from django.db import connection  # noqa: E402
from django.utils import timezone  # noqa: E402

from billing.models import UsageEvent  # noqa: E402
from billing.pricing import PricePair, Prices  # noqa: E402
from portal.models import ApiKey  # noqa: E402
from relay.metering import Usage, UsageRecord, write_events  # noqa: E402

ROWS_PER_SIZE = 3000
BATCH_SIZES = (1, 10, 50, 200, 500)
PREFIX = "bench-write-"


def records(count: int, key: ApiKey) -> list[UsageRecord]:
    prices = Prices(input=150_000, cached_input=75_000, output=600_000, request_fee=0,
                    currency="USD")  # fmt: skip
    return [
        UsageRecord(
            request_id=PREFIX + uuid.uuid4().hex,
            created_at=timezone.now(),
            tenant_id=key.tenant_id,
            api_key_id=key.pk,
            model="sim-small",
            stream=False,
            status_code=200,
            total_latency_ms=12,
            upstream_model="sim-small",
            upstream_latency_ms=9,
            attempts=[{"channel": 1, "status": 200, "latency_ms": 9}],
            usage=Usage(prompt_tokens=25, completion_tokens=20),
            price=PricePair(retail=prices, wholesale=prices, reseller_id=None),
        )
        for _ in range(count)
    ]


def bulk_create(batch: list[UsageRecord]) -> None:
    events = [UsageEvent(**record.to_event_fields()) for record in batch]
    UsageEvent.objects.bulk_create(events, ignore_conflicts=True)


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def per_row_us(write: object, size: int, key: ApiKey) -> float:
    spent, rows = 0.0, 0
    while rows < ROWS_PER_SIZE:
        batch = records(size, key)
        before = cpu()
        write(batch)  # type: ignore[operator]
        spent += cpu() - before
        rows += size
    return spent / rows * 1e6


def main() -> None:
    key = ApiKey.objects.order_by("pk").first()
    if key is None:
        sys.exit("no API key in this database: run bench/run first, or point DATABASE_URL at it")
    print(f"usage event writes, CPU us per row ({connection.vendor}, {ROWS_PER_SIZE} rows each)")
    print(f"{'batch':>6} {'write_events':>13} {'bulk_create':>12}")
    try:
        for size in BATCH_SIZES:
            ours = per_row_us(write_events, size, key)
            django_ = per_row_us(bulk_create, size, key)
            print(f"{size:>6} {ours:>13.1f} {django_:>12.1f}")
    finally:
        UsageEvent.objects.filter(request_id__startswith=PREFIX).delete()


if __name__ == "__main__":
    main()
