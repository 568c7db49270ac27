"""Structured output on Bedrock: a client's JSON schema reaches Converse as
``outputConfig.textFormat`` (the field names and the schema-as-a-string of botocore's
service model), and the answer is JSON in that shape; what Converse cannot constrain (JSON
mode, a format without its schema) is refused before anything is sent, never answered in
free text. The simulator checks every Converse request against the service model, so a
misshapen ``outputConfig`` fails here as it would at AWS."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest

from relay.providers import client
from relay.providers.base import FailureKind
from relay.providers.bedrock import request_body
from relay.providers.bedrock_auth import sign
from relay.simulator.native.bedrock import schema_problem, shape_problem
from relay.translate import canonical as c
from relay.translate import messages
from tests.relay.conftest import PUBLIC_MODEL, Gateway
from tests.relay.providers.conftest import (
    CHAT,
    NativeSim,
    canonical,
    complete,
    configure,
    failure,
    run,
    stream,
    summarise,
)
from tests.relay.providers.test_bedrock import MODEL, adapter

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
JSON_SCHEMA = {
    **CHAT,
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "reply", "schema": SCHEMA, "strict": True},
    },
}
OUTPUT_CONFIG = {
    "textFormat": {
        "type": "json_schema",
        "structure": {"jsonSchema": {"schema": orjson.dumps(SCHEMA).decode(), "name": "reply"}},
    }
}


def sent(sim: NativeSim) -> dict[str, Any]:
    body: dict[str, Any] = sim.requests()[-1]["body"]
    return body


def test_a_json_schema_becomes_converse_output_config(native_sim: NativeSim) -> None:
    answer = complete(adapter(native_sim, "tokens=3"), JSON_SCHEMA, MODEL)
    assert sent(native_sim)["outputConfig"] == OUTPUT_CONFIG
    assert orjson.loads(c.text_of(answer.parts)) == {"answer": "tok0 tok1 tok2"}
    assert answer.usage is not None and answer.usage.output_tokens == 3


def test_a_streamed_answer_is_json_too(native_sim: NativeSim) -> None:
    streamed = summarise(stream(adapter(native_sim, "tokens=3"), JSON_SCHEMA, MODEL))
    assert sent(native_sim)["outputConfig"] == OUTPUT_CONFIG
    assert orjson.loads(streamed.text) == {"answer": "tok0 tok1 tok2"}


def test_a_messages_clients_output_format_is_sent(native_sim: NativeSim) -> None:
    body = {
        "model": "m",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Reply in JSON."}],
        "output_format": {"type": "json_schema", "schema": SCHEMA},
    }
    request = messages.request_to_canonical(body)
    answer = run(
        lambda http: client.complete(adapter(native_sim), http, request, upstream_model=MODEL)
    )
    definition = sent(native_sim)["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    assert orjson.loads(definition["schema"]) == SCHEMA
    assert set(orjson.loads(c.text_of(answer.parts))) == {"answer"}


@pytest.mark.parametrize(
    ("response_format", "said"),
    [
        ({"type": "json_object"}, "no JSON mode"),
        ({"type": "json_schema", "json_schema": {"name": "reply"}}, "needs a JSON schema"),
    ],
)
def test_what_converse_cannot_constrain_is_refused_unsent(
    native_sim: NativeSim, response_format: dict[str, Any], said: str
) -> None:
    asked = {**CHAT, "response_format": response_format}
    error = failure(lambda: complete(adapter(native_sim), asked, MODEL))
    assert error.failure.kind is FailureKind.CLIENT and error.failure.status == 400
    assert said in error.failure.message
    assert native_sim.requests() == []


def test_the_simulator_checks_output_config_against_the_service_model() -> None:
    body = orjson.loads(request_body(canonical(JSON_SCHEMA), model=MODEL))
    assert shape_problem(body, MODEL) is None
    assert shape_problem(body, MODEL, "converse-stream") is None
    assert schema_problem(body) is None
    # The schema as an object rather than the string the model defines: refused.
    inner = body["outputConfig"]["textFormat"]["structure"]["jsonSchema"]
    as_object = {**inner, "schema": SCHEMA}
    wrong = {**body, "outputConfig": {"textFormat": {**OUTPUT_CONFIG["textFormat"]}}}
    wrong["outputConfig"]["textFormat"]["structure"] = {"jsonSchema": as_object}
    assert "jsonSchema.schema" in (shape_problem(wrong, MODEL) or "")
    # A type outside the enum, a missing structure, an unknown member.
    for text_format, problem in (
        ({**OUTPUT_CONFIG["textFormat"], "type": "jsonSchema"}, "enum value set"),
        ({"type": "json_schema"}, 'required parameter in outputConfig.textFormat: "structure"'),
        ({**OUTPUT_CONFIG["textFormat"], "strict": True}, "Unknown parameter"),
    ):
        said = shape_problem({**body, "outputConfig": {"textFormat": text_format}}, MODEL)
        assert said is not None and problem in said, said
    broken = {**inner, "schema": "{not json"}
    broken_body = {**body, "outputConfig": {"textFormat": {"type": "json_schema"}}}
    broken_body["outputConfig"]["textFormat"]["structure"] = {"jsonSchema": broken}
    assert schema_problem(broken_body) is not None


def test_a_misshapen_request_is_a_validation_exception(native_sim: NativeSim) -> None:
    """What the service model refuses never reaches the model: AWS's 400 and its type."""
    bedrock = adapter(native_sim)
    body = orjson.loads(request_body(canonical(JSON_SCHEMA), model=MODEL))
    body["outputConfig"]["textFormat"]["structure"]["jsonSchema"]["schema"] = SCHEMA
    content = orjson.dumps(body)
    url = bedrock.config.url(MODEL, stream=False)
    headers = {"content-type": "application/json", "accept": "application/json"}
    signed = sign(bedrock.config.credentials, method="POST", url=url, headers=headers, body=content)

    async def send(http: httpx.AsyncClient) -> httpx.Response:
        return await http.post(url, headers=signed, content=content)

    response = run(send)
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("ValidationException:")
    assert "jsonSchema.schema" in response.json()["message"]


def test_clients_through_the_relay(
    gateway: Gateway, native_sim: NativeSim, sa_info: dict[str, Any]
) -> None:
    """Chat and Messages clients get schema-shaped JSON from a Bedrock channel; a chat
    client asking for JSON mode is told the model cannot serve it, not given free text."""
    configure(gateway.channel, "bedrock", native_sim, sa_info, "tokens=2")
    sdk = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.secret, max_retries=0)
    schema_format: Any = JSON_SCHEMA["response_format"]
    chat = sdk.chat.completions.create(
        model=PUBLIC_MODEL,
        messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format=schema_format,
    )
    assert orjson.loads(chat.choices[0].message.content or "") == {"answer": "tok0 tok1"}
    assert "outputConfig" in sent(native_sim)
    sent_before = len(native_sim.requests())
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(
            model=PUBLIC_MODEL,
            messages=[{"role": "user", "content": "Reply in JSON."}],
            response_format={"type": "json_object"},
        )
    assert "no JSON mode" in str(refused.value)
    assert len(native_sim.requests()) == sent_before
    sdk.close()
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0) as ant:
        message = ant.messages.create(
            model=PUBLIC_MODEL,
            max_tokens=50,
            messages=[{"role": "user", "content": "Reply in JSON."}],
            extra_body={"output_format": {"type": "json_schema", "schema": SCHEMA}},
        )
    block = message.content[0]
    assert block.type == "text" and orjson.loads(block.text) == {"answer": "tok0 tok1"}
