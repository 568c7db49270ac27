"""Rollups: equal to raw sums, idempotent on rerun, and late events are folded in."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from billing.models import BillingWatermark, UsageEvent, UsageRollup
from billing.services import rollup_recompute, rollups_advance
from billing.services.rollups import KEY_FIELDS, SUM_FIELDS, PrunedPeriodError
from tests.billing.conftest import MARCH, EventFactory, Market, generate_month

pytestmark = pytest.mark.django_db

APRIL_2 = datetime(2026, 4, 2, 9, tzinfo=UTC)


def raw_sums(granularity: str) -> dict[tuple[Any, ...], dict[str, int]]:
    """The rollups computed in Python, straight from the raw events."""
    sums: dict[tuple[Any, ...], dict[str, int]] = defaultdict(lambda: dict.fromkeys(SUM_FIELDS, 0))
    for event in UsageEvent.objects.all():
        start = event.created_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if granularity == "day":
            start = start.replace(hour=0)
        row = sums[(start, *(getattr(event, name) for name in KEY_FIELDS))]
        row["requests"] += 1
        row["errors"] += event.status_code >= 400
        for name in SUM_FIELDS[2:]:
            row[name] += getattr(event, name)
    return dict(sums)


def stored(granularity: str) -> dict[tuple[Any, ...], dict[str, int]]:
    return {
        (row.bucket_start, *(getattr(row, name) for name in KEY_FIELDS)): {
            name: getattr(row, name) for name in SUM_FIELDS
        }
        for row in UsageRollup.objects.filter(granularity=granularity)
    }


def snapshot() -> list[dict[str, Any]]:
    return list(UsageRollup.objects.order_by("id").values())


def test_rollups_equal_raw_sums(market: Market) -> None:
    generate_month(market)

    changes = rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)

    assert changes.created == UsageRollup.objects.count() > 0
    assert stored("hour") == raw_sums("hour")
    assert stored("day") == raw_sums("day")
    totals = UsageEvent.objects.all()
    assert sum(r["requests"] for r in stored("day").values()) == totals.count()
    assert sum(r["cost_retail_micros"] for r in stored("hour").values()) == sum(
        e.cost_retail_micros for e in totals
    )


def test_rerunning_changes_nothing(market: Market) -> None:
    generate_month(market)
    rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    before = snapshot()

    again = rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    partial = rollup_recompute(
        start=datetime(2026, 3, 9, 13, 30, tzinfo=UTC), end=datetime(2026, 3, 9, 15, tzinfo=UTC)
    )

    assert again.total == partial.total == 0
    assert snapshot() == before  # same rows, same ids, same sums


def test_periodic_job_folds_in_late_events(market: Market, event: EventFactory) -> None:
    generate_month(market, count=120)
    with time_machine.travel(APRIL_2, tick=False):
        first = rollups_advance()  # the first run rolls up the whole history
        assert first.created > 0
        assert stored("hour") == raw_sums("hour")
        before = snapshot()
        assert rollups_advance().total == 0  # nothing new: nothing written

    # An event of March 10 written only now (a relay that was cut off from the database).
    with time_machine.travel(APRIL_2 + timedelta(hours=3), tick=False):
        late = event(
            tenant=market.direct_tenant,
            created_at=datetime(2026, 3, 10, 8, 20, tzinfo=UTC),
            prompt_tokens=1234,
            completion_tokens=56,
        )
        changes = rollups_advance()

    assert late.recorded_at > late.created_at
    assert stored("hour") == raw_sums("hour")
    assert stored("day") == raw_sums("day")
    # Just the late event's hour and day rows changed (or appeared).
    assert changes.total == 2
    unchanged = [row for row in snapshot() if row in before]
    assert len(unchanged) == len(before) - (changes.updated)


def test_events_after_the_watermark_margin_are_seen_again(
    market: Market, event: EventFactory, settings: Any
) -> None:
    """A row built before a run but committed after it is caught by the next run."""
    settings.BILLING_WATERMARK_MARGIN_SECONDS = 300
    with time_machine.travel(APRIL_2, tick=False):
        rollups_advance()
    # Built (recorded_at) a minute before the watermark, committed after the run:
    with time_machine.travel(APRIL_2 - timedelta(minutes=1), tick=False):
        event(created_at=datetime(2026, 3, 30, tzinfo=UTC), prompt_tokens=10)
    with time_machine.travel(APRIL_2 + timedelta(minutes=5), tick=False):
        rollups_advance()
    assert stored("hour") == raw_sums("hour")


def test_pruned_periods_cannot_be_recomputed(market: Market, event: EventFactory) -> None:
    event(prompt_tokens=10)
    rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    BillingWatermark.objects.create(name=BillingWatermark.PRUNED_BEFORE, position=MARCH.end_at)
    UsageEvent.objects.all().delete()

    with pytest.raises(PrunedPeriodError):
        rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    assert UsageRollup.objects.count() == 2  # the rollups outlive their raw events


def test_concurrent_recomputes_write_each_bucket_once(market: Market, event: EventFactory) -> None:
    """Recomputes serialise on the rollup lock; on SQLite writers serialise anyway, so this
    checks that interleaved calls converge on the same single row per bucket."""
    event(prompt_tokens=10)
    rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    event(prompt_tokens=5)
    rollup_recompute(start=datetime(2026, 3, 10, tzinfo=UTC), end=datetime(2026, 3, 11, tzinfo=UTC))
    assert UsageRollup.objects.filter(granularity="hour").count() == 1
    assert UsageRollup.objects.get(granularity="day").requests == 2
