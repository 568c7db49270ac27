"""Writing usage events: every field lands as the record says, a retry writes no twin, and
one event the database refuses does not keep the others out. Runs on SQLite and on
PostgreSQL (the writer builds its own INSERT rather than model instances)."""

from __future__ import annotations

import logging
import uuid

import pytest
from django.utils import timezone

from billing.models import UsageEvent
from billing.pricing import tenant_price_table
from relay.metering import Usage, UsageRecord, write_events
from tests.relay.conftest import PUBLIC_MODEL, Gateway


def _record(gateway: Gateway, **extra: object) -> UsageRecord:
    fields: dict[str, object] = {
        "request_id": f"write-{uuid.uuid4().hex}",
        "created_at": timezone.now(),
        "tenant_id": gateway.tenant.pk,
        "api_key_id": gateway.api_key.pk,
        "model": PUBLIC_MODEL,
        "stream": True,
        "status_code": 200,
        "total_latency_ms": 12,
        "channel_id": gateway.channel.pk,
        "upstream_model": "upstream-name",
        "upstream_latency_ms": 7,
        "attempts": [{"channel": gateway.channel.pk, "status": 200, "latency_ms": 7}],
        "usage": Usage(prompt_tokens=1200, completion_tokens=340, cached_tokens=200),
        "price": tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL],
    }
    fields.update(extra)
    return UsageRecord(**fields)  # type: ignore[arg-type]


def test_every_field_is_written_as_the_record_says(gateway: Gateway) -> None:
    record = _record(gateway)
    before = timezone.now()

    [(written, cost)] = write_events([record])

    event = UsageEvent.objects.get(request_id=record.request_id)
    expected = record.to_event_fields()
    for name, value in expected.items():
        assert getattr(event, name) == value, name
    assert written is record
    assert cost == expected["cost_retail_micros"] > 0
    assert event.recorded_at >= before
    assert event.attempts == [{"channel": gateway.channel.pk, "status": 200, "latency_ms": 7}]


def test_an_event_written_again_has_no_twin(gateway: Gateway) -> None:
    records = [_record(gateway) for _ in range(3)]
    write_events(records[:2])
    write_events(records)  # a batch retried after an ambiguous failure

    ids = [r.request_id for r in records]
    assert UsageEvent.objects.filter(request_id__in=ids).count() == 3


def test_an_event_the_database_refuses_leaves_the_rest_written(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    good = [_record(gateway) for _ in range(2)]
    orphan = _record(gateway, api_key_id=gateway.api_key.pk + 10_000)  # no such key

    with caplog.at_level(logging.ERROR, logger="relay.metering"):
        written = write_events([good[0], orphan, good[1]])

    assert [record for record, _ in written] == good
    stored = set(UsageEvent.objects.values_list("request_id", flat=True))
    assert {r.request_id for r in good} <= stored
    assert orphan.request_id not in stored
    assert f"usage event {orphan.request_id} refused by the database" in caplog.text
