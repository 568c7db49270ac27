"""Generated pictures behind a translation or a provider adapter are delivered and billed:
Responses served by a chat channel, chat and Responses served by Gemini (``inlineData``),
plain and streamed, through the relay against the loopback simulators. The usage event
counts the pictures the client received, only when it asked for them, within the hold;
a channel that sends many or huge pictures cannot push past the relay's size limits."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from billing.models import LedgerEntry
from billing.pricing import tenant_price_table, worst_case_cost_micros
from billing.selectors import account_balance_micros
from billing.services import model_price_set, usage_charge_post
from relay.dialects import images as image_gate
from tests.openai_schema import responses_validator, validate, validate_responses_stream
from tests.relay.conftest import (
    OUTPUT_PRICE,
    PUBLIC_MODEL,
    SIM_TOKENS,
    Gateway,
    Simulator,
    assert_invoiced,
    burst,
    prepaid,
    price_model,
    sse_chunks,
    usage_events,
)
from tests.relay.providers.conftest import NativeSim, configure

PER_IMAGE = 7_654_321  # micro-units per generated picture: odd, so a wrong count shows


def price_per_image(gateway: Gateway) -> None:
    price_model(gateway, output_image_micros=PER_IMAGE)


def serve(
    gateway: Gateway, channel: str, options: str, sim: Simulator, native: NativeSim, sa: Any
) -> None:
    """Point the gateway's channel at a chat simulator or a Google one, with ``options``."""
    if channel == "chat":
        gateway.channel.base_url = sim.channel_url(options)
        gateway.channel.native_surfaces = []  # Responses requests are translated to chat
        gateway.channel.save()
    else:
        configure(gateway.channel, channel, native, sa, options)


def body_for(dialect: str, stream: bool, asks: bool = True, **extra: Any) -> dict[str, Any]:
    if dialect == "chat":
        body: dict[str, Any] = {
            "model": PUBLIC_MODEL,
            "messages": [{"role": "user", "content": "Draw two cats."}],
        }
        if asks:
            body["modalities"] = ["image", "text"]
    else:
        body = {"model": PUBLIC_MODEL, "input": "Draw two cats."}
        if asks:
            body["tools"] = [{"type": "image_generation"}]
    return {**body, "stream": stream, **extra}


def post(gateway: Gateway, dialect: str, body: dict[str, Any]) -> httpx.Response:
    path = "/v1/chat/completions" if dialect == "chat" else "/v1/responses"
    return gateway.client.post(path, json=body, timeout=60)


def delivered(dialect: str, response: httpx.Response, stream: bool) -> list[bytes]:
    """The pictures the client received (decoded), after checking the answer's shape."""
    if dialect == "chat" and not stream:
        answer = response.json()
        validate(answer, "CreateChatCompletionResponse")
        urls = [i["image_url"]["url"] for i in answer["choices"][0]["message"].get("images", ())]
    elif dialect == "chat":
        chunks, done = sse_chunks(response)
        assert done
        for chunk in chunks:
            validate(chunk, "CreateChatCompletionStreamResponse")
        urls = [
            image["image_url"]["url"]
            for chunk in chunks
            for choice in chunk["choices"]
            for image in choice["delta"].get("images", ())
        ]
    else:
        if stream:
            events = validate_responses_stream(response.text)
            answer = events[-1]["response"]
            done = [
                e["item"]
                for e in events
                if e["type"] == "response.output_item.done"
                and e["item"]["type"] == "image_generation_call"
            ]
            listed = [i for i in answer["output"] if i["type"] == "image_generation_call"]
            assert listed == done  # the last event repeats each picture's item
        else:
            answer = response.json()
        responses_validator("Response").validate(answer)
        urls = [
            "data:image/png;base64," + item["result"]
            for item in answer["output"]
            if item["type"] == "image_generation_call"
        ]
    pictures = []
    for url in urls:
        head, _, data = url.partition(",")
        assert head == "data:image/png;base64"
        pictures.append(base64.b64decode(data))
    return pictures


