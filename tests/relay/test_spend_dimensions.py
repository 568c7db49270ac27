"""Reservations allow for the dearest dimension a request could incur: a prepaid balance
covering K worst-case requests, whose answers are billed at the audio output price, is
never overdrawn by 5K concurrent requests through two relay processes."""

from __future__ import annotations

import orjson
import pytest

from billing.models import LedgerEntry
from billing.pricing import tenant_price_table, worst_case_cost_micros
from billing.selectors import account_balance_micros
from billing.services import model_price_set, usage_charge_post
from relay.app import RelayApp
from tests.relay.conftest import (
    PUBLIC_MODEL,
    SIM_TOKENS,
    Gateway,
    Simulator,
    burst,
    caught_up,
    chat_body,
    prepaid,
)
from tests.relay.conftest import usage_events as wait_for_events

pytestmark = pytest.mark.services

TEXT_OUTPUT = 1_000_000  # micro-units per million tokens
AUDIO_OUTPUT = 50_000_000  # fifty times dearer: the dimension a text-priced hold would miss
AUDIO_TOKENS = 16
MAX_TOKENS = SIM_TOKENS + AUDIO_TOKENS


def test_a_balance_is_never_overdrawn_by_dear_dimensions(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator, relay_process: str
) -> None:
    model_price_set(
        price_list=gateway.price_list,
        model=gateway.model,
        input_per_mtok=0,
        output_per_mtok=TEXT_OUTPUT,
        audio_output_per_mtok=AUDIO_OUTPUT,
        actor="test",
    )
    gateway.channel.base_url = sim.channel_url(f"latency=150,audio_out={AUDIO_TOKENS}")
    gateway.channel.save()
    body = chat_body(max_tokens=MAX_TOKENS)
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    worst = worst_case_cost_micros(
        price, prompt_bytes=len(orjson.dumps(body)), max_output_tokens=MAX_TOKENS
    )
    assert worst == MAX_TOKENS * AUDIO_OUTPUT // 1_000_000  # the audio price, not the text's
    k = 20
    account = prepaid(gateway, k * worst)
    # Both processes see the new terms: the second has served nothing, so it loads them.
    caught_up(relay_app)

    statuses, served = burst(
        (gateway.url, relay_process), "/v1/chat/completions", gateway.secret, body, 5 * k, 50
    )
    assert set(statuses) <= {200, 429} and len(served) >= k
    events = [e for e in wait_for_events(len(served), timeout=20) if e.request_id in served]
    assert len(events) == len(served)
    for event in events:  # charged at the audio price
        assert event.audio_output_tokens == AUDIO_TOKENS
        assert event.charges["audio_output"][1] == AUDIO_OUTPUT
    usage_charge_post()
    charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
    assert charges.count() == len(events)
    assert sum(e.cost_retail_micros for e in events) <= k * worst
    assert account_balance_micros(account) >= 0
