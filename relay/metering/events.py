"""Writing usage events to the database through billing's ``usage_events_insert``: one
prepared INSERT per batch, idempotent."""

from __future__ import annotations

import logging

from django.db import IntegrityError, close_old_connections

from billing.services import usage_events_insert
from relay.metering.records import UsageRecord

logger = logging.getLogger("relay.metering")


def write_events(records: list[UsageRecord]) -> list[tuple[UsageRecord, int]]:
    """Write the records' events (idempotent on ``request_id``); each with its retail cost.

    An event the database refuses (it points at a row that no longer exists) is logged and
    left out; every other is written. Raises when the database cannot be reached.
    """
    close_old_connections()
    rows = [record.to_event_fields() for record in records]
    written = [(r, row["cost_retail_micros"]) for r, row in zip(records, rows, strict=True)]
    try:
        usage_events_insert(rows=rows)
    except IntegrityError:
        written = []
        for record, row in zip(records, rows, strict=True):
            try:
                usage_events_insert(rows=[row])
            except IntegrityError:
                logger.error("usage event %s refused by the database", row["request_id"])
            else:
                written.append((record, row["cost_retail_micros"]))
    return written
