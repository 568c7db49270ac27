"""Writing usage events to the database through billing's ``usage_events_insert``: one
``COPY`` (PostgreSQL) or prepared INSERT per batch, idempotent."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import DataError, IntegrityError, close_old_connections

from billing.services import usage_event_row_cleaned, usage_events_insert
from relay.metering.records import UsageRecord

logger = logging.getLogger("relay.metering")

# What the database (or its driver: SQLite's for a number beyond 64 bits) raises for a
# value it cannot store.
_UNSTORABLE = (DataError, OverflowError)

# Takes a record whose event could not be built, and why.
SetAside = Callable[[UsageRecord, Exception], None]


def write_events(
    records: list[UsageRecord], set_aside: SetAside | None = None
) -> list[tuple[UsageRecord, int]]:
    """Write the records' events (idempotent on ``request_id``); each with its retail cost.

    An event the database refuses (it points at a row that no longer exists) is logged and
    left out; one holding a value it cannot store is written with that value cleaned
    (``usage_event_row_cleaned``); every other is written as it is. A record whose event
    cannot even be built (a fault in this code, not the database's) is handed to
    ``set_aside`` (default: logged whole) and the others are written: one record must not
    keep every tenant's usage out by failing its batch for ever. Raises when the database
    cannot be reached.
    """
    close_old_connections()
    try:
        rows = [record.to_event_fields() for record in records]
    except Exception:
        records, rows = _buildable(records, set_aside or _log_set_aside)
        if not records:
            return []
    try:
        usage_events_insert(rows=rows)
    except (IntegrityError, *_UNSTORABLE):
        # One by one, so that one event cannot keep the batch out (and the queue stuck).
        written = []
        for record, row in zip(records, rows, strict=True):
            cost = _write_one(row)
            if cost is not None:
                written.append((record, cost))
        return written
    return [(r, row["cost_retail_micros"]) for r, row in zip(records, rows, strict=True)]


def _write_one(row: dict[str, Any]) -> int | None:
    """Write one event; its retail cost as written, or None when the database refused it."""
    try:
        usage_events_insert(rows=[row])
        return int(row["cost_retail_micros"])
    except IntegrityError:
        pass
    except _UNSTORABLE as exc:
        cleaned = usage_event_row_cleaned(row)
        try:
            usage_events_insert(rows=[cleaned])
        except (IntegrityError, *_UNSTORABLE):
            pass
        else:
            logger.warning(
                "usage event %s written with values the database refused cleaned (%s)",
                row["request_id"],
                exc,
            )
            return int(cleaned["cost_retail_micros"])
    logger.error("usage event %s refused by the database", row["request_id"])
    return None


def _buildable(
    records: list[UsageRecord], set_aside: SetAside
) -> tuple[list[UsageRecord], list[dict[str, Any]]]:
    """The records whose events can be built, with their rows; the others set aside."""
    kept, rows = [], []
    for record in records:
        try:
            row = record.to_event_fields()
        except Exception as exc:
            logger.exception("usage event %s could not be built; set aside", record.request_id)
            set_aside(record, exc)
        else:
            kept.append(record)
            rows.append(row)
    return kept, rows


def _log_set_aside(record: UsageRecord, exc: Exception) -> None:
    """Without Redis (the embedded mode) there is no dead-letter list: the record goes to
    the log whole."""
    try:
        whole = record.to_json().decode()
    except Exception:
        whole = repr(record)
    logger.error("usage record set aside: %s", whole)
