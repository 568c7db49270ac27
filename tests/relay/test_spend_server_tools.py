"""Tools the provider runs itself (web search and fetch, MCP servers, code execution, tool
search) add to the prompt in a loop of model passes, each billed for the whole context it
reads: the request again, the output so far and every tool result before it. The request's
bytes bound none of that, so a tiny request could be billed far more than it was held for
and overdraw a prepaid balance. The hold allows for it (``relay.dialects.fees.ToolLoop``,
docs/pricing.md): over ``passes`` passes, with ``output`` tokens of output at most,

    (passes - 1) * (prompt + output + results) + passes * upfront
        + per_pass * passes * (passes - 1) / 2

prompt tokens beyond the request's own, where ``results`` is what the tools with a bound
may add in all (searches, fetched pages), ``upfront`` the MCP servers' tool lists and
``per_pass`` what tools with no bound may add at each pass. The simulator bills the worst
its loop may (``relay.simulator.anthropic``, ``relay.simulator.openai_responses``): never
more than the hold, and more than a hold that left the loop out would have covered."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from billing.pricing import tenant_price_table, worst_case_cost_micros
from billing.selectors import account_balance_micros
from billing.services import account_topup, usage_charge_post
from relay.app import RelayApp
from tests.relay.conftest import (
    PUBLIC_MODEL,
    SIM_TOKENS,
    Gateway,
    Simulator,
    caught_up,
    prepaid,
    price_model,
    usage_events,
)

pytestmark = pytest.mark.services

PASSES = 10  # Anthropic's server tool loop, and the simulator's
SEARCH_TOKENS = 300
FETCH_TOKENS = 2_000
RESULT_TOKENS = 500
PER_SEARCH = 10_007
OUTPUT = 50  # a Messages request's max_tokens
MCP_SERVER = {"type": "url", "url": "https://mcp.example/sse", "name": "docs"}


def loop_tokens(
    passes: int, prompt: int, output: int, *, upfront: int = 0, results: int = 0, per_pass: int = 0
) -> int:
    """The prompt tokens a tool loop may bill beyond one reading of the request."""
    later = passes - 1
    return later * (prompt + output + results) + passes * upfront + per_pass * passes * later // 2


def messages(tools: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "model": PUBLIC_MODEL,
        "max_tokens": OUTPUT,
        "messages": [{"role": "user", "content": "Look it up."}],
        "tools": tools,
        **extra,
    }


def responses(tools: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "model": PUBLIC_MODEL,
        "input": "Look it up.",
        "max_output_tokens": SIM_TOKENS,
        "tools": tools,
        **extra,
    }


DEFERRED = {"name": "lookup", "input_schema": {"type": "object"}, "defer_loading": True}
MCP = {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"}

# Per case: the path, the request (its bounds set, so the relay sends it as it is), the
# simulator's options, the searches it may bill, its loop's figures (as ``loop_tokens``
# takes them) and whether the simulator runs a loop that bills beyond the request's bytes.
CASES: dict[str, tuple[str, dict[str, Any], tuple[str, ...], int, dict[str, int], bool]] = {
    "web_search": (
        "/v1/messages",
        messages([{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]),
        ("searches=3",),
        3,
        {"passes": PASSES, "results": 3 * SEARCH_TOKENS},
        True,
    ),
    "web_fetch": (
        "/v1/messages",
        # Its pages are held at RELAY_WEB_FETCH_TOKENS though it asks for shorter ones: a
        # PDF is not bounded by max_content_tokens.
        messages(
            [
                {
                    "type": "web_fetch_20250910",
                    "name": "web_fetch",
                    "max_uses": 3,
                    "max_content_tokens": 1_500,
                }
            ]
        ),
        (),
        0,
        {"passes": PASSES, "results": 3 * FETCH_TOKENS},
        True,
    ),
    "mcp_connector": (
        "/v1/messages",
        messages(
            [{"type": "mcp_toolset", "mcp_server_name": "docs"}],
            mcp_servers=[MCP_SERVER],
        ),
        (),
        0,
        {"passes": PASSES, "upfront": RESULT_TOKENS, "per_pass": RESULT_TOKENS},
        True,
    ),
    "code_execution": (
        "/v1/messages",
        messages([{"type": "code_execution_20250825", "name": "code_execution"}]),
        (),
        0,
        {"passes": PASSES, "per_pass": RESULT_TOKENS},
        True,
    ),
    "tool_search": (
        "/v1/messages",
        messages([{"type": "tool_search_tool_regex_20251119", "name": "tool_search"}, DEFERRED]),
        (),
        0,
        {"passes": PASSES},
        False,
    ),
    "responses_mcp": (
        "/v1/responses",
        responses([{**MCP, "require_approval": "never"}], max_tool_calls=4),
        (),
        0,
        {"passes": 5, "upfront": RESULT_TOKENS, "per_pass": RESULT_TOKENS},
        True,
    ),
}


@pytest.fixture
def bounded(relay_settings: Any, gateway: Gateway, sim: Simulator) -> Gateway:
    """Small allowances, as large as the simulator's results; a channel that speaks both
    APIs; a model priced per search too."""
    relay_settings.RELAY_SERVER_TOOL_ITERATIONS = PASSES
    relay_settings.RELAY_WEB_SEARCH_RESULT_TOKENS = SEARCH_TOKENS
    relay_settings.RELAY_WEB_FETCH_TOKENS = FETCH_TOKENS
    relay_settings.RELAY_WEB_FETCH_MAX_USES = 3
    relay_settings.RELAY_TOOL_RESULT_TOKENS = RESULT_TOKENS
    relay_settings.RELAY_RESPONSES_MAX_TOOL_CALLS = 4
    relay_settings.RELAY_UNMETERED_FEATURES = frozenset({"code_execution"})
    gateway.channel.native_surfaces = ["messages", "responses"]
    gateway.channel.save()
    price_model(gateway, web_search_micros=PER_SEARCH)
    return gateway


def post(gateway: Gateway, path: str, body: dict[str, Any]) -> Any:
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    return gateway.client.post(path, content=orjson.dumps(body), headers=headers)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_tool_loop_is_held_for_all_it_may_bill(
    relay_app: RelayApp, bounded: Gateway, sim: Simulator, case: str, stream: bool
) -> None:
    gateway = bounded
    path, body, options, searches, loop, bills_more = CASES[case]
    body = {**body, "stream": stream}
    gateway.channel.base_url = sim.channel_url(*options)
    gateway.channel.save()
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    size = len(orjson.dumps(body))
    output = SIM_TOKENS if path == "/v1/responses" else OUTPUT

    def worst(extra: int) -> int:
        return worst_case_cost_micros(
            price,
            prompt_bytes=size + extra,
            max_output_tokens=output,
            input_images=0,
            web_searches=searches,
        )

    held = worst(loop_tokens(prompt=size, output=output, **loop))
    account = prepaid(gateway, held - 1)
    caught_up(relay_app)
    refused = post(gateway, path, body)
    # OpenAI's 429 insufficient_quota; on Anthropic's API its 402 billing_error.
    assert refused.status_code == (402 if path == "/v1/messages" else 429), refused.text
    assert sim.requests() == []  # refused before the provider ran anything
    account_topup(account=account, amount_micros=1, actor="test")
    caught_up(relay_app)
    served = post(gateway, path, body)
    assert served.status_code == 200, served.text
    assert sim.requests()[-1]["body"]["tools"] == body["tools"]  # sent as the client set them
    [event] = usage_events(1)
    assert event.cost_retail_micros <= held
    if bills_more:  # a hold of the request's bytes alone would have been overdrawn
        assert event.cost_retail_micros > worst(0)
    usage_charge_post()
    assert account_balance_micros(account) >= 0


def test_the_relay_bounds_what_the_client_left_unbounded(
    relay_app: RelayApp, bounded: Gateway, sim: Simulator
) -> None:
    """A web fetch tool without ``max_uses`` or ``max_content_tokens`` is sent with the
    relay's, and a Responses request with a hosted tool without ``max_tool_calls`` with
    the relay's: the provider (here the simulator, which uses all it is allowed) runs no
    more than the hold covers. Values out of range are refused before the provider."""
    gateway = bounded
    caught_up(relay_app)
    fetch = messages([{"type": "web_fetch_20250910", "name": "web_fetch"}])
    assert post(gateway, "/v1/messages", fetch).status_code == 200
    sent = sim.requests()[-1]["body"]["tools"][0]
    assert (sent["max_uses"], sent["max_content_tokens"]) == (3, FETCH_TOKENS)
    answer = post(gateway, "/v1/responses", responses([MCP]))
    assert answer.status_code == 200, answer.text
    assert sim.requests()[-1]["body"]["max_tool_calls"] == 4
    calls = [item for item in answer.json()["output"] if item["type"] == "mcp_call"]
    assert len(calls) == 4
    # Held as sent: the relay's figures count, and cover what the provider billed.
    fetched, answered = usage_events(2)
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    size = len(orjson.dumps({**fetch, "tools": [sent]}))
    extra = loop_tokens(PASSES, size, OUTPUT, results=3 * FETCH_TOKENS)
    held = worst_case_cost_micros(
        price, prompt_bytes=size + extra, max_output_tokens=OUTPUT, input_images=0
    )
    assert fetched.cost_retail_micros <= held
    size = len(orjson.dumps(responses([MCP], max_tool_calls=4)))
    extra = loop_tokens(5, size, SIM_TOKENS, upfront=RESULT_TOKENS, per_pass=RESULT_TOKENS)
    held = worst_case_cost_micros(
        price, prompt_bytes=size + extra, max_output_tokens=SIM_TOKENS, input_images=0
    )
    assert answered.cost_retail_micros <= held
    for tool in (
        {"max_uses": 0},
        {"max_uses": 1001},
        {"max_uses": "3"},
        {"max_uses": True},
        {"max_content_tokens": 0},
        {"max_content_tokens": 2.5},
    ):
        body = messages([{"type": "web_fetch_20250910", "name": "web_fetch", **tool}])
        assert post(gateway, "/v1/messages", body).status_code == 400, tool
    for calls_allowed in (0, 1001, "4", None):
        body = responses([MCP], max_tool_calls=calls_allowed)
        response = post(gateway, "/v1/responses", body)
        if calls_allowed is None:  # null: as if left out
            assert response.status_code == 200, response.text
            continue
        assert response.status_code == 400, calls_allowed
        assert response.json()["error"]["param"] == "max_tool_calls"
    assert len(sim.requests()) == 3


@pytest.mark.parametrize(
    "path,body",
    [
        (
            "/v1/messages",
            messages([{"name": "lookup", "input_schema": {"type": "object"}}]),
        ),
        (
            "/v1/responses",
            responses([{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]),
        ),
    ],
    ids=["messages", "responses"],
)
def test_a_request_without_such_tools_is_held_as_before(
    relay_app: RelayApp, bounded: Gateway, sim: Simulator, path: str, body: dict[str, Any]
) -> None:
    """Tools the client runs end the provider's turn: no loop, the request's bytes bound
    its prompt, and nothing is added to what is sent."""
    gateway = bounded
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    held = worst_case_cost_micros(
        price,
        prompt_bytes=len(orjson.dumps(body)),
        max_output_tokens=SIM_TOKENS if path == "/v1/responses" else OUTPUT,
        input_images=0,
    )
    account = prepaid(gateway, held - 1)
    caught_up(relay_app)
    assert post(gateway, path, body).status_code in (402, 429)
    account_topup(account=account, amount_micros=1, actor="test")
    caught_up(relay_app)
    served = post(gateway, path, body)
    assert served.status_code == 200, served.text
    assert sim.requests()[-1]["body"] == {**body, "model": "sim-upstream"}
