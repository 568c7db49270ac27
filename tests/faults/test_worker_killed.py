"""A Celery worker killed (SIGKILL) in the middle of the rollup job: the next run completes
the rollups with every amount exactly once, none missing and none doubled.

A real worker process consumes a queue of its own on this run's Redis and the test
database; the test waits until the job has committed part of its buckets, kills the
worker, then lets a fresh worker run the job again.
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db.models import Sum

from billing.models import BillingWatermark, UsageEvent, UsageRollup
from billing.tasks import rollups_advance_task
from config.celery_app import app
from tests.billing.conftest import Market, generate_month, market  # noqa: F401 - fixture
from tests.servers import celery_worker, worker_env

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 60
SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_retail_micros",
    "cost_wholesale_micros",
)


def start_worker(queue: str) -> subprocess.Popen[bytes]:
    return celery_worker(queue, f"{queue}-{uuid.uuid4().hex[:4]}", worker_env())


@pytest.fixture
def queue() -> Iterator[str]:
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False  # send to the broker, whatever the default
    yield f"rollup-kill-{uuid.uuid4().hex[:10]}"
    app.conf.task_always_eager = previous


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def until(check: Any, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_SECONDS} s"
        time.sleep(poll)


def expected_buckets() -> Counter[tuple[Any, ...]]:
    """Every hourly bucket's sums, straight from the raw events."""
    from django.db.models import Count, Q
    from django.db.models.functions import TruncHour

    from billing.services.rollups import KEY_FIELDS

    rows = (
        UsageEvent.objects.annotate(hour=TruncHour("created_at"))
        .order_by()
        .values("hour", *KEY_FIELDS)
        .annotate(
            requests=Count("id"),
            errors=Count("id", filter=Q(status_code__gte=400)),
            **{name: Sum(name) for name in SUMS[2:]},
        )
    )
    return Counter(
        (row["hour"], *(row[k] for k in KEY_FIELDS), *(row[s] or 0 for s in SUMS)) for row in rows
    )


def stored_buckets(granularity: str) -> Counter[tuple[Any, ...]]:
    from billing.services.rollups import KEY_FIELDS

    rows = UsageRollup.objects.filter(granularity=granularity).values(
        "bucket_start", *KEY_FIELDS, *SUMS
    )
    return Counter(
        (row["bucket_start"], *(row[k] for k in KEY_FIELDS), *(row[s] for s in SUMS))
        for row in rows
    )


def test_a_worker_killed_mid_rollup_loses_and_doubles_nothing(
    market: Market,  # noqa: F811 - the fixture
    queue: str,
    workers: list[subprocess.Popen[bytes]],
) -> None:
    # Events in ~500 scattered hours: the job commits one run of hours at a time.
    generate_month(market, count=900, seed=11)
    want = expected_buckets()
    hours = {bucket[0] for bucket in want}
    assert len(hours) > 300

    first = start_worker(queue)
    workers.append(first)
    rollups_advance_task.apply_async(queue=queue)
    # Some buckets are committed, far from all: the job is in the middle of its work.
    until(
        lambda: len(hours) // 10 < UsageRollup.objects.filter(granularity="hour").count(),
        "the first worker starting on the rollups",
        poll=0.01,
    )
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    partial = UsageRollup.objects.filter(granularity="hour").count()
    assert 0 < partial < len(want), "the kill did not land mid-aggregation"
    watermark = BillingWatermark.objects.filter(name=BillingWatermark.ROLLUPS).first()
    assert watermark is None or watermark.position is None  # never moved by the dead job

    second = start_worker(queue)
    workers.append(second)
    rollups_advance_task.apply_async(queue=queue)
    until(
        lambda: BillingWatermark.objects.filter(
            name=BillingWatermark.ROLLUPS, position__isnull=False
        ).exists(),
        "the second worker finishing the rollups",
        poll=0.1,
    )

    assert stored_buckets("hour") == want  # every bucket once, with exact sums
    daily = UsageRollup.objects.filter(granularity="day")
    totals = daily.aggregate(**{name: Sum(name) for name in SUMS})
    raw = UsageEvent.objects.aggregate(**{name: Sum(name) for name in SUMS[2:]})
    assert totals["requests"] == UsageEvent.objects.count()
    for name in SUMS[2:]:
        assert totals[name] == (raw[name] or 0), name
    from billing.services.rollups import KEY_FIELDS

    keys = daily.values_list("bucket_start", *KEY_FIELDS)
    assert len(set(keys)) == daily.count()  # no day bucket twice
    print(f"\nkilled after {partial} of {len(want)} hourly buckets; the rerun completed them")
