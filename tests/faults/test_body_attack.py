"""A key holder sending huge, over-structured bodies cannot hurt a relay worker or anyone
else on it (issue 11, finding 1), against real relay processes: ``uvicorn --workers 2``
with the production protocol, on the test's PostgreSQL and this run's Redis namespace."""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
from django.conf import settings

from portal import crypto
from portal.models import ApiKey, Organization
from tests.faults.test_relay_memory import PeakRss
from tests.relay.conftest import Gateway, Simulator, chat_body
from tests.servers import RelayProcess, database_url

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

MB = 1_000_000
ATTACKERS = 6
ROUNDS = 3  # bodies each attacker sends, one after the other
VICTIMS = 3  # threads of the other tenant, each sending small requests in a loop
ATTACK_SECONDS_MAX = 60.0
MIN_VICTIM_REQUESTS = 60


def attack_body(size: int = 20 * MB) -> bytes:
    """A valid chat request padded with an array of empty arrays up to ``size`` bytes:
    parsed whole, seven million lists."""
    head = orjson.dumps(chat_body())[:-1] + b',"padding":['
    count = (size - len(head) - 2) // 3 + 1
    return head + b"[]," * (count - 1) + b"[]]}"


def worker_pids(supervisor: int) -> set[int]:
    """The supervisor's worker processes (uvicorn spawns them with multiprocessing)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    pids = set()
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"multiprocessing" in cmdline and b"resource_tracker" not in cmdline:
            pids.add(pid)
    return pids


@dataclass
class Relay:
    url: str
    supervisor: int
    workers: set[int]


@pytest.fixture
def two_workers(gateway: Gateway) -> Iterator[Relay]:
    relay = RelayProcess(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
            "RELAY_USAGE_FLUSH_SECONDS": "0.05",
        },
        "--workers",
        "2",
    )
    try:
        deadline = time.monotonic() + 60
        while len(worker_pids(relay.process.pid)) < 2:
            assert time.monotonic() < deadline, relay.logged()
            time.sleep(0.1)
        workers = worker_pids(relay.process.pid)
        # Both workers answer (each has loaded Django and its caches) before the attack.
        seen_ok = 0
        while seen_ok < 10:
            assert time.monotonic() < deadline, relay.logged()
            response = httpx.post(
                relay.url + "/v1/chat/completions",
                json=chat_body(),
                headers={"Authorization": f"Bearer {gateway.secret}"},
                timeout=30,
            )
            seen_ok += response.status_code == 200
        yield Relay(relay.url, relay.process.pid, workers)
    finally:
        relay.stop()


def _limited_key(gateway: Gateway) -> str:
    return gateway.new_key(name="attacker", rpm_limit=1, concurrency_limit=1)


def _other_tenant_key(gateway: Gateway) -> str:
    other = Organization.objects.create(
        name="Other", slug="other", kind="tenant", parent=gateway.tenant.parent
    )
    secret = crypto.generate_api_key()
    key = ApiKey(tenant=other, name="victim")
    key.set_secret(secret)
    key.save()
    return secret


def _attack(url: str, secret: str, body: bytes) -> list[int | str]:
    outcomes: list[int | str] = []
    with httpx.Client(timeout=30) as client:
        for _ in range(ROUNDS):
            try:
                response = client.post(
                    url + "/v1/chat/completions",
                    content=body,
                    headers={
                        "Authorization": f"Bearer {secret}",
                        "content-type": "application/json",
                    },
                )
                outcomes.append(response.status_code)
            except httpx.TransportError as exc:
                # Refused before its body was read: the relay answers and closes the
                # connection, which a client still sending may see as a broken pipe.
                outcomes.append(type(exc).__name__)
    return outcomes


@pytest.mark.parametrize(
    "limits",
    [
        # The key: its limits stop all but one body before it is read.
        {"rpm_limit": 1, "concurrency_limit": 1},
        # Limits that let every body in: the value cap stops each one as it is read.
        {"rpm_limit": 1000, "concurrency_limit": 100},
    ],
    ids=["limited", "loosely-limited"],
)
def test_huge_bodies_from_one_key_leave_workers_and_other_tenants_unharmed(
    gateway: Gateway, sim: Simulator, two_workers: Relay, limits: dict[str, int]
) -> None:
    attacker = gateway.new_key(name="attacker", **limits)
    victim = _other_tenant_key(gateway)
    body = attack_body()
    assert len(body) >= 20 * MB
    for _ in range(8):  # the victim's key and prices cached by both workers (new connections)
        warm = httpx.post(
            two_workers.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {victim}"},
            timeout=30,
        )
        assert warm.status_code == 200, warm.text
    stop = threading.Event()
    latencies: list[float] = []
    failures: list[str] = []

    def victim_loop() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set() or len(latencies) < MIN_VICTIM_REQUESTS:
                if len(failures) > 5:
                    return
                started = time.monotonic()
                try:
                    response = client.post(
                        two_workers.url + "/v1/chat/completions",
                        json=chat_body(),
                        headers={"Authorization": f"Bearer {victim}"},
                    )
                    ok = response.status_code == 200
                    if not ok:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                except httpx.TransportError as exc:
                    failures.append(type(exc).__name__)
                    ok = False
                if ok:
                    latencies.append(time.monotonic() - started)

    memories = [PeakRss(pid) for pid in two_workers.workers]
    for memory in memories:
        memory.__enter__()
    try:
        with ThreadPoolExecutor(ATTACKERS + VICTIMS) as pool:
            victims = [pool.submit(victim_loop) for _ in range(VICTIMS)]
            attacks = [
                pool.submit(_attack, two_workers.url, attacker, body) for _ in range(ATTACKERS)
            ]
            outcomes = [o for f in attacks for o in f.result(timeout=ATTACK_SECONDS_MAX)]
            stop.set()
            for future in victims:
                future.result(timeout=30)
    finally:
        stop.set()
        for memory in memories:
            memory.__exit__(None, None, None)

    peaks = {m.pid: m.peak // (1024 * 1024) for m in memories}
    p99 = statistics.quantiles(latencies, n=100, method="inclusive")[98]
    print(
        f"\nattack outcomes {sorted(map(str, outcomes))}; victim requests {len(latencies)}, "
        f"p99 {p99:.3f}s, max {max(latencies):.3f}s; peak RSS MiB {peaks}"
    )
    assert len(outcomes) == ATTACKERS * ROUNDS
    # Each body was refused (by a limit before it was read, or by the value cap as it was
    # read), never served, never a server error.
    answered = [o for o in outcomes if isinstance(o, int)]
    assert answered and all(o in (413, 429) for o in answered), outcomes
    assert (429 in answered) == (limits["rpm_limit"] == 1)
    # No worker died or was replaced.
    assert two_workers.supervisor and worker_pids(two_workers.supervisor) == two_workers.workers
    assert not failures, failures[:5]
    assert len(latencies) >= MIN_VICTIM_REQUESTS
    assert p99 < 1.0
    assert all(peak < 300 for peak in peaks.values()), peaks


def _raw_post(url: str, secret: str, body: bytes, length: int = 0) -> tuple[socket.socket, bytes]:
    """Send a request's headers, then its body in small paced pieces until the relay
    answers (leaving the relay nothing unread when it closes); returns the answer."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: relay\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer " + secret.encode() + b"\r\n"
        b"Content-Length: " + str(length or len(body)).encode() + b"\r\n\r\n"
    )
    for start in range(0, len(body), 16 * 1024):
        if select.select([sock], [], [], 0.02)[0]:
            break
        sock.sendall(body[start : start + 16 * 1024])
    answer = b""
    while not answer.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return sock, answer


