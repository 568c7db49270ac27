"""Usage events: the one service that inserts them, in batches, as the relay records them.

Billing owns the usage event table, so the raw SQL that fills it lives here, beside the
model; the relay's writer calls ``usage_events_insert`` off the request path.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
from django.db import IntegrityError, connection, transaction
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
    it rows built from its usage records (``relay.metering.write_events``). On PostgreSQL
    the batch goes in by ``COPY``; COPY has no ``ON CONFLICT``, so a batch holding a
    request id already written (a batch delivered again after its writer died before
    confirming it) is rolled back and inserted again by a prepared ``INSERT ... ON
    CONFLICT DO NOTHING``. Measured per row at batches of 50-500 (``bench/usage_write.py``,
    ``bench/README.md``): the prepared INSERT over psycopg's ``executemany`` cost the
    server ~100-120 us and the relay ~30-55 us; COPY costs the server ~26-34 us and the
    relay ~14-20 us (with the values built as ``_params`` does). Django's ``bulk_create``,
    before both, cost the relay ~105-145 us. SQLite runs the INSERT through Django's
    cursor.
    """
    table, fields, _, _ = _event_table()
    postgres = connection.vendor == "postgresql"
    params = _params(rows)
    if not postgres:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.executemany(_insert_sql(table, fields), params)
        return
    try:
        with transaction.atomic():
            _copy(table, fields, params)
    except IntegrityError:
        # A request id already written (or a row pointing at one that is gone: the
        # INSERT raises that again, for the caller to sort out row by row).
        with transaction.atomic():
            _insert_prepared(_insert_sql(table, fields), params)


def _params(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Each row's values in column order, defaults filled in, adapted for the database.

    Column by column with a comprehension, then only the columns that need adapting:
    1.6 us a row against 4.8 for a loop testing every column (timed directly)."""
    _, fields, adapted, json_fields = _event_table()
    defaults = {f.attname: f.get_default() for f in fields}
    defaults["recorded_at"] = timezone.now()
    columns = [(f.attname, defaults[f.attname]) for f in fields]
    adapt: list[tuple[int, Callable[[Any], Any]]]
    if connection.vendor == "postgresql":
        adapt = [(i, _jsonb) for i, f in enumerate(fields) if f.attname in json_fields]
    else:
        adapt = [
            (i, functools.partial(f.get_db_prep_save, connection=connection))
            for i, f in enumerate(fields)
            if f.attname in adapted
        ]
    params = []
    for row in rows:
        get = row.get
        values = [get(name, default) for name, default in columns]
        for i, adapter in adapt:
            values[i] = adapter(values[i])
        params.append(values)
    return params


def _jsonb(value: Any) -> Jsonb:
    """What JSONField would send, serialized by orjson instead of the json module: half
    the writer's JSON time (bench/usage_write.py)."""
    return Jsonb(value, dumps=_json_dumps)


def _json_dumps(value: Any) -> bytes:
    """orjson's JSON, or the json module's for what orjson refuses (an integer beyond 64
    bits, which JSONB stores): no value can make the batch unwritable."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()


def _insert_sql(table: str, fields: tuple[Any, ...]) -> str:
    quote = connection.ops.quote_name
    # Only quoted model metadata and placeholders go into the text; values are parameters.
    return (
        f"INSERT INTO {quote(table)} ({', '.join(quote(f.column) for f in fields)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(fields))}) ON CONFLICT (request_id) DO NOTHING"
    )


def _copy(table: str, fields: tuple[Any, ...], params: list[list[Any]]) -> None:
    """``COPY`` the rows in, with Django's error mapping (a duplicate request id raises
    ``IntegrityError``, a lost connection ``OperationalError``) and query log."""
    quote = connection.ops.quote_name
    sql = f"COPY {quote(table)} ({', '.join(quote(f.column) for f in fields)}) FROM STDIN"
    started = time.monotonic()
    with (
        connection.wrap_database_errors,
        psycopg.Cursor(connection.connection) as raw,
        raw.copy(sql) as copy,
    ):
        for values in params:
            copy.write_row(values)
    if connection.queries_logged:
        connection.queries_log.append(
            {"sql": f"{sql} -- {len(params)} rows", "time": f"{time.monotonic() - started:.3f}"}
        )


def _insert_prepared(sql: str, params: list[list[Any]]) -> None:
    """A prepared INSERT run by psycopg's ``executemany`` over a server-binding cursor
    (which adapts the values in C), inside Django's own wrapper around that cursor: its
    error mapping, execute wrappers and query logging still apply."""
    raw = psycopg.Cursor(connection.connection)
    wrap = connection.make_debug_cursor if connection.queries_logged else connection.make_cursor
    with wrap(raw) as cursor:  # type: ignore[arg-type]  # psycopg's cursor, wrapped
        cursor.executemany(sql, params)


def usage_event_row_cleaned(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` with what a database refuses made writable: NUL characters (which
    PostgreSQL's text and JSON refuse) replaced by U+FFFD in text and JSON, text cut to
    its column's length, whole numbers held to their column's range.

    For an event filled from a channel's answer with such values (an error code with a
    NUL, a token count beyond any real one): it is written and can be seen, rather than
    refused, or, worse, kept failing the batch it is in.
    """
    _, fields, _, json_fields = _event_table()
    ranges = connection.ops.integer_field_ranges
    cleaned = dict(row)
    for f in fields:
        name = f.attname
        if name not in cleaned:
            continue
        value = cleaned[name]
        if name in json_fields:
            cleaned[name] = _json_cleaned(value)
        elif isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
            cleaned[name] = value[: f.max_length] if f.max_length else value
        elif isinstance(value, int) and not isinstance(value, bool):
            low, high = ranges.get(f.get_internal_type(), (None, None))
            if low is not None and high is not None:
                cleaned[name] = min(max(value, low), high)
    return cleaned


def _json_cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_json_cleaned(k): _json_cleaned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_cleaned(v) for v in value]
    return value
