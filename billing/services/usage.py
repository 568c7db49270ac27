"""Usage events: the one service that inserts them, in batches, as the relay records them.

Billing owns the usage event table, so the raw SQL that fills it lives here, beside the
model; the relay's writer calls ``usage_events_insert`` off the request path.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
import psycopg
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from billing.models import UsageEvent


@functools.cache
def _event_table() -> tuple[str, tuple[Any, ...], frozenset[str], frozenset[str]]:
    """The usage event table, its columns' fields, those whose values need adapting to
    the database (dates, JSON; the rest are plain numbers, strings and booleans), and the
    JSON ones."""
    fields = tuple(f for f in UsageEvent._meta.concrete_fields if not f.primary_key)
    adapted = frozenset(
        f.attname for f in fields if f.get_internal_type() in ("DateTimeField", "JSONField")
    )
    json_fields = frozenset(f.attname for f in fields if f.get_internal_type() == "JSONField")
    return UsageEvent._meta.db_table, fields, adapted, json_fields


def usage_events_insert(*, rows: list[dict[str, Any]]) -> None:
    """Insert usage event rows in one transaction, skipping request ids already written.

    The relay's busiest write, and the only writer of new usage events: the relay hands
    it rows built from its usage records (``relay.metering.write_events``). Measured per
    row (``bench/README.md``): Django's ``bulk_create`` spent ~105 us building and
    preparing model instances and quoting every value client-side; a prepared INSERT run
    by psycopg's ``executemany`` over a server-binding cursor, which adapts the values in
    C, spends ~35-50 us. SQLite runs the same statement through Django's cursor.
    """
    table, fields, adapted, json_fields = _event_table()
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
            if postgres and name in json_fields:
                # What JSONField would send, serialized by orjson instead of the json
                # module: half the writer's JSON time (bench/usage_write.py).
                value = Jsonb(value, dumps=orjson.dumps)
            elif name in adapted and not postgres:
                value = f.get_db_prep_save(value, connection)
            values.append(value)
        params.append(values)
    with transaction.atomic():
        if postgres:
            # Django's own wrapper around the server-binding cursor: its error mapping,
            # execute wrappers and query logging still apply.
            raw = psycopg.Cursor(connection.connection)
            wrap = (
                connection.make_debug_cursor
                if connection.queries_logged
                else connection.make_cursor
            )
            with wrap(raw) as cursor:  # type: ignore[arg-type]  # psycopg's cursor, wrapped
                cursor.executemany(sql, params)
        else:
            with connection.cursor() as cursor:
                cursor.executemany(sql, params)
