"""Pictures priced per image are charged: each dialect counts the images of its request
(chat ``image_url`` parts, Responses ``input_image`` parts, Messages ``image`` blocks,
tool results' included) as it sizes the request, the usage event keeps the count, the
charge is the count times the price per image to the micro-unit, and the invoice line of
that dimension says the same; passed through or translated to a chat channel alike. A
prepaid balance that covers K such requests is never overdrawn."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from billing.models import LedgerEntry, UsageEvent
from billing.pricing import tenant_price_table, worst_case_cost_micros
from billing.selectors import account_balance_micros
from billing.services import usage_charge_post
from relay.app import RelayApp
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

PER_IMAGE = 1_234_567  # micro-units per input image: odd, so a wrong count shows
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5E"
    "rkJggg=="
)
DATA_URL = f"data:image/png;base64,{PNG}"
ANTHROPIC_IMAGE = {
    "type": "image",
    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
}


def chat_request() -> tuple[str, dict[str, Any]]:
    content = [
        {"type": "text", "text": "Compare these two pictures."},
        {"type": "image_url", "image_url": {"url": DATA_URL}},
        {"type": "image_url", "image_url": {"url": DATA_URL, "detail": "low"}},
    ]
    return "/v1/chat/completions", {
        "model": PUBLIC_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": SIM_TOKENS,
    }


def responses_request() -> tuple[str, dict[str, Any]]:
    content = [
        {"type": "input_text", "text": "Compare these two pictures."},
        {"type": "input_image", "image_url": DATA_URL},
        {"type": "input_image", "image_url": DATA_URL, "detail": "high"},
    ]
    return "/v1/responses", {
        "model": PUBLIC_MODEL,
        "instructions": "You compare pictures.",
        "input": [{"role": "user", "content": content}],
        "max_output_tokens": SIM_TOKENS,
    }


def messages_request() -> tuple[str, dict[str, Any]]:
    """One picture in the question, one returned inside a tool's result."""
    return "/v1/messages", {
        "model": PUBLIC_MODEL,
        "max_tokens": SIM_TOKENS,
        "system": "You compare pictures.",
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Take a photo."}, ANTHROPIC_IMAGE],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "camera", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_1",
                        "content": [{"type": "text", "text": "the photo:"}, ANTHROPIC_IMAGE],
                    },
                    {"type": "text", "text": "Are they the same?"},
                ],
            },
        ],
    }


REQUESTS = {"chat": chat_request, "responses": responses_request, "messages": messages_request}
# How each dialect reaches the channel: its own API passed through, or translated to chat.
CASES = [
    ("chat", []),
    ("responses", ["responses"]),
    ("responses", []),
    ("messages", ["messages"]),
    ("messages", []),
]


def price_per_image(gateway: Gateway) -> None:
    price_model(gateway, input_image_micros=PER_IMAGE)


def serve_natively(gateway: Gateway, surfaces: list[str]) -> None:
    gateway.channel.native_surfaces = surfaces
    gateway.channel.save()


def post(gateway: Gateway, path: str, body: dict[str, Any], base: str = "") -> httpx.Response:
    return httpx.post(
        (base or gateway.url) + path,
        json=body,
        headers={"Authorization": f"Bearer {gateway.secret}"},
        timeout=30,
    )


@pytest.mark.parametrize(("dialect", "native"), CASES, ids=[f"{d}-{n}" for d, n in CASES])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_two_images_are_charged_twice_the_price_per_image(
    relay_app: RelayApp, gateway: Gateway, dialect: str, native: list[str], stream: bool
) -> None:
    price_per_image(gateway)
    serve_natively(gateway, native)
    caught_up(relay_app)  # the relay's caches hold the new price and channel
    path, body = REQUESTS[dialect]()
    body["stream"] = stream
    response = post(gateway, path, body)
    assert response.status_code == 200, response.text
    response.read()
    [event] = usage_events(1)
    assert event.surface == dialect and event.status_code == 200 and event.completed
    assert event.input_images == 2
    quantity, unit, micros, wholesale_unit, wholesale_micros = event.charges["input_image"]
    assert (quantity, unit, micros) == (2, PER_IMAGE, 2 * PER_IMAGE)
    assert (wholesale_unit, wholesale_micros) == (PER_IMAGE, 2 * PER_IMAGE)
    tokens = sum(c[2] for d, c in event.charges.items() if d != "input_image")
    assert event.cost_retail_micros == tokens + 2 * PER_IMAGE
    assert event.prompt_tokens > 0 and event.completion_tokens > 0  # tokens billed besides

    assert_invoiced(event, "input_image", 2, PER_IMAGE)