def test_a_key_over_its_limit_is_refused_before_its_large_body_is_read(
    gateway: Gateway, sim: Simulator, two_workers: Relay
) -> None:
    attacker = _limited_key(gateway)
    ok = httpx.post(
        two_workers.url + "/v1/chat/completions",
        json=chat_body(),
        headers={"Authorization": f"Bearer {attacker}"},
        timeout=30,
    )
    assert ok.status_code == 200, ok.text  # its one request of the minute
    # 20 MB announced, a few bytes sent: the answer comes without the rest.
    sock, answer = _raw_post(two_workers.url, attacker, b'{"model": "', 20 * MB)
    with sock:
        assert answer.startswith(b"HTTP/1.1 429"), answer[:300]
        assert b"connection: close" in answer.lower()
        error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "rate_limit_exceeded" and "requests per minute" in error["message"]
        assert sock.recv(1) == b""  # and the connection is closed: the body is never read


def test_the_value_cap_refuses_an_over_structured_body_while_it_is_read(
    gateway: Gateway, sim: Simulator, two_workers: Relay
) -> None:
    body = attack_body(4 * MB)
    sock, answer = _raw_post(two_workers.url, gateway.secret, body)
    with sock:
        assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
        error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "request_too_large" and "JSON values" in error["message"]
