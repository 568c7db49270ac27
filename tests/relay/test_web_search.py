"""Anthropic's web search, billed per search: offered on a model only where its price names
a price per search (the tenant's and the platform's), held for at the most searches the
request allows (its tool's ``max_uses``, which the relay sets when the client did not),
counted from the provider's own figure or, on a cut stream, from the search blocks it
delivered, and charged per search to the micro-unit, in the event and on the invoice."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest

from billing.models import LedgerEntry, UsageEvent
from billing.pricing import tenant_price_table, worst_case_cost_micros
from billing.selectors import account_balance_micros
from billing.services import usage_charge_post
from relay.app import RelayApp
from relay.dialects.messages import MessagesCall, PassLeg
from relay.metering import Usage, UsageRecord
from tests.relay.conftest import (
    OUTPUT_PRICE,
    PUBLIC_MODEL,
    SIM_TOKENS,
    Gateway,
    Simulator,
    assert_invoiced,
    burst,
    caught_up,
    prepaid,
    price_model,
    usage_events,
)

pytestmark = pytest.mark.services

PER_SEARCH = 10_007  # micro-units per search: odd, so a wrong count shows
TOOL = {"type": "web_search_20250305", "name": "web_search"}


def ask(max_uses: int | None = 5, stream: bool = False) -> dict[str, Any]:
    tool = dict(TOOL) if max_uses is None else {**TOOL, "max_uses": max_uses}
    return {
        "model": PUBLIC_MODEL,
        "max_tokens": SIM_TOKENS,
        "messages": [{"role": "user", "content": "What happened today?"}],
        "tools": [tool],
        "stream": stream,
    }


def post(gateway: Gateway, body: dict[str, Any], base: str = "") -> httpx.Response:
    return httpx.post(
        (base or gateway.url) + "/v1/messages",
        json=body,
        headers={"x-api-key": gateway.secret, "anthropic-version": "2023-06-01"},
        timeout=30,
    )


def searching_channel(gateway: Gateway, sim: Simulator, options: str) -> None:
    gateway.channel.base_url = sim.channel_url(options)
    gateway.channel.native_surfaces = ["messages"]
    gateway.channel.save()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_each_search_is_charged_at_the_price_per_search(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator, stream: bool
) -> None:
    price_model(gateway, web_search_micros=PER_SEARCH)
    searching_channel(gateway, sim, "searches=3")
    caught_up(relay_app)
    response = post(gateway, ask(stream=stream))
    assert response.status_code == 200, response.text
    [event] = usage_events(1)
    assert event.web_search_calls == 3
    assert event.charges["web_search"] == [
        3,
        PER_SEARCH,
        3 * PER_SEARCH,
        PER_SEARCH,
        3 * PER_SEARCH,
    ]
    tokens = sum(c[2] for d, c in event.charges.items() if d != "web_search")
    assert event.cost_retail_micros == tokens + 3 * PER_SEARCH
    assert event.prompt_tokens > 0 and event.completion_tokens > 0
    assert_invoiced(event, "web_search", 3, PER_SEARCH)


def test_a_model_without_a_price_per_search_refuses_web_search(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    price_model(gateway)  # token prices only
    searching_channel(gateway, sim, "searches=3")
    caught_up(relay_app)
    response = post(gateway, ask())
    assert response.status_code == 400, response.text
    assert "no price per search" in response.json()["error"]["message"]
    assert sim.requests() == []  # the provider never searched
    # Let through unmetered by the operator: searched, counted, charged nothing for it.
    relay_settings.RELAY_UNMETERED_FEATURES = frozenset({"web_search"})
    assert post(gateway, ask()).status_code == 200
    [event] = usage_events(1)
    assert event.web_search_calls == 3
    assert event.charges["web_search"][2] == 0


def test_the_relay_sets_max_uses_and_bills_no_more(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    """A tool without ``max_uses`` is sent with the relay's, so the hold covers every
    search; the provider (here one that would search 40 times) runs no more."""
    relay_settings.RELAY_WEB_SEARCH_MAX_USES = 4
    price_model(gateway, web_search_micros=PER_SEARCH)
    searching_channel(gateway, sim, "searches=40")
    caught_up(relay_app)
    assert post(gateway, ask(max_uses=None)).status_code == 200
    assert sim.requests()[-1]["body"]["tools"][0]["max_uses"] == 4
    [event] = usage_events(1)
    assert event.web_search_calls == 4
    for refused in (0, 1001, "3", True):
        response = post(gateway, ask(max_uses=refused))  # type: ignore[arg-type]
        assert response.status_code == 400, (refused, response.text)
    assert len(sim.requests()) == 1


def _leg(limit: int) -> PassLeg:
    payload = ask(max_uses=limit)
    record = UsageRecord(
        request_id="req_1",
        created_at=datetime.now(UTC),
        tenant_id=1,
        api_key_id=1,
        model=PUBLIC_MODEL,
        stream=False,
        status_code=0,
        total_latency_ms=0,
    )
    return PassLeg(MessagesCall(payload, "2023-06-01", None), record, PUBLIC_MODEL)


SEARCH = {"type": "server_tool_use", "name": "web_search", "id": "s", "input": {}}
FOUND = {"type": "web_search_tool_result", "tool_use_id": "s", "content": []}
FAILED = {
    "type": "web_search_tool_result",
    "tool_use_id": "s",
    "content": {"type": "web_search_tool_result_error", "error_code": "unavailable"},
}


def _feed(leg: PassLeg, kind: str, **fields: Any) -> None:
    data = orjson.dumps({"type": kind, **fields})
    leg.event(b"event: " + kind.encode() + b"\ndata: " + data, data)


def test_the_providers_count_stands_held_to_what_the_request_allowed() -> None:
    def answered(limit: int, content: list[Any], reported: int | None) -> int:
        leg = _leg(limit)
        usage: dict[str, Any] = {"input_tokens": 5, "output_tokens": 1}
        if reported is not None:
            usage["server_tool_use"] = {"web_search_requests": reported}
        assert leg.answer({"type": "message", "content": content, "usage": usage}) is not None
        return leg.record.web_search_calls

    assert answered(2, [SEARCH, FOUND], 9) == 2  # a provider reporting more: the hold's
    assert answered(5, [SEARCH, FAILED, SEARCH, FOUND], 1) == 1  # a failed search is free
    # Without the provider's count, its blocks: the failed search left out.
    assert answered(5, [SEARCH, FAILED, SEARCH, FOUND, SEARCH, FOUND], None) == 2


def test_a_stream_counts_its_search_blocks_until_the_provider_counts() -> None:
    leg = _leg(5)
    for block in (SEARCH, FOUND, SEARCH, FAILED, SEARCH, FOUND, {"type": "text", "text": ""}):
        _feed(leg, "content_block_start", index=0, content_block=block)
    # Cut here, before its usage: billed for the two searches that did not fail.
    assert leg.record.web_search_calls == 2
    assert leg.record.billed(Usage(prompt_tokens=5)).web_search_calls == 2
    _feed(leg, "message_delta", delta={}, usage={"server_tool_use": {"web_search_requests": 3}})
    assert leg.record.web_search_calls == 3  # the provider's count, once it came
    _feed(leg, "content_block_start", index=1, content_block=SEARCH)
    assert leg.record.web_search_calls == 3


def test_a_balance_is_never_overdrawn_by_searches(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator, relay_process: str
) -> None:
    """Searches dearer than all the request's tokens: a hold that left them out would let
    5K requests through on a balance for K."""
    price_model(gateway, input_per_mtok=0, web_search_micros=1_000_000)
    searching_channel(gateway, sim, "searches=3,latency=150")
    body = ask(max_uses=3)
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    worst = worst_case_cost_micros(
        price,
        prompt_bytes=len(orjson.dumps(body)),
        max_output_tokens=SIM_TOKENS,
        input_images=0,
        output_images=0,
        web_searches=3,
    )
    assert worst == 3_000_000 + SIM_TOKENS * OUTPUT_PRICE // 1_000_000
    k = 10
    account = prepaid(gateway, k * worst)
    caught_up(relay_app)

    statuses, served = burst(
        (gateway.url, relay_process), "/v1/messages", gateway.secret, body, 5 * k, 50
    )
    assert set(statuses) <= {200, 402} and k <= len(served) < 5 * k  # 402: Anthropic's refusal
    events = [e for e in usage_events(len(served), timeout=20) if e.request_id in served]
    assert len(events) == len(served)
    usage_charge_post()
    charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
    assert charges.count() == len(events)
    assert sum(e.cost_retail_micros for e in events) <= k * worst
    assert account_balance_micros(account) >= 0
    assert UsageEvent.objects.filter(web_search_calls=3).count() == len(events)


def test_both_sides_must_price_a_search(settings: Any) -> None:
    """A reseller that prices searches over a platform price without one would sell what
    the platform never charges it for: refused, as a model without any price is."""
    from billing.pricing import PricePair, Prices
    from relay import errors, spend

    settings.RELAY_UNMETERED_FEATURES = frozenset()
    plain = Prices(input=1, cached_input=1, output=1, request_fee=0, currency="USD")
    priced = Prices(input=1, cached_input=1, output=1, request_fee=0, currency="USD", web_search=5)
    spend.check_searches(2, PricePair(priced, priced, None))
    spend.check_searches(0, PricePair(plain, plain, None))  # no search asked for
    for retail, wholesale in ((priced, plain), (plain, priced), (plain, plain)):
        with pytest.raises(errors.RelayError, match="no price per search"):
            spend.check_searches(2, PricePair(retail, wholesale, 7))


def test_the_anthropic_sdk_streams_a_searched_answer_as_from_anthropic(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator
) -> None:
    """The official SDK, unmodified, reads the search blocks, the text and the provider's
    search count; the event bills what the SDK was told."""
    import anthropic

    price_model(gateway, web_search_micros=PER_SEARCH)
    searching_channel(gateway, sim, "searches=2")
    caught_up(relay_app)
    with (
        anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0) as sdk,
        sdk.messages.stream(
            model=PUBLIC_MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "What happened today?"}],
            tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4"
    kinds = [block.type for block in final.content]
    assert kinds == ["server_tool_use", "web_search_tool_result"] * 2 + ["text"]
    assert final.usage.server_tool_use is not None
    assert final.usage.server_tool_use.web_search_requests == 2
    [event] = usage_events(1)
    assert event.web_search_calls == 2 and event.completion_tokens == final.usage.output_tokens
