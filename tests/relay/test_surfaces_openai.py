"""The official openai Python SDK, unmodified, on every OpenAI surface of the relay:
Responses (passed through to a channel that serves it, and translated to chat for one
that does not), embeddings and legacy completions; each request metered once, with its
surface."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from portal.models import CatalogModel, ChannelModel, Organization
from tests.openai_schema import responses_validator, validate, validate_responses_stream
from tests.relay.conftest import PUBLIC_MODEL, Gateway, usage_events
from tests.servers import asgi_body, running_server

TOOLS: list[Any] = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        "strict": False,
    }
]


@pytest.fixture(params=["native", "translated"])
def mode(request: pytest.FixtureRequest, gateway: Gateway) -> str:
    if request.param == "native":
        gateway.channel.native_surfaces = ["responses", "messages"]
        gateway.channel.save()
    return str(request.param)


@pytest.fixture
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.secret, max_retries=0) as sdk:
        yield sdk


def test_responses_create_plain(client: openai.OpenAI, mode: str) -> None:
    raw = client.responses.with_raw_response.create(
        model=PUBLIC_MODEL, input="Say hello", instructions="Be brief", max_output_tokens=100
    )
    responses_validator("Response").validate(raw.http_response.json())
    response = raw.parse()
    assert response.model == PUBLIC_MODEL
    assert response.output_text.startswith("tok0 tok1")
    assert response.usage is not None
    [event] = usage_events(1)
    assert event.surface == "responses" and event.status_code == 200 and not event.estimated
    assert event.prompt_tokens == response.usage.input_tokens
    assert event.completion_tokens == response.usage.output_tokens


def test_responses_create_streamed(client: openai.OpenAI, mode: str, gateway: Gateway) -> None:
    events = list(client.responses.create(model=PUBLIC_MODEL, input="Say hello", stream=True))
    assert events[0].type == "response.created"
    final = events[-1]
    assert final.type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == final.response.output_text
    assert final.response.model == PUBLIC_MODEL
    [event] = usage_events(1)
    assert event.surface == "responses" and event.stream and event.completed
    assert event.completion_tokens == final.response.usage.output_tokens


def test_responses_stream_matches_the_schema(gateway: Gateway, mode: str) -> None:
    body = {"model": PUBLIC_MODEL, "input": "Say hello", "stream": True, "tools": TOOLS}
    text = gateway.client.post("/v1/responses", json=body).text
    events = validate_responses_stream(text)
    assert events[-1]["response"]["usage"]["output_tokens"] > 0
    assert any(e["type"] == "response.function_call_arguments.done" for e in events)


def test_function_tool_round_trip(client: openai.OpenAI, mode: str) -> None:
    first = client.responses.create(model=PUBLIC_MODEL, input="Weather in Oslo?", tools=TOOLS)
    [call] = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather"
    second = client.responses.create(
        model=PUBLIC_MODEL,
        tools=TOOLS,
        input=[
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "type": "function_call",
                "call_id": call.call_id,
                "name": call.name,
                "arguments": call.arguments,
            },
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"},
        ],
    )
    assert second.output_text.startswith("tok0")
    assert len(usage_events(2)) == 2


def test_previous_response_id_and_stored_responses_on_pass_through(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    gateway.channel.native_surfaces = ["responses"]
    gateway.channel.save()
    first = client.responses.create(model=PUBLIC_MODEL, input="Remember the word kiwi")
    second = client.responses.create(
        model=PUBLIC_MODEL, input="What was the word?", previous_response_id=first.id
    )
    assert second.previous_response_id == first.id
    # the simulator counted the first turn's input and output into the prompt
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == first.output_text
    assert got.model == PUBLIC_MODEL
    items = client.responses.input_items.list(first.id)
    assert items.data[0].content[0].text == "Remember the word kiwi"
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    assert len(usage_events(2)) == 2  # retrieval and deletion are not billed


def test_a_streamed_response_keeps_one_id_that_opens_it(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    """The id a pass-through stream's first events give is the one its last gives (the
    seal is made once per stream and reused), and it reaches the stored response."""
    gateway.channel.native_surfaces = ["responses"]
    gateway.channel.save()
    events = list(client.responses.create(model=PUBLIC_MODEL, input="Say hello", stream=True))
    ids = [e.response.id for e in events if getattr(e, "response", None) is not None]
    assert len(ids) >= 2 and len(set(ids)) == 1
    assert ids[0].startswith("resp_") and "." in ids[0]  # sealed, not the upstream's own
    got = client.responses.retrieve(ids[0])
    assert got.id == ids[0] and got.output_text == events[-1].response.output_text


def test_another_tenant_cannot_reach_a_response(
    client: openai.OpenAI, gateway: Gateway, platform_org: Organization
) -> None:
    gateway.channel.native_surfaces = ["responses"]
    gateway.channel.save()
    made = client.responses.create(model=PUBLIC_MODEL, input="private")
    other = Organization.objects.create(
        name="Other", slug="other", kind="tenant", parent=platform_org
    )
    stranger = Gateway(**{**gateway.__dict__, "tenant": other}).new_key(name="stranger")
    headers = {"Authorization": f"Bearer {stranger}"}
    for method, path in (
        ("GET", f"/v1/responses/{made.id}"),
        ("DELETE", f"/v1/responses/{made.id}"),
        ("GET", f"/v1/responses/{made.id}/input_items"),
        ("POST", f"/v1/responses/{made.id}/cancel"),
    ):
        answer = httpx.request(method, gateway.url + path, headers=headers)
        assert answer.status_code == 404, (method, path, answer.text)
    refused = httpx.post(
        gateway.url + "/v1/responses",
        headers=headers,
        json={"model": PUBLIC_MODEL, "input": "x", "previous_response_id": made.id},
    )
    assert refused.status_code == 400
    assert client.responses.retrieve(made.id).id == made.id  # still there for its owner


def test_previous_response_id_on_a_translated_path_is_a_clear_400(
    client: openai.OpenAI, gateway: Gateway
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=PUBLIC_MODEL, input="x", previous_response_id="resp_abc")
    assert "previous_response_id" in str(refused.value)


def test_input_tokens(gateway: Gateway, mode: str) -> None:
    answer = gateway.client.post(
        "/v1/responses/input_tokens", json={"model": PUBLIC_MODEL, "input": "one two three"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["object"] == "response.input_tokens"
    assert answer.json()["input_tokens"] > 0


@pytest.fixture
def embedding_model(gateway: Gateway) -> str:
    model = CatalogModel.objects.create(public_id="tollgate-embed", surfaces=["embeddings"])
    ChannelModel.objects.create(channel=gateway.channel, model=model, upstream_name="sim-embed")
    gateway.price(model)
    return model.public_id


def test_embeddings_float_and_base64(client: openai.OpenAI, embedding_model: str) -> None:
    raw = client.embeddings.with_raw_response.create(
        model=embedding_model, input=["one two", "three"], encoding_format="float"
    )
    validate(raw.http_response.json(), "CreateEmbeddingResponse")
    floats = raw.parse()
    assert floats.model == embedding_model and len(floats.data) == 2
    packed = client.embeddings.create(
        model=embedding_model, input=["one two", "three"], encoding_format="base64"
    )
    assert isinstance(packed.data[0].embedding, str)
    assert b64_floats(packed.data[0].embedding) == floats.data[0].embedding
    # Without a format the SDK asks for base64 itself and decodes it.
    default = client.embeddings.create(model=embedding_model, input="one two", dimensions=4)
    assert default.data[0].embedding == floats.data[0].embedding[:4]
    events = usage_events(3)
    assert {e.surface for e in events} == {"embeddings"}
    assert events[0].prompt_tokens == 3 and events[0].completion_tokens == 0


# An embeddings answer as a provider may format it: spaced out, with numbers written in
# ways a JSON library would not write them back (orjson: 0.5, 0.001, 120.0).
_SPACED_VECTORS = b"[0.50, 1e-3, -1.20E+2, 0.1000000000000000055511151231257827]"


async def _spaced_embeddings(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = await asgi_body(receive)
    model = orjson.loads(body)["model"]
    # A channel that names the model twice, plainly or behind an escape: a JSON parser
    # keeps the last.
    first = {
        "twice-embed": b'"model": "upstream-version-7", ',
        "escaped-embed": b'"mod\\u0065l": "upstream-version-8", ',
    }.get(model, b"")
    answer = (
        b'{ "object": "list",\n  ' + first + b'"data": [ { "object": "embedding", "index": 0, '
        b'"embedding": ' + _SPACED_VECTORS + b" } ],\n"
        b'  "model": ' + orjson.dumps(model) + b',\n  "usage": { "prompt_tokens": 7, '
        b'"total_tokens": 7 } }'
    )
    head = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": answer})


def test_an_embeddings_answer_naming_the_public_model_goes_out_as_it_came(
    gateway: Gateway,
) -> None:
    """No vector is parsed and written out again when nothing in the answer changes; when
    the channel names the model otherwise, or twice, only the name changes. All are
    metered."""
    same = CatalogModel.objects.create(public_id="same-embed", surfaces=["embeddings"])
    renamed = CatalogModel.objects.create(public_id="public-embed", surfaces=["embeddings"])
    twice = CatalogModel.objects.create(public_id="twice-embed", surfaces=["embeddings"])
    escaped = CatalogModel.objects.create(public_id="escaped-embed", surfaces=["embeddings"])
    for model, upstream_name in (
        (same, "same-embed"),
        (renamed, "upstream-embed"),
        (twice, "twice-embed"),
        (escaped, "escaped-embed"),
    ):
        ChannelModel.objects.create(
            channel=gateway.channel, model=model, upstream_name=upstream_name
        )
        gateway.price(model)
    with running_server(_spaced_embeddings) as url:
        gateway.channel.base_url = f"{url}/v1"
        gateway.channel.save()
        deadline = time.monotonic() + 10
        sent = 0
        while True:  # the relay reloads its routes within a moment of the change
            answer = gateway.client.post(
                "/v1/embeddings", json={"model": "same-embed", "input": "seven"}
            )
            sent += 1
            if _SPACED_VECTORS in answer.content or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status_code == 200, answer.text
        assert answer.content.startswith(b'{ "object": "list",\n')
        assert b'"model": "same-embed"' in answer.content
        other = gateway.client.post(
            "/v1/embeddings", json={"model": "public-embed", "input": "seven"}
        )
        doubled = [
            gateway.client.post("/v1/embeddings", json={"model": name, "input": "seven"})
            for name in ("twice-embed", "escaped-embed")
        ]
    assert other.status_code == 200, other.text
    parsed = other.json()
    assert parsed["model"] == "public-embed" and b"upstream-embed" not in other.content
    assert parsed["data"][0]["embedding"] == orjson.loads(_SPACED_VECTORS)
    for answer, name in zip(doubled, ("twice-embed", "escaped-embed"), strict=True):
        assert answer.status_code == 200, answer.text
        assert answer.content.count(b'"model"') == 1, answer.content[:200]
        assert b"upstream-version" not in answer.content and b"\\u" not in answer.content
        assert answer.json()["model"] == name
    events = usage_events(sent + 3)  # those sent before the reload were metered too
    assert len(events) == sent + 3
    assert [e.model for e in events][-4:] == [
        "same-embed",
        "public-embed",
        "twice-embed",
        "escaped-embed",
    ]
    assert all(e.prompt_tokens == 7 and e.status_code == 200 for e in events[-4:])


def test_embedding_model_is_not_offered_to_chat(
    client: openai.OpenAI, gateway: Gateway, embedding_model: str
) -> None:
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=embedding_model, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=PUBLIC_MODEL, input="x")


def test_completions_plain_and_streamed(client: openai.OpenAI, gateway: Gateway) -> None:
    plain = client.completions.create(model=PUBLIC_MODEL, prompt="Say this", max_tokens=5)
    assert plain.model == PUBLIC_MODEL
    assert plain.choices[0].text == "tok0 tok1 tok2 tok3 tok4"
    stream = client.completions.create(
        model=PUBLIC_MODEL, prompt="Say this", max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    assert all(c.usage is None for c in chunks)  # the usage chunk the relay asked for is dropped
    echoed = client.completions.create(
        model=PUBLIC_MODEL, prompt="Say this", max_tokens=2, echo=True, logprobs=1, suffix="!"
    )
    assert echoed.choices[0].text.startswith("Say this")
    events = usage_events(3)
    assert {e.surface for e in events} == {"completions"}
    assert events[1].stream and events[1].completion_tokens == 5 and not events[1].estimated
    sent = [r["body"] for r in gateway_requests(gateway)]
    assert sent[1]["stream_options"] == {"include_usage": True}


def gateway_requests(gateway: Gateway) -> list[dict[str, Any]]:
    base = gateway.channel.base_url.split("/sim/")[0]
    return httpx.get(base + "/_sim/requests").json()["data"]


def test_surface_restricted_key(gateway: Gateway) -> None:
    secret = gateway.new_key(name="chat-only", allowed_surfaces=["chat"])
    headers = {"Authorization": f"Bearer {secret}"}
    refused = httpx.post(
        gateway.url + "/v1/responses", headers=headers, json={"model": PUBLIC_MODEL, "input": "x"}
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "surface_not_allowed"
    ok = httpx.post(
        gateway.url + "/v1/chat/completions",
        headers=headers,
        json={"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "x"}]},
    )
    assert ok.status_code == 200


def test_models_list_only_what_the_key_may_use(gateway: Gateway, embedding_model: str) -> None:
    secret = gateway.new_key(name="embed-only", allowed_surfaces=["embeddings"])
    listed = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})
    assert [m["id"] for m in listed.json()["data"]] == [embedding_model]
    everything = gateway.client.get("/v1/models").json()["data"]
    assert {m["id"] for m in everything} == {PUBLIC_MODEL, embedding_model}


def b64_floats(text: str) -> list[float]:
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def surface_counts(gateway: Gateway) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(gateway.client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "tollgate_surface_requests_total":
                counts[(sample.labels["surface"], sample.labels["status"])] = sample.value
    return counts


def test_metrics_count_requests_per_surface(client: openai.OpenAI, gateway: Gateway) -> None:
    before = surface_counts(gateway)
    client.responses.create(model=PUBLIC_MODEL, input="Say hello")
    client.completions.create(model=PUBLIC_MODEL, prompt="Say this", max_tokens=2)
    usage_events(2)
    after = surface_counts(gateway)
    for key in (("responses", "200"), ("completions", "200")):
        assert after[key] - before.get(key, 0.0) == 1.0
