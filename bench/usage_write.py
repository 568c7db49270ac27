"""What writing one usage event costs the relay, per row, by batch size, timed directly.

The usage writer thread shares its process (and the GIL) with the event loop, so its CPU
is the relay's. This times ``relay.metering.write_events`` (``COPY`` on PostgreSQL, a
prepared INSERT on SQLite), the prepared INSERT run by psycopg's ``executemany`` (what
COPY replaced on PostgreSQL) and Django's ``bulk_create`` of model instances (what that
replaced), in this process's CPU time, on the database of ``DATABASE_URL`` (PostgreSQL
or SQLite). On a PostgreSQL on this machine it also reads the server's own CPU for the
same rows (its backend process's, from /proc): on a 2-core machine the database shares
the cores with the relay. It uses the database's first tenant and API key, marks every row it writes
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

from django.db import connection, transaction  # noqa: E402
from django.utils import timezone  # noqa: E402

from billing.models import UsageEvent  # noqa: E402
from billing.pricing import PricePair, Prices  # noqa: E402
from billing.services import usage  # noqa: E402
from portal.models import ApiKey  # noqa: E402
from relay.metering import Usage, UsageRecord, write_events  # noqa: E402

ROWS_PER_SIZE = 5000
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


def prepared_insert(batch: list[UsageRecord]) -> None:
    """The prepared INSERT over ``executemany`` that COPY replaced (PostgreSQL): the
    writer's own fallback for a batch holding an event already written."""
    table, fields, _, _ = usage._event_table()
    rows = [record.to_event_fields() for record in batch]
    with transaction.atomic():
        usage._insert_prepared(usage._insert_sql(table, fields), usage._params(rows))


def cpu() -> float:
    usage_ = resource.getrusage(resource.RUSAGE_SELF)
    return usage_.ru_utime + usage_.ru_stime


def server_cpu() -> float | None:
    """The CPU seconds of this connection's PostgreSQL backend, if it runs on this machine."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (pid,) = cursor.fetchone()
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def per_row_us(write: object, size: int, key: ApiKey) -> tuple[float, float | None]:
    """This process's and the database server's CPU per row, in microseconds."""
    spent, rows = 0.0, 0
    server_before = server_cpu()
    while rows < ROWS_PER_SIZE:
        batch = records(size, key)
        before = cpu()
        write(batch)  # type: ignore[operator]
        spent += cpu() - before
        rows += size
    server_after = server_cpu()
    server = None
    if server_before is not None and server_after is not None:
        server = (server_after - server_before) / rows * 1e6
    return spent / rows * 1e6, server


def main() -> None:
    key = ApiKey.objects.order_by("pk").first()
    if key is None:
        sys.exit("no API key in this database: run bench/run first, or point DATABASE_URL at it")
    print(f"usage event writes, CPU us per row ({connection.vendor}, {ROWS_PER_SIZE} rows each)")
    print("relay: this process; server: the database's backend process (blank: not readable)")
    variants = {"write_events": write_events, "bulk_create": bulk_create}
    if connection.vendor == "postgresql":
        variants = {"write_events": write_events, "executemany": prepared_insert, **variants}
        del variants["bulk_create"]
        variants["bulk_create"] = bulk_create
    print(f"{'batch':>6} " + " ".join(f"{name + ' relay/server':>26}" for name in variants))
    try:
        for size in BATCH_SIZES:
            cells = []
            for write in variants.values():
                relay, server = per_row_us(write, size, key)
                cells.append(f"{relay:>12.1f} / {'' if server is None else f'{server:.1f}':>9}")
            print(f"{size:>6} " + " ".join(f"{cell:>26}" for cell in cells))
    finally:
        UsageEvent.objects.filter(request_id__startswith=PREFIX).delete()


if __name__ == "__main__":
    main()
