"""Retention: raw events are pruned only past retention and once rolled up and charged;
rollups stay, and pruned periods are never recomputed from what is left."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError

from billing.models import BillingWatermark, UsageEvent, UsageRollup
from billing.periods import Period
from billing.services import (
    invoice_generate,
    rollups_advance,
    usage_charges_advance,
    usage_events_prune,
)
from billing.tasks import prune_usage_events_task
from tests.billing.conftest import EventFactory, Market

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 4, 20, 6, tzinfo=UTC)
JANUARY = datetime(2026, 1, 15, tzinfo=UTC)
MARCH = datetime(2026, 3, 10, tzinfo=UTC)


def test_prune_keeps_what_is_recent_or_not_yet_rolled_up(
    market: Market, event: EventFactory, settings: Any, celery_eager: None
) -> None:
    settings.BILLING_RAW_RETENTION_DAYS = 30
    with time_machine.travel(NOW.replace(hour=5), tick=False):
        old = event(created_at=JANUARY, prompt_tokens=100)
        recent = event(created_at=MARCH, prompt_tokens=100)
        assert usage_events_prune() == 0  # nothing rolled up or charged yet
    with time_machine.travel(NOW, tick=False):
        rollups_advance()
        usage_charges_advance()
        january_rollups = list(UsageRollup.objects.filter(bucket_start__lt=MARCH).values())

    with time_machine.travel(NOW.replace(hour=8), tick=False):
        late = event(created_at=JANUARY, prompt_tokens=7)  # written after the last runs
        assert prune_usage_events_task.delay().get() == 1

    remaining = set(UsageEvent.objects.values_list("pk", flat=True))
    assert remaining == {recent.pk, late.pk}
    assert old.pk not in remaining
    # Retention (30 days) would allow 2026-03-21, but last month stays for its drafts.
    assert BillingWatermark.objects.get(name="pruned_before").position == datetime(
        2026, 3, 1, tzinfo=UTC
    )
    with time_machine.travel(NOW.replace(hour=9), tick=False):
        rollups_advance()  # the late January event cannot be folded into pruned rollups
    assert list(UsageRollup.objects.filter(bucket_start__lt=MARCH).values()) == january_rollups
    with pytest.raises(ValidationError):
        invoice_generate(customer=market.tenant, period=Period.month(2026, 1))


def test_default_retention_keeps_a_year(market: Market, event: EventFactory) -> None:
    with time_machine.travel(NOW.replace(hour=5), tick=False):
        event(created_at=JANUARY, prompt_tokens=100)
    with time_machine.travel(NOW, tick=False):
        rollups_advance()
        usage_charges_advance()
    with time_machine.travel(NOW.replace(hour=10), tick=False):
        assert usage_events_prune() == 0
    assert UsageEvent.objects.count() == 1
