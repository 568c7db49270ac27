"""Several relay processes sharing PostgreSQL and Redis see every change within seconds."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from billing.models import LedgerEntry
from billing.selectors import account_balance_micros
from billing.services import usage_charge_post
from portal import services
from portal.models import Channel
from tests.relay.conftest import (
    SIM_TOKENS,
    WORST,
    Gateway,
    Simulator,
    chat_body,
    prepaid,
    usage_events,
)

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until(check: Any, seconds: float = 5.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < seconds, f"not seen within {seconds} s"
        time.sleep(0.05)
    return time.monotonic() - started


def test_revocation_and_channel_edits_reach_every_process(
    gateway: Gateway, relay_process: str
) -> None:
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    urls = (gateway.url, relay_process)
    for url in urls:
        response = httpx.post(url + "/v1/chat/completions", json=chat_body(), headers=headers)
        assert response.status_code == 200, response.text

    services.channel_set_status(channel=gateway.channel, enabled=False, actor="test")
    for url in urls:
        _until(
            lambda url=url: (
                httpx.post(
                    url + "/v1/chat/completions", json=chat_body(), headers=headers
                ).status_code
                == 503
            )
        )
    services.channel_set_status(channel=gateway.channel, enabled=True, actor="test")
    assert Channel.objects.get(pk=gateway.channel.pk).is_enabled

    services.api_key_revoke(api_key=gateway.api_key, actor="test")
    for url in urls:
        _until(lambda url=url: httpx.get(url + "/v1/models", headers=headers).status_code == 401)


def _burst(urls: tuple[str, ...], secret: str, count: int) -> list[int]:
    """``count`` concurrent requests, alternating between the relay processes."""

    def call(index: int) -> int:
        return httpx.post(
            urls[index % len(urls)] + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {secret}"},
            timeout=30,
        ).status_code

    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(call, range(count)))


def test_a_rate_limit_is_exact_across_processes(gateway: Gateway, relay_process: str) -> None:
    limit = 12
    secret = gateway.new_key(name="limited", rpm_limit=limit)

    statuses = _burst((gateway.url, relay_process), secret, 3 * limit)

    assert statuses.count(200) == limit
    assert statuses.count(429) == 2 * limit


def test_a_concurrency_limit_holds_across_processes(
    gateway: Gateway, sim: Simulator, relay_process: str
) -> None:
    gateway.channel.base_url = sim.channel_url("latency=300")
    gateway.channel.save()
    secret = gateway.new_key(name="narrow", concurrency_limit=3)
    time.sleep(0.6)
    sim.client.delete("/_sim/requests")

    statuses = _burst((gateway.url, relay_process), secret, 24)

    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 3
    assert 1 <= sim.stats()["peak_in_flight"] <= 3


def test_limit_changes_reach_every_process(gateway: Gateway, relay_process: str) -> None:
    headers = {"Authorization": f"Bearer {gateway.secret}"}
    urls = (gateway.url, relay_process)
    for url in urls:
        assert httpx.get(url + "/v1/models", headers=headers).status_code == 200

    gateway.api_key.rpm_limit = 0  # nothing allowed any more
    gateway.api_key.save()
    for url in urls:
        _until(
            lambda url=url: (
                httpx.post(
                    url + "/v1/chat/completions", json=chat_body(), headers=headers
                ).status_code
                == 429
            )
        )


def test_a_balance_is_never_overdrawn_across_processes(
    output_only: Gateway, sim: Simulator, relay_process: str
) -> None:
    """A tenant with balance for exactly K requests' worst case, hit with 5K concurrent
    requests through two relay processes, gets K successes, each charged exactly once,
    and its balance ends at zero, never below."""
    gateway = output_only
    k = 20
    gateway.channel.base_url = sim.channel_url("latency=150")
    gateway.channel.save()
    account = prepaid(gateway, k * WORST)
    time.sleep(0.6)

    def call(index: int) -> tuple[int, str]:
        response = httpx.post(
            (gateway.url, relay_process)[index % 2] + "/v1/chat/completions",
            json=chat_body(max_tokens=SIM_TOKENS),
            headers={"Authorization": f"Bearer {gateway.secret}"},
            timeout=30,
        )
        return response.status_code, response.headers.get("x-request-id", "")

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(call, range(5 * k)))

    statuses = [status for status, _ in results]
    assert statuses.count(200) == k
    assert statuses.count(429) == 4 * k
    events = usage_events(k, timeout=15)
    assert len(events) == k
    assert {e.request_id for e in events} == {rid for status, rid in results if status == 200}
    usage_charge_post()
    charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
    assert sorted(c.reference for c in charges) == sorted(e.request_id for e in events)
    assert account_balance_micros(account) == 0
