"""Every surface keeps the relay's money and limit guarantees with PostgreSQL, Redis and
two relay processes: usage events equal the successful requests, a prepaid balance for
K requests is never overdrawn, and a key's limits are one budget across surfaces."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from billing.models import LedgerEntry
from billing.selectors import account_balance_micros
from billing.services import usage_charge_post
from portal.models import CatalogModel, ChannelModel
from tests.relay.conftest import (
    PUBLIC_MODEL,
    SIM_TOKENS,
    WORST,
    Gateway,
    Simulator,
    prepaid,
    usage_events,
)

pytestmark = pytest.mark.services

Request = tuple[str, dict[str, Any], dict[str, str]]


def chat() -> Request:
    body = {
        "model": PUBLIC_MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": SIM_TOKENS,
    }
    return "/v1/chat/completions", body, {}


def responses() -> Request:
    return "/v1/responses", {"model": PUBLIC_MODEL, "input": "hi", "max_output_tokens": 16}, {}


def messages() -> Request:
    body = {
        "model": PUBLIC_MODEL,
        "max_tokens": SIM_TOKENS,
        "messages": [{"role": "user", "content": "hi"}],
    }
    return "/v1/messages", body, {"anthropic-version": "2023-06-01"}


def completions() -> Request:
    return "/v1/completions", {"model": PUBLIC_MODEL, "prompt": "hi", "max_tokens": 16}, {}


SURFACES: dict[str, tuple[Callable[[], Request], list[str]]] = {
    "chat": (chat, []),
    "responses-native": (responses, ["responses"]),
    "responses-translated": (responses, []),
    "messages-native": (messages, ["messages"]),
    "messages-translated": (messages, []),
    "completions": (completions, []),
}


def send(url: str, secret: str, request: Request, stream: bool = False) -> tuple[int, str]:
    path, body, headers = request
    response = httpx.post(
        url + path,
        json={**body, "stream": True} if stream else body,
        headers={"Authorization": f"Bearer {secret}", **headers},
        timeout=30,
    )
    return response.status_code, response.headers.get("x-request-id", "")


@pytest.mark.parametrize("surface", list(SURFACES))
def test_a_balance_is_never_overdrawn_on_any_surface(
    output_only: Gateway, sim: Simulator, relay_process: str, surface: str
) -> None:
    gateway = output_only
    make, native = SURFACES[surface]
    k = 8
    gateway.channel.base_url = sim.channel_url("latency=150")
    gateway.channel.native_surfaces = native
    gateway.channel.save()
    account = prepaid(gateway, k * WORST)
    time.sleep(0.6)
    urls = (gateway.url, relay_process)

    def call(index: int) -> tuple[int, str]:
        return send(urls[index % 2], gateway.secret, make(), stream=index % 3 == 0)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, range(4 * k)))

    statuses = [status for status, _ in results]
    assert statuses.count(200) == k, statuses
    # Refused for the balance: OpenAI's 429, Anthropic's 402 (billing_error).
    assert statuses.count(402 if surface.startswith("messages") else 429) == 3 * k
    events = usage_events(k, timeout=30)
    assert {e.request_id for e in events} == {rid for status, rid in results if status == 200}
    assert {e.surface for e in events} == {surface.split("-")[0]}
    assert all(e.completion_tokens == SIM_TOKENS and not e.estimated for e in events)
    usage_charge_post()
    charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
    assert sorted(c.reference for c in charges) == sorted(e.request_id for e in events)
    assert account_balance_micros(account) == 0


def test_key_limits_are_one_budget_across_surfaces(gateway: Gateway, relay_process: str) -> None:
    embed = CatalogModel.objects.create(public_id="tollgate-embed", surfaces=["embeddings"])
    ChannelModel.objects.create(channel=gateway.channel, model=embed, upstream_name="e")
    gateway.price(embed)
    limit = 12
    secret = gateway.new_key(name="limited", rpm_limit=limit)
    embedding: Request = ("/v1/embeddings", {"model": "tollgate-embed", "input": "hi"}, {})
    kinds = [chat, responses, messages, completions, lambda: embedding]
    urls = (gateway.url, relay_process)

    def call(index: int) -> tuple[int, str]:
        return send(urls[index % 2], secret, kinds[index % len(kinds)]())

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(3 * limit)))

    statuses = [status for status, _ in results]
    assert statuses.count(200) == limit, statuses
    assert statuses.count(429) == 2 * limit
    events = usage_events(limit, timeout=30)
    succeeded = {rid for status, rid in results if status == 200}
    assert {e.request_id for e in events if e.status_code == 200} == succeeded
