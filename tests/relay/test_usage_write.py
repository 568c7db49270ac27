"""Writing usage events: every field lands as the record says (through COPY's escaping
too), a retry writes no twin, one event the database refuses does not keep the others
out, and one holding values it cannot store is written cleaned. Runs on SQLite and on
PostgreSQL (the writer builds its own COPY or INSERT rather than model instances)."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing.models import UsageEvent
from billing.pricing import tenant_price_table
from relay.metering import Usage, UsageRecord, write_events
from relay.translate import messages
from tests.relay.conftest import PUBLIC_MODEL, Gateway, fail_to_build


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


def test_text_that_copy_escapes_arrives_unchanged(gateway: Gateway) -> None:
    # COPY's text format gives tab, newline, backslash and \\N meanings of their own.
    awkward = "a\tb\nc\\d \\N é 😀 \r"
    record = _record(
        gateway,
        model=awkward,
        upstream_model=awkward[::-1],
        error_code="\\N",
        channel_id=None,
        upstream_latency_ms=None,
        completed=False,
        attempts=[{"channel": None, "error": awkward, "nested": {"k": [1, "\\N", None]}}],
    )

    write_events([record])

    event = UsageEvent.objects.get(request_id=record.request_id)
    for name, value in record.to_event_fields().items():
        assert getattr(event, name) == value, name


def test_an_event_written_again_has_no_twin(gateway: Gateway) -> None:
    records = [_record(gateway) for _ in range(3)]
    write_events(records[:2])
    # A batch delivered again after an ambiguous failure; its copy of the first event
    # differs, and the row already written stays as it was.
    records[0] = dataclasses.replace(records[0], total_latency_ms=999)
    written = write_events(records)

    ids = [r.request_id for r in records]
    assert UsageEvent.objects.filter(request_id__in=ids).count() == 3
    assert UsageEvent.objects.get(request_id=ids[0]).total_latency_ms == 12
    assert [record for record, _ in written] == records


@pytest.mark.skipif(connection.vendor != "postgresql", reason="COPY is PostgreSQL's")
def test_a_new_batch_goes_in_by_one_copy(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    statements: list[str] = []
    original_copy = psycopg.Cursor.copy

    def copy(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        statements.append(str(statement))
        return original_copy(self, statement, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "copy", copy)
    records = [_record(gateway) for _ in range(5)]
    with CaptureQueriesContext(connection) as queries:
        write_events(records)

    assert len(statements) == 1 and statements[0].startswith("COPY")
    assert not [q for q in queries.captured_queries if q["sql"].startswith("INSERT")]
    assert [q["sql"] for q in queries.captured_queries if q["sql"].startswith("COPY")]
    ids = [r.request_id for r in records]
    assert UsageEvent.objects.filter(request_id__in=ids).count() == 5


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


def test_values_the_database_cannot_store_are_written_cleaned(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    good = [_record(gateway) for _ in range(2)]
    awkward = _record(
        gateway,
        error_code="nul\x00code",
        upstream_model="m" * 500,
        attempts=[{"channel": gateway.channel.pk, "error": "bad\x00", "k\x00": 1}],
        # Beyond any integer column (and, priced, beyond a 64-bit cost): refused by
        # PostgreSQL and by SQLite's driver alike.
        usage=Usage(prompt_tokens=2**63, completion_tokens=5),
    )

    with caplog.at_level(logging.WARNING, logger="relay.metering"):
        written = write_events([good[0], awkward, good[1]])

    assert [record for record, _ in written] == [good[0], awkward, good[1]]
    event = UsageEvent.objects.get(request_id=awkward.request_id)
    assert event.prompt_tokens == 2**31 - 1
    assert event.cost_retail_micros == 2**63 - 1
    assert event.completion_tokens == 5
    assert f"usage event {awkward.request_id} written with values" in caplog.text
    # Cleaned whole, alike on both databases, although SQLite would store these as sent.
    assert event.error_code == "nul\ufffdcode"
    assert event.upstream_model == "m" * 200
    assert event.attempts == [{"channel": gateway.channel.pk, "error": "bad\ufffd", "k\ufffd": 1}]
    # The cost written is the one handed back for the money held against the request.
    assert dict((r.request_id, cost) for r, cost in written)[awkward.request_id] == (
        event.cost_retail_micros
    )
    assert UsageEvent.objects.filter(request_id__in=[r.request_id for r in good]).count() == 2


def test_a_count_beyond_any_real_one_is_held_to_the_column_maximum() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 2**63,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": -3},
        }
    )
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens) == (
        2**31 - 1,
        7,
        0,
    )
    canonical = messages.usage_to_canonical(
        {"input_tokens": 2**63, "cache_read_input_tokens": 2**63, "output_tokens": 2**64 - 1}
    )
    usage = Usage.from_canonical(canonical)
    assert usage is not None
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens) == (
        2**31 - 1,
        2**31 - 1,
        2**31 - 1,
    )


def test_a_record_whose_event_cannot_be_built_is_set_aside_and_the_rest_written(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fault in building one event (a bug in this code, not the database's refusal) used
    # to fail the whole batch, and the writer retried it for ever: no one's usage was
    # written again.
    records = [_record(gateway) for _ in range(3)]
    broken = records[1]
    fail_to_build(monkeypatch, broken.request_id)
    aside: list[tuple[str, str]] = []

    written = write_events(records, lambda record, exc: aside.append((record.request_id, str(exc))))

    assert [record for record, _ in written] == [records[0], records[2]]
    assert aside == [(broken.request_id, "a fault in the cost code")]
    stored = set(UsageEvent.objects.values_list("request_id", flat=True))
    assert {records[0].request_id, records[2].request_id} <= stored
    assert broken.request_id not in stored

    # Without a dead-letter list (the embedded writer), the record goes to the log whole.
    again = _record(gateway, request_id=broken.request_id)
    with caplog.at_level(logging.ERROR, logger="relay.metering"):
        assert write_events([again]) == []
    logged = [r.getMessage() for r in caplog.records if "set aside:" in r.getMessage()]
    assert len(logged) == 1
    assert UsageRecord.from_json(logged[0].split("set aside: ", 1)[1].encode()).request_id == (
        broken.request_id
    )
