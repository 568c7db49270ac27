"""Slow clients cannot hold a relay's connections or a key's concurrency (issue 11,
finding 6), against a real relay process served with the production protocol
(``relay.server``), on the test's PostgreSQL and this run's Redis namespace."""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import orjson
import pytest
from django.conf import settings

from tests.relay.conftest import Gateway, Simulator
from tests.servers import RelayProcess, database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 2.0
FAST_PATH_SECONDS = 0.3
# Generous: the machine running the tests may be loaded.
SLACK = 4.0


@pytest.fixture
def relay(gateway: Gateway) -> Iterator[RelayProcess]:
    process = RelayProcess(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
            "RELAY_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "RELAY_BODY_TIMEOUT": str(BODY_TIMEOUT),
            "RELAY_BODY_FAST_PATH_SECONDS": str(FAST_PATH_SECONDS),
        }
    )
    yield process
    process.stop()


def _connect(relay: RelayProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", relay.port), timeout=30)


def _read_until_closed(sock: socket.socket, seconds: float) -> tuple[bytes, float]:
    """Everything the relay sends until it closes the connection, and when it closed."""
    started = time.monotonic()
    answer = b""
    while True:
        left = started + seconds - time.monotonic()
        assert left > 0, f"still open after {seconds} s; got {answer[:200]!r}"
        if not select.select([sock], [], [], left)[0]:
            continue
        chunk = sock.recv(65536)
        if not chunk:
            return answer, time.monotonic() - started
        answer += chunk


def _read_all_until_closed(
    sockets: list[socket.socket], seconds: float, started: float
) -> list[tuple[bytes, float]]:
    """``_read_until_closed`` for several connections at once."""
    answers = {sock: b"" for sock in sockets}
    closed: dict[socket.socket, float] = {}
    while len(closed) < len(sockets):
        left = started + seconds - time.monotonic()
        assert left > 0, f"{len(sockets) - len(closed)} still open after {seconds} s"
        ready, _, _ = select.select([s for s in sockets if s not in closed], [], [], left)
        for sock in ready:
            chunk = sock.recv(65536)
            if chunk:
                answers[sock] += chunk
            else:
                closed[sock] = time.monotonic() - started
    return [(answers[sock], closed[sock]) for sock in sockets]


def _error(answer: bytes) -> dict[str, object]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return orjson.loads(body)["error"]


def test_a_connection_that_sends_nothing_is_closed(relay: RelayProcess) -> None:
    with _connect(relay) as sock:
        answer, after = _read_until_closed(sock, HEADER_TIMEOUT + SLACK)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert _error(answer)["code"] == "request_timeout"
    assert after >= HEADER_TIMEOUT * 0.9


def test_headers_sent_slowly_without_a_key_are_cut_off(relay: RelayProcess) -> None:
    with _connect(relay) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n")
        started = time.monotonic()
        closed = False
        # A header byte every 0.1 s would keep it alive for ever without a deadline.
        while time.monotonic() - started < HEADER_TIMEOUT + SLACK:
            try:
                sock.sendall(b"X")
            except OSError:
                closed = True
                break
            if select.select([sock], [], [], 0.1)[0]:
                break
        answer, _ = _read_until_closed(sock, SLACK) if not closed else (b"", 0.0)
        elapsed = time.monotonic() - started
    assert closed or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert elapsed < HEADER_TIMEOUT + SLACK


def test_slow_bodies_hold_at_most_their_keys_concurrency(
    gateway: Gateway, sim: Simulator, relay: RelayProcess
) -> None:
    secret = gateway.new_key(name="slow", concurrency_limit=1)
    body = orjson.dumps({"model": "tollgate-chat", "messages": [{"role": "user", "content": "hi"}]})
    sockets = []
    for _ in range(10):
        sock = _connect(relay)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer " + secret.encode() + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:5]
        )
        sockets.append(sock)
    started = time.monotonic()
    try:
        answers = _read_all_until_closed(sockets, BODY_TIMEOUT + SLACK, started)
    finally:
        for sock in sockets:
            sock.close()
    statuses = sorted(int(answer[9:12]) for answer, _ in answers)
    # One holds the key's only slot until its body deadline; the other nine are refused
    # as soon as they are found slow, long before that deadline.
    assert statuses == [408] + [429] * 9, statuses
    refused = [after for answer, after in answers if answer.startswith(b"HTTP/1.1 429")]
    held = [after for answer, after in answers if answer.startswith(b"HTTP/1.1 408")]
    assert max(refused) < BODY_TIMEOUT, refused
    assert BODY_TIMEOUT * 0.9 <= held[0] < BODY_TIMEOUT + SLACK
    for answer, _ in answers:
        error = _error(answer)
        assert error["code"] in ("rate_limit_exceeded", "request_timeout"), error
    assert time.monotonic() - started < BODY_TIMEOUT + SLACK
