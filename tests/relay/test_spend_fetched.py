"""Inputs the provider fetches itself by URL (a picture, a document, a file) are held for:
their tokens are not among the request's bytes, which bound the rest of its prompt, so a
short request naming a long PDF would otherwise be held at a fraction of its cost and
overdraw a prepaid balance. Each is allowed ``RELAY_URL_IMAGE_TOKENS`` or
``RELAY_URL_FILE_TOKENS`` of prompt at the dearest prompt price; inline content is
bounded by its bytes as before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from billing.pricing import tenant_price_table, worst_case_cost_micros
from tests.relay.conftest import (
    PUBLIC_MODEL,
    SIM_TOKENS,
    Gateway,
    Simulator,
    prepaid,
    price_model,
    usage_events,
)

pytestmark = pytest.mark.services

IMAGE_TOKENS = 3_000
FILE_TOKENS = 50_000
DATA_URL = "data:image/png;base64,iVBORw0KGgo="
PICTURE = "https://pictures.example/cat.png"
PDF = "https://papers.example/long.pdf"


def chat(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "What is this?"}]
    content.append({"type": "image_url", "image_url": {"url": url}})  # type: ignore[dict-item]
    return {
        "model": PUBLIC_MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": SIM_TOKENS,
    }


def responses(url: str, file_url: str | None) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": url},
    ]
    if file_url:
        content.append({"type": "input_file", "file_url": file_url})
    return {
        "model": PUBLIC_MODEL,
        "input": [{"role": "user", "content": content}],
        "max_output_tokens": SIM_TOKENS,
    }


def messages(url: str, pdf: str | None) -> dict[str, Any]:
    """The picture inside a tool's result, the document in the question."""
    picture = (
        {"type": "url", "url": url}
        if not url.startswith("data:")
        else {"type": "base64", "media_type": "image/png", "data": url.split(",")[1]}
    )
    question: list[dict[str, Any]] = [{"type": "text", "text": "Take a photo."}]
    if pdf:
        question.append({"type": "document", "source": {"type": "url", "url": pdf}})
    return {
        "model": PUBLIC_MODEL,
        "max_tokens": SIM_TOKENS,
        "messages": [
            {"role": "user", "content": question},
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
                        "content": [{"type": "image", "source": picture}],
                    }
                ],
            },
        ],
    }


# Each request as sent with its fetched inputs, and the same with none (inline or left
# out), with the prompt tokens the fetched ones are allowed.
CASES = {
    "chat": ("/v1/chat/completions", chat(PICTURE), chat(DATA_URL), IMAGE_TOKENS),
    "responses": (
        "/v1/responses",
        responses(PICTURE, PDF),
        responses(DATA_URL, None),
        IMAGE_TOKENS + FILE_TOKENS,
    ),
    "messages": (
        "/v1/messages",
        messages(PICTURE, PDF),
        messages(DATA_URL, None),
        IMAGE_TOKENS + FILE_TOKENS,
    ),
}


@pytest.mark.parametrize("dialect", list(CASES))
def test_an_input_fetched_by_url_is_held_for(
    gateway: Gateway, sim: Simulator, relay_settings: Any, dialect: str
) -> None:
    relay_settings.RELAY_URL_IMAGE_TOKENS = IMAGE_TOKENS
    relay_settings.RELAY_URL_FILE_TOKENS = FILE_TOKENS
    gateway.channel.native_surfaces = ["responses", "messages"]
    gateway.channel.save()
    price_model(gateway)
    path, fetching, inline, allowance = CASES[dialect]
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail

    def worst(body: dict[str, Any], extra: int = 0) -> int:
        size = len(orjson.dumps(body)) + extra
        return worst_case_cost_micros(
            price, prompt_bytes=size, max_output_tokens=SIM_TOKENS, input_images=1
        )

    held = worst(fetching, allowance)
    assert held > 2 * worst(fetching)  # the allowance outweighs the bytes
    prepaid(gateway, held - 1)
    sim.client.delete("/_sim/requests")
    # Inline, the same request fits the balance; fetched by URL it does not, and the
    # refusal comes before any upstream call.
    assert gateway.client.post(path, json=inline).status_code == 200
    refused = gateway.client.post(path, json=fetching)
    # OpenAI's 429 insufficient_quota; on Anthropic's API its 402 billing_error.
    assert refused.status_code == (402 if dialect == "messages" else 429), refused.text
    assert len(sim.requests()) == 1
    # With the allowance covered, it is served.
    relay_settings.RELAY_URL_IMAGE_TOKENS = relay_settings.RELAY_URL_FILE_TOKENS = 1
    served = gateway.client.post(path, json=fetching)
    assert served.status_code == 200, served.text
    assert len(usage_events(2)) == 2


def test_the_conversation_a_previous_response_names_is_held_for(
    gateway: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    """OpenAI reads the conversation behind ``previous_response_id`` again as prompt: a
    short follow-up is held for ``RELAY_PREVIOUS_RESPONSE_TOKENS`` more than its bytes,
    where it would otherwise be held for a fraction of a long conversation's cost."""
    relay_settings.RELAY_PREVIOUS_RESPONSE_TOKENS = FILE_TOKENS
    gateway.channel.native_surfaces = ["responses"]
    gateway.channel.save()
    price_model(gateway)
    price = tenant_price_table(gateway.tenant.pk)[PUBLIC_MODEL].retail
    first = gateway.client.post(
        "/v1/responses",
        json={"model": PUBLIC_MODEL, "input": "Remember a word.", "max_output_tokens": SIM_TOKENS},
    )
    assert first.status_code == 200, first.text
    follow = {
        "model": PUBLIC_MODEL,
        "input": "Which word?",
        "max_output_tokens": SIM_TOKENS,
        "previous_response_id": first.json()["id"],
    }
    size = len(orjson.dumps(follow))

    def worst(extra: int) -> int:
        return worst_case_cost_micros(
            price, prompt_bytes=size + extra, max_output_tokens=SIM_TOKENS
        )

    assert worst(FILE_TOKENS) > 2 * worst(0)
    prepaid(gateway, worst(FILE_TOKENS) - 1)
    gateway.caught_up()  # the key was served without a balance: its limits change
    sim.client.delete("/_sim/requests")
    refused = gateway.client.post("/v1/responses", json=follow)
    assert refused.status_code == 429, refused.text
    assert sim.requests() == []
    relay_settings.RELAY_PREVIOUS_RESPONSE_TOKENS = 1
    served = gateway.client.post("/v1/responses", json=follow)
    assert served.status_code == 200, served.text
    assert served.json()["previous_response_id"] == first.json()["id"]