def test_a_request_that_reached_no_model_is_not_charged_for_its_images(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator
) -> None:
    price_per_image(gateway)
    gateway.channel.base_url = sim.channel_url("fail=400")
    gateway.channel.save()
    caught_up(relay_app)
    path, body = chat_request()
    assert post(gateway, path, body).status_code == 400
    [event] = usage_events(1)
    assert event.input_images == 0 and event.charges == {} and event.cost_retail_micros == 0


def test_text_only_requests_count_no_images(relay_app: RelayApp, gateway: Gateway) -> None:
    price_per_image(gateway)
    caught_up(relay_app)
    response = post(
        gateway,
        "/v1/chat/completions",
        {"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200
    [event] = usage_events(1)
    assert event.input_images == 0 and "input_image" not in event.charges


GENERATED = 7_654_321  # micro-units per generated image


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("dialect", "native"), [("chat", []), ("responses", ["responses"])], ids=["chat", "responses"]
)
def test_generated_images_are_charged_per_image(
    relay_app: RelayApp,
    gateway: Gateway,
    sim: Simulator,
    dialect: str,
    native: list[str],
    stream: bool,
) -> None:
    """Chat image output (message.images, delta.images on streams) and the Responses
    image_generation tool's output items are counted and charged at the generated-image
    price; the text prompt has no input images."""
    price_model(gateway, output_image_micros=GENERATED)
    gateway.channel.base_url = sim.channel_url("images=3")
    gateway.channel.native_surfaces = native
    gateway.channel.save()
    caught_up(relay_app)
    if dialect == "chat":
        path, body = (
            "/v1/chat/completions",
            {
                "model": PUBLIC_MODEL,
                "messages": [{"role": "user", "content": "Draw three cats."}],
                "modalities": ["image", "text"],
            },
        )
    else:
        path, body = (
            "/v1/responses",
            {
                "model": PUBLIC_MODEL,
                "input": "Draw three cats.",
                "tools": [{"type": "image_generation"}],
            },
        )
    body["stream"] = stream
    response = post(gateway, path, body)
    assert response.status_code == 200, response.text
    [event] = usage_events(1)
    assert (event.input_images, event.output_images) == (0, 3)
    assert event.charges["output_image"] == [3, GENERATED, 3 * GENERATED, GENERATED, 3 * GENERATED]
    assert "input_image" not in event.charges


def test_generated_images_not_asked_for_are_neither_held_nor_charged(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator
) -> None:
    """A request that asks for no pictures holds nothing for them, so a provider that
    returns some anyway cannot overdraw a balance with them."""
    price_model(gateway, output_image_micros=GENERATED)
    gateway.channel.base_url = sim.channel_url("images=3")
    gateway.channel.save()
    caught_up(relay_app)
    body = {"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "Say hi."}]}
    assert post(gateway, "/v1/chat/completions", body).status_code == 200
    [event] = usage_events(1)
    assert event.output_images == 0 and "output_image" not in event.charges
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    asked = worst_case_cost_micros(price, prompt_bytes=100, max_output_tokens=16)
    plain = worst_case_cost_micros(
        price, prompt_bytes=100, max_output_tokens=16, input_images=0, output_images=0
    )
    assert asked - plain == 16 * GENERATED  # asked for: every output token may be a picture


def test_a_balance_is_never_overdrawn_by_images(
    relay_app: RelayApp, gateway: Gateway, sim: Simulator, relay_process: str
) -> None:
    """Images dearer than all the request's tokens: a hold that left them out would let
    5K requests through on a balance for K."""
    price_model(gateway, input_per_mtok=0, input_image_micros=PER_IMAGE)
    gateway.channel.base_url = sim.channel_url("latency=150")
    gateway.channel.save()
    path, body = chat_request()
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    worst = worst_case_cost_micros(
        price,
        prompt_bytes=len(orjson.dumps(body)),
        max_output_tokens=SIM_TOKENS,
        input_images=2,
    )
    assert worst == 2 * PER_IMAGE + SIM_TOKENS * OUTPUT_PRICE // 1_000_000
    k = 10
    account = prepaid(gateway, k * worst)
    # Both processes see the new terms: the second has served nothing, so it loads them.
    caught_up(relay_app)

    statuses, served = burst((gateway.url, relay_process), path, gateway.secret, body, 5 * k, 50)
    assert set(statuses) <= {200, 429} and k <= len(served) < 5 * k
    events = [e for e in usage_events(len(served), timeout=20) if e.request_id in served]
    assert len(events) == len(served)
    for event in events:
        assert event.charges["input_image"][:3] == [2, PER_IMAGE, 2 * PER_IMAGE]
    usage_charge_post()
    charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
    assert charges.count() == len(events)
    assert sum(e.cost_retail_micros for e in events) <= k * worst
    assert account_balance_micros(account) >= 0
    assert UsageEvent.objects.filter(input_images=2).count() == len(events)
