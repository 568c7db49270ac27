"""Retention: raw usage events are pruned once old; rollups and invoices stay for ever."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from billing.models import BillingWatermark, UsageEvent
from billing.periods import Period
from billing.selectors import watermark_margin, watermark_position
from billing.services.common import watermark_lock
from billing.services.rollups import floor_day

PRUNE_BATCH_SIZE = 5000


def retention_cutoff(now: datetime | None = None) -> datetime | None:
    """Events that arrived before this may be deleted, or None while nothing may be.

    The cutoff is a UTC midnight ``BILLING_RAW_RETENTION_DAYS`` ago, but never later than
    the start of last month (whose drafts may still be regenerated) nor than what the
    rollup and usage-charge jobs have finished with.
    """
    now = now or timezone.now()
    days = settings.BILLING_RAW_RETENTION_DAYS
    rolled = watermark_position(BillingWatermark.ROLLUPS)
    charged = watermark_position(BillingWatermark.USAGE_CHARGES)
    if rolled is None or charged is None:
        return None
    done = min(rolled, charged) - watermark_margin()
    cutoff = min(
        floor_day(now - timedelta(days=days)),
        Period.containing(now).previous().start_at,
        floor_day(done),
    )
    return cutoff


def usage_events_prune(*, now: datetime | None = None) -> int:
    """Delete raw events older than the retention cutoff that the rollup and usage-charge
    jobs have already seen, in batches; returns how many were deleted.

    The cutoff is recorded first (as the PRUNED_BEFORE watermark), so rollups and
    invoices of the pruned period are never recomputed from what remains.
    """
    cutoff = retention_cutoff(now)
    if cutoff is None:
        return 0
    with transaction.atomic():
        watermark = watermark_lock(BillingWatermark.PRUNED_BEFORE)
        if watermark.position is None or watermark.position < cutoff:
            watermark.position = cutoff
            watermark.save(update_fields=["position", "updated_at"])
    rolled = watermark_position(BillingWatermark.ROLLUPS)
    charged = watermark_position(BillingWatermark.USAGE_CHARGES)
    assert rolled is not None and charged is not None  # retention_cutoff checked them
    seen_before = min(rolled, charged) - watermark_margin()
    doomed = UsageEvent.objects.filter(created_at__lt=cutoff, recorded_at__lt=seen_before)
    deleted = 0
    while True:
        with transaction.atomic():
            ids = list(doomed.order_by("id").values_list("id", flat=True)[:PRUNE_BATCH_SIZE])
            if not ids:
                return deleted
            deleted += UsageEvent.objects.filter(pk__in=ids).delete()[0]
