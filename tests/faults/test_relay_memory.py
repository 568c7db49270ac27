"""A gigantic upstream answer leaves the relay's memory bounded: measured as the resident
set size of a relay running in its own process (``uvicorn config.asgi:application``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.faults.test_upstream_faults import stream_parts
from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events
from tests.servers import RelayProcess, database_url

# The relay runs in its own process and must share the test database: PostgreSQL only.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024


PLAIN_SIZE = 128 * MIB  # twice the relay's MAX_RESPONSE_BYTES
STREAM_SIZE = 160 * MIB


@pytest.fixture
def huge_models(gateway: Gateway, sim: Simulator) -> None:
    """Models served by channels that answer gigantically; set up before the relay starts,
    since without Redis a separate process sees no later change."""
    from portal.models import CatalogModel

    for public_id, size in (("huge-plain", PLAIN_SIZE), ("huge-stream", STREAM_SIZE)):
        model = CatalogModel.objects.create(public_id=public_id, owned_by="tollgate")
        gateway.add_channel(sim.channel_url(f"huge={size}"), name=public_id, model=public_id)
        gateway.price(model)


@pytest.fixture
def relay_process(gateway: Gateway, huge_models: None) -> Iterator[tuple[str, int]]:
    """A relay in its own process on the test database: (base URL, pid)."""
    relay = RelayProcess(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
            "RELAY_USAGE_FLUSH_SECONDS": "0.05",
        }
    )
    yield relay.url, relay.process.pid
    relay.stop()


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class PeakRss:
    """Samples a process's RSS every 10 ms while in use; ``peak`` is the highest seen."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, rss(pid), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _warm(url: str, headers: dict[str, str]) -> None:
    # Imports, caches and the tokenizer are loaded before the baseline is taken.
    for body in (chat_body(), chat_body(stream=True)):
        httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=30)


def test_a_gigantic_plain_answer_costs_at_most_the_size_limit(
    gateway: Gateway, sim: Simulator, relay_process: tuple[str, int]
) -> None:
    from relay import upstream_errors as chat

    url, pid = relay_process
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    _warm(url, headers)
    assert chat.MAX_RESPONSE_BYTES * 2 == PLAIN_SIZE
    baseline = rss(pid)
    with PeakRss(pid) as memory:
        response = httpx.post(
            url + "/v1/chat/completions",
            json=chat_body(model="huge-plain"),
            headers=headers,
            timeout=60,
        )
    assert response.status_code == 502, response.text[:300]
    grown = memory.peak - baseline
    print(f"\nplain {PLAIN_SIZE // MIB} MiB answer: RSS +{grown // MIB} MiB")
    assert grown < chat.MAX_RESPONSE_BYTES * 1.5
    assert len(usage_events(3)) == 3


def test_a_gigantic_stream_keeps_memory_flat(
    gateway: Gateway, sim: Simulator, relay_process: tuple[str, int]
) -> None:
    size = STREAM_SIZE
    url, pid = relay_process
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    _warm(url, headers)
    baseline = rss(pid)
    with (
        PeakRss(pid) as memory,
        httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=chat_body(model="huge-stream", stream=True),
            headers=headers,
            timeout=60,
        ) as response,
    ):
        text, failures, done = stream_parts(response)
    grown = memory.peak - baseline
    print(f"\n{size // MIB} MiB stream: RSS +{grown // MIB} MiB")
    assert len(text) == size and done and not failures
    events = usage_events(3)
    assert events[-1].completed and events[-1].completion_tokens == size // 4
    assert grown < 32 * MIB
