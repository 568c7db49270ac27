"""The hot path: no SQL in steady state, changes seen within seconds, bytes streamed as
they arrive, usage written after the response, disconnects closing the upstream."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from django.db.backends import utils as db_utils

from billing.models import UsageEvent
from portal.models import ApiKey
from relay.app import RelayApp
from relay.exchange import Exchange
from relay.server import HttpToolsProtocol
from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events
from tests.servers import serve_in_thread


class StatementLog:
    """Every SQL statement run by the server's threads (not the test's own) while recording."""

    def __init__(self) -> None:
        self.statements: list[str] = []
        self.recording = False
        self._lock = threading.Lock()
        self._test_thread = threading.current_thread()

    def add(self, sql: str) -> None:
        if self.recording and threading.current_thread() is not self._test_thread:
            with self._lock:
                self.statements.append(sql)


@pytest.fixture
def sql_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[StatementLog]:
    log = StatementLog()
    original_execute = db_utils.CursorWrapper._execute
    original_executemany = db_utils.CursorWrapper._executemany

    def execute(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        log.add(sql)
        return original_execute(self, sql, *args, **kwargs)

    def executemany(self: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
        log.add(sql)
        return original_executemany(self, sql, *args, **kwargs)

    # The usage writer's COPY (PostgreSQL) goes to psycopg's cursor, not Django's.
    original_copy = psycopg.Cursor.copy

    def copy(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Any:
        log.add(str(statement))
        return original_copy(self, statement, *args, **kwargs)

    monkeypatch.setattr(db_utils.CursorWrapper, "_execute", execute)
    monkeypatch.setattr(db_utils.CursorWrapper, "_executemany", executemany)
    monkeypatch.setattr(psycopg.Cursor, "copy", copy)
    yield log


def test_steady_state_requests_make_no_sql_query(gateway: Gateway, sql_log: StatementLog) -> None:
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert gateway.client.get("/v1/models").status_code == 200
    assert len(usage_events(1)) == 1

    sql_log.recording = True
    for index in range(20):
        stream = index % 2 == 1
        response = gateway.client.post("/v1/chat/completions", json=chat_body(stream=stream))
        assert response.status_code == 200
    assert gateway.client.get("/v1/models").status_code == 200
    assert len(usage_events(21)) == 21
    sql_log.recording = False

    writes = [s for s in sql_log.statements if "billing_usageevent" in s]
    others = [
        s
        for s in sql_log.statements
        if s not in writes and not s.upper().startswith(("BEGIN", "COMMIT", "SAVEPOINT", "RELEASE"))
    ]
    assert others == [], "the relay queried the database on the hot path"
    assert writes, "the usage events were not written at all"
    assert all(s.upper().startswith(("INSERT", "COPY")) for s in writes)


def test_revocation_reaches_the_relay_within_seconds(gateway: Gateway) -> None:
    assert gateway.client.get("/v1/models").status_code == 200  # cached now
    key = ApiKey.objects.get(pk=gateway.api_key.pk)
    key.status = ApiKey.Status.REVOKED
    key.save()
    revoked_at = time.monotonic()

    while gateway.client.get("/v1/models").status_code == 200:
        assert time.monotonic() - revoked_at < 5, "revocation not seen within 5 seconds"
        time.sleep(0.05)
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 401


def test_usage_is_written_after_the_response(gateway: Gateway, relay_settings: Any) -> None:
    relay_settings.RELAY_USAGE_FLUSH_SECONDS = 1.5
    response = gateway.client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200
    assert not UsageEvent.objects.exists(), "the response waited for the usage write"
    (event,) = usage_events(1)
    assert event.request_id == response.headers["x-request-id"]


def test_stream_chunks_reach_the_client_as_the_upstream_sends_them(
    gateway: Gateway, sim: Simulator
) -> None:
    gateway.channel.base_url = sim.channel_url("tps=5", "tokens=10")
    gateway.channel.save()
    gateway.caught_up()
    started = time.monotonic()
    arrivals = []
    with gateway.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        for line in response.iter_lines():
            if '"content":"tok' in line or '"content":" tok' in line:
                arrivals.append(time.monotonic() - started)

    assert len(arrivals) == 10
    # The upstream takes ~2 s to send ten tokens, one every 0.2 s; none waits for the next.
    assert arrivals[-1] - arrivals[0] > 1.2
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(gap > 0.1 for gap in gaps) >= 7


@pytest.mark.parametrize("server", ["uvicorn", "relay"])
def test_a_client_disconnect_closes_the_upstream_and_records_what_was_delivered(
    gateway: Gateway,
    sim: Simulator,
    relay_app: RelayApp,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    server: str,
) -> None:
    # Under uvicorn's own protocol a watcher task waits for the ASGI disconnect; under the
    # relay's (production) protocol the connection's loss cancels the work directly.
    watchers: list[object] = []
    watch = Exchange._cancel_on_disconnect

    def counted(self: Exchange, task: Any) -> Any:
        watchers.append(task)
        return watch(self, task)

    monkeypatch.setattr(Exchange, "_cancel_on_disconnect", counted)
    url = gateway.url
    if server == "relay":
        url, stop = serve_in_thread(relay_app, http=HttpToolsProtocol)
        request.addfinalizer(stop)
    gateway.channel.base_url = sim.channel_url("tps=20", "tokens=200")
    gateway.channel.save()
    gateway.caught_up()
    received = 0
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST",
            url + "/v1/chat/completions",
            json=chat_body(stream=True),
            headers={"Authorization": f"Bearer {gateway.secret}"},
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if '"content":"tok' in line or '"content":" tok' in line:
                received += 1
                if received == 5:
                    break  # leaving the block closes the connection mid-stream

    deadline = time.monotonic() + 5
    while not any(p["disconnects"] for p in sim.stats()["by_prefix"].values()):
        assert time.monotonic() < deadline, "the upstream request was never closed"
        time.sleep(0.05)
    assert sim.stats()["in_flight"] == 0
    (event,) = usage_events(1)
    assert event.request_id == request_id
    assert not event.completed
    assert event.error_code == "client_disconnected"
    assert event.estimated
    assert 5 <= event.completion_tokens < 200
    assert len(watchers) == (0 if server == "relay" else 1)