CASES = [("responses", "chat"), ("chat", "gemini"), ("responses", "gemini"), ("chat", "vertex")]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("dialect", "channel"), CASES, ids=[f"{d}-{c}" for d, c in CASES])
def test_two_generated_images_are_delivered_and_charged_twice_the_price(
    gateway: Gateway,
    sim: Simulator,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    dialect: str,
    channel: str,
    stream: bool,
) -> None:
    price_per_image(gateway)
    serve(gateway, channel, "images=2", sim, native_sim, sa_info)
    response = post(gateway, dialect, body_for(dialect, stream))
    assert response.status_code == 200, response.text
    pictures = delivered(dialect, response, stream)
    assert len(pictures) == 2 and all(p.startswith(b"\x89PNG") for p in pictures)
    if channel != "chat":  # the adapter asked Google for pictures; else none come back
        [sent] = [r for r in native_sim.requests() if "generatecontent" in r["path"].lower()]
        config = sent["body"]["generationConfig"]
        assert config["responseModalities"] == ["TEXT", "IMAGE"]

    [event] = usage_events(1)
    assert event.surface == dialect and event.status_code == 200 and event.completed
    assert (event.input_images, event.output_images) == (0, 2)
    assert event.charges["output_image"] == [2, PER_IMAGE, 2 * PER_IMAGE, PER_IMAGE, 2 * PER_IMAGE]
    tokens = sum(c[2] for d, c in event.charges.items() if d != "output_image")
    assert event.cost_retail_micros == tokens + 2 * PER_IMAGE

    assert_invoiced(event, "output_image", 2, PER_IMAGE)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("dialect", ["responses", "messages"])
def test_pictures_a_channel_volunteers_are_neither_delivered_nor_billed(
    gateway: Gateway, sim: Simulator, dialect: str, stream: bool
) -> None:
    """The chat simulator returns pictures whatever was asked: a translated request that
    did not ask for them (Messages cannot) gets none, and pays for none."""
    price_per_image(gateway)
    gateway.channel.base_url = sim.channel_url("images=3")
    gateway.channel.save()
    if dialect == "messages":
        path = "/v1/messages"
        body: dict[str, Any] = {
            "model": PUBLIC_MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "Draw three cats."}],
            "stream": stream,
        }
    else:
        path, body = "/v1/responses", body_for("responses", stream, asks=False)
    response = gateway.client.post(path, json=body, timeout=60)
    assert response.status_code == 200, response.text
    assert "iVBORw0KGgo" not in response.text  # no PNG went out
    [sent] = sim.requests()
    assert "modalities" not in sent["body"]
    [event] = usage_events(1)
    assert event.output_images == 0 and "output_image" not in event.charges


