"""Usage rollups: hourly buckets recomputed from raw events, daily ones from the hours.

Recomputing is idempotent: the wanted rows are computed in full and compared with the
stored ones, and only the differences are written, so a rerun over the same period
writes nothing and a late event changes exactly the rows it belongs to. The periodic job
finds the hours to recompute from the events recorded since its watermark, however old
their request time, so late events are always folded in.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Count, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from billing.models import BillingWatermark, UsageEvent, UsageRollup
from billing.selectors import floor_hour, watermark_margin, watermark_position
from billing.services.common import watermark_lock

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
KEY_FIELDS = ("tenant_id", "reseller_id", "api_key_id", "model", "channel_id", "currency")
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens")
COST_FIELDS = ("cost_retail_micros", "cost_wholesale_micros")
SUM_FIELDS = ("requests", "errors", *TOKEN_FIELDS, *COST_FIELDS)

Key = tuple[Any, ...]


@dataclass(slots=True)
class RollupChanges:
    created: int = 0
    updated: int = 0
    deleted: int = 0

    def add(self, other: RollupChanges) -> None:
        self.created += other.created
        self.updated += other.updated
        self.deleted += other.deleted

    @property
    def total(self) -> int:
        return self.created + self.updated + self.deleted


def floor_day(moment: datetime) -> datetime:
    return floor_hour(moment).replace(hour=0)


def _ceil(moment: datetime, floor: Any, step: timedelta) -> datetime:
    floored = floor(moment)
    return floored if floored == moment else floored + step


class PrunedPeriodError(ValueError):
    """The raw events of the period were pruned: its rollups can no longer be rebuilt."""


@transaction.atomic
def rollup_recompute(*, start: datetime, end: datetime) -> RollupChanges:
    """Recompute the hourly buckets overlapping ``[start, end)`` from the raw events, then
    the daily buckets of the days they fall in from the hourly rows.

    Runs under the rollup lock, so concurrent recomputes never duplicate a bucket.
    Raises PrunedPeriodError for periods whose raw events were pruned.
    """
    start = floor_hour(start)
    end = _ceil(end.astimezone(UTC), floor_hour, HOUR)
    watermark_lock(BillingWatermark.ROLLUPS)
    pruned_before = watermark_position(BillingWatermark.PRUNED_BEFORE)
    if pruned_before is not None and start < pruned_before:
        raise PrunedPeriodError(f"raw events before {pruned_before:%Y-%m-%d} were pruned")
    changes = RollupChanges()
    if end <= start:
        return changes
    hourly = _aggregate(
        UsageEvent.objects.filter(created_at__gte=start, created_at__lt=end),
        TruncHour("created_at", tzinfo=UTC),
        count_requests=True,
    )
    changes.add(_sync(UsageRollup.Granularity.HOUR, start, end, hourly))
    day_start, day_end = floor_day(start), _ceil(end, floor_day, DAY)
    daily = _aggregate(
        UsageRollup.objects.filter(
            granularity=UsageRollup.Granularity.HOUR,
            bucket_start__gte=day_start,
            bucket_start__lt=day_end,
        ),
        TruncDay("bucket_start", tzinfo=UTC),
        count_requests=False,
    )
    changes.add(_sync(UsageRollup.Granularity.DAY, day_start, day_end, daily))
    return changes


def _aggregate(rows: QuerySet[Any], bucket: Any, *, count_requests: bool) -> dict[Key, dict]:
    if count_requests:
        sums: dict[str, Any] = {
            "requests": Count("id"),
            "errors": Count("id", filter=Q(status_code__gte=400)),
        }
    else:
        sums = {"requests": Sum("requests"), "errors": Sum("errors")}
    sums.update({name: Sum(name) for name in (*TOKEN_FIELDS, *COST_FIELDS)})
    grouped = (
        rows.annotate(bucket=bucket)
        .order_by()
        .values("bucket", *KEY_FIELDS)
        .annotate(**{f"sum_{name}": expr for name, expr in sums.items()})
    )
    return {
        (row["bucket"], *(row[name] for name in KEY_FIELDS)): {
            name: row[f"sum_{name}"] or 0 for name in SUM_FIELDS
        }
        for row in grouped
    }


def _sync(
    granularity: str, start: datetime, end: datetime, wanted: dict[Key, dict]
) -> RollupChanges:
    """Make the stored buckets in ``[start, end)`` equal ``wanted``, writing only changes."""
    stored = {
        (row.bucket_start, *(getattr(row, name) for name in KEY_FIELDS)): row
        for row in UsageRollup.objects.filter(
            granularity=granularity, bucket_start__gte=start, bucket_start__lt=end
        )
    }
    changes = RollupChanges()
    stale = [row.pk for key, row in stored.items() if key not in wanted]
    if stale:
        changes.deleted = UsageRollup.objects.filter(pk__in=stale).delete()[0]
    to_create, to_update = [], []
    for key, sums in wanted.items():
        row = stored.get(key)
        if row is None:
            fields = dict(zip(("bucket_start", *KEY_FIELDS), key, strict=True))
            to_create.append(UsageRollup(granularity=granularity, **fields, **sums))
        elif any(getattr(row, name) != value for name, value in sums.items()):
            for name, value in sums.items():
                setattr(row, name, value)
            to_update.append(row)
    UsageRollup.objects.bulk_create(to_create, batch_size=1000)
    UsageRollup.objects.bulk_update(to_update, SUM_FIELDS, batch_size=1000)
    changes.created, changes.updated = len(to_create), len(to_update)
    return changes


def _ranges(hours: Iterable[datetime]) -> Iterator[tuple[datetime, datetime]]:
    """Contiguous runs of hours as ``[start, end)`` ranges."""
    run: tuple[datetime, datetime] | None = None
    for hour in sorted(set(hours)):
        if run is not None and hour == run[1]:
            run = (run[0], hour + HOUR)
            continue
        if run is not None:
            yield run
        run = (hour, hour + HOUR)
    if run is not None:
        yield run


def rollups_advance() -> RollupChanges:
    """The periodic job: recompute every hour holding an event recorded since the last run
    (less the margin for rows committed late), then move the watermark.

    The first run rolls up the whole history.
    """
    now = timezone.now()
    position = watermark_position(BillingWatermark.ROLLUPS)
    events = UsageEvent.objects.all()
    if position is not None:
        events = events.filter(recorded_at__gt=position - watermark_margin())
    hours = [
        floor_hour(moment)
        for moment in events.annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .order_by()
        .values_list("hour", flat=True)
        .distinct()
    ]
    pruned_before = watermark_position(BillingWatermark.PRUNED_BEFORE)
    if pruned_before is not None:
        late = [hour for hour in hours if hour < pruned_before]
        if late:
            logger.warning("%d hours of usage arrived after their period was pruned", len(late))
        hours = [hour for hour in hours if hour >= pruned_before]
    changes = RollupChanges()
    for start, end in _ranges(hours):
        changes.add(rollup_recompute(start=start, end=end))
    with transaction.atomic():
        watermark = watermark_lock(BillingWatermark.ROLLUPS)
        if watermark.position is None or watermark.position < now:
            watermark.position = now
            watermark.save(update_fields=["position", "updated_at"])
    return changes
