"""Writing usage events to the database: one prepared INSERT per batch, idempotent."""

from __future__ import annotations

import functools
import logging
from typing import Any

from django.db import IntegrityError, close_old_connections
from django.utils import timezone

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
        _insert_events(rows)
    except IntegrityError:
        written = []
        for record, row in zip(records, rows, strict=True):
            try:
                _insert_events([row])
            except IntegrityError:
                logger.error("usage event %s refused by the database", row["request_id"])
            else:
                written.append((record, row["cost_retail_micros"]))
    return written


@functools.cache
def _event_table() -> tuple[str, tuple[Any, ...], frozenset[str]]:
    """The usage event table, its columns' fields, and those whose values need adapting
    to the database (dates, JSON); the rest are plain numbers, strings and booleans."""
    from billing.models import UsageEvent

    fields = tuple(f for f in UsageEvent._meta.concrete_fields if not f.primary_key)
    adapted = frozenset(
        f.attname for f in fields if f.get_internal_type() in ("DateTimeField", "JSONField")
    )
    return UsageEvent._meta.db_table, fields, adapted


def _insert_events(rows: list[dict[str, Any]]) -> None:
    """Insert usage event rows in one transaction, skipping request ids already written.

    This is the relay's busiest write. Measured per row (``bench/README.md``): Django's
    ``bulk_create`` spent ~105 us building and preparing model instances and quoting
    every value client-side; a prepared INSERT run by psycopg's ``executemany`` over a
    server-binding cursor, which adapts the values in C, spends ~35-50 us. SQLite runs
    the same statement through Django's cursor.
    """
    from django.db import connection, transaction

    table, fields, adapted = _event_table()
    quote = connection.ops.quote_name
    # Only quoted model metadata and placeholders go into the text; values are parameters.
    sql = (
        f"INSERT INTO {quote(table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT (request_id) DO NOTHING"
    )
    defaults = {f.attname: f.get_default() for f in fields}
    defaults["recorded_at"] = timezone.now()
    postgres = connection.vendor == "postgresql"
    params = []
    for row in rows:
        values = []
        for f in fields:
            name = f.attname
            value = row.get(name, defaults[name])
            if name in adapted and (not postgres or f.get_internal_type() == "JSONField"):
                value = f.get_db_prep_save(value, connection)
            values.append(value)
        params.append(values)
    with transaction.atomic():
        if postgres:
            import psycopg

            # Django's own wrapper around the server-binding cursor: its error mapping,
            # execute wrappers and query logging still apply.
            raw = psycopg.Cursor(connection.connection)
            wrap = (
                connection.make_debug_cursor
                if connection.queries_logged
                else connection.make_cursor
            )
            with wrap(raw) as cursor:
                cursor.executemany(sql, params)
        else:
            with connection.cursor() as cursor:
                cursor.executemany(sql, params)