def test_a_request_for_pictures_to_a_model_that_makes_none_is_refused(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    configure(gateway.channel, "anthropic", native_sim, sa_info)
    response = post(gateway, "chat", body_for("chat", False))
    assert response.status_code == 400
    assert "cannot generate images" in response.json()["error"]["message"]
    assert native_sim.requests() == []


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(("dialect", "channel"), [("responses", "chat"), ("chat", "gemini")])
def test_many_pictures_are_cut_at_the_cap_and_the_hold(
    gateway: Gateway,
    sim: Simulator,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    dialect: str,
    channel: str,
    stream: bool,
) -> None:
    """A channel that sends 40 pictures delivers (and bills) at most MAX_IMAGES, and never
    more than the output cap the hold was sized on (one picture per output token)."""
    price_per_image(gateway)
    serve(gateway, channel, "images=40", sim, native_sim, sa_info)
    response = post(gateway, dialect, body_for(dialect, stream))
    assert response.status_code == 200, response.text
    assert len(delivered(dialect, response, stream)) == image_gate.MAX_IMAGES
    cap = "max_output_tokens" if dialect == "responses" else "max_completion_tokens"
    response = post(gateway, dialect, body_for(dialect, stream, **{cap: 3}))
    assert response.status_code == 200, response.text
    assert len(delivered(dialect, response, stream)) == 3
    first, second = usage_events(2)
    assert (first.output_images, second.output_images) == (image_gate.MAX_IMAGES, 3)
    assert second.charges["output_image"][:3] == [3, PER_IMAGE, 3 * PER_IMAGE]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_huge_pictures_stop_at_the_answer_budget(
    gateway: Gateway,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    stream: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Pictures beyond the answer's picture budget are dropped, not kept for the Responses
    stream's last event, and not billed (the budget is lowered so the test stays small)."""
    monkeypatch.setattr(image_gate, "MAX_IMAGE_CHARS", 2_500_000)
    price_per_image(gateway)
    configure(gateway.channel, "gemini", native_sim, sa_info, "images=4,image_size=1000000")
    response = post(gateway, "responses", body_for("responses", stream))
    assert response.status_code == 200, response.text
    assert len(delivered("responses", response, stream)) == 2
    # A stream repeats each delivered picture in its last event; nothing more is kept.
    assert len(response.content) < (2 if stream else 1) * 2_500_000 + 100_000
    [event] = usage_events(1)
    assert event.output_images == 2
    assert event.charges["output_image"][:3] == [2, PER_IMAGE, 2 * PER_IMAGE]


def test_a_picture_beyond_the_stream_event_limit_breaks_the_stream_unbilled(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """One picture larger than a stream event may be (16 MiB) is never buffered whole:
    the stream ends with an error, and no picture is billed."""
    price_per_image(gateway)
    configure(gateway.channel, "gemini", native_sim, sa_info, "images=1,image_size=17000000")
    response = post(gateway, "chat", body_for("chat", True))
    assert response.status_code == 200
    chunks, done = sse_chunks(response)
    assert "error" in chunks[-1] and not done
    [event] = usage_events(1)
    assert event.output_images == 0 and "output_image" not in event.charges


@pytest.mark.services
@pytest.mark.parametrize(("dialect", "channel"), [("responses", "chat"), ("chat", "gemini")])
def test_a_balance_is_never_overdrawn_by_generated_images(
    gateway: Gateway,
    sim: Simulator,
    native_sim: NativeSim,
    sa_info: dict[str, Any],
    relay_process: str,
    dialect: str,
    channel: str,
) -> None:
    """Pictures dearer than all else, as many as the output cap: the hold (one picture per
    output token) is then the real cost, so a prepaid balance for K worst cases serves at
    least K of 5K concurrent requests through two relay processes and is never overdrawn."""
    model_price_set(
        price_list=gateway.price_list,
        model=gateway.model,
        input_per_mtok=0,
        output_per_mtok=OUTPUT_PRICE,
        output_image_micros=PER_IMAGE,
        actor="test",
    )
    serve(gateway, channel, f"images={SIM_TOKENS},latency=150", sim, native_sim, sa_info)
    cap = "max_output_tokens" if dialect == "responses" else "max_completion_tokens"
    body = body_for(dialect, False, **{cap: SIM_TOKENS})
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    worst = worst_case_cost_micros(
        price,
        prompt_bytes=len(orjson.dumps(body)),
        max_output_tokens=SIM_TOKENS,
        output_images=SIM_TOKENS,
    )
    assert worst == SIM_TOKENS * (PER_IMAGE + OUTPUT_PRICE // 1_000_000)
    k = 6
    account = prepaid(gateway, k * worst)
    path = "/v1/chat/completions" if dialect == "chat" else "/v1/responses"

    statuses, served = burst((gateway.url, relay_process), path, gateway.secret, body, 5 * k, 30)
    assert set(statuses) <= {200, 429} and k <= len(served) < 5 * k
    events = [e for e in usage_events(len(served), timeout=30) if e.request_id in served]
    assert len(events) == len(served)
    for event in events:
        assert event.output_images == SIM_TOKENS
        assert event.cost_retail_micros == worst  # the hold was exactly the cost
    usage_charge_post()
    charges = LedgerEntry.objects.filter(account=account, kind=LedgerEntry.Kind.USAGE)
    assert charges.count() == len(events)
    assert account_balance_micros(account) >= 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("dialect", ["chat", "responses"])
def test_a_passed_through_answer_bills_no_more_pictures_than_were_held(
    gateway: Gateway, sim: Simulator, dialect: str, stream: bool
) -> None:
    """Passed through, the answer goes out as the channel sent it, but a channel that sends
    40 pictures bills at most MAX_IMAGES, and never more than the output cap held for."""
    price_per_image(gateway)
    gateway.channel.base_url = sim.channel_url("images=40")
    gateway.channel.native_surfaces = ["responses"] if dialect == "responses" else []
    gateway.channel.save()
    # OpenAI's Responses API takes no output cap below 16 (= MAX_IMAGES): chat shows the cap.
    bodies = [body_for(dialect, stream)]
    if dialect == "chat":
        bodies.append(body_for(dialect, stream, max_completion_tokens=3))
    for body in bodies:
        response = post(gateway, dialect, body)
        assert response.status_code == 200, response.text
    events = usage_events(len(bodies))
    assert [e.output_images for e in events] == [image_gate.MAX_IMAGES, 3][: len(bodies)]
    assert events[-1].charges["output_image"][0] == events[-1].output_images
