"""What a JSON Schema client sends reaches Google whole: ``response_format``'s schema as
``responseJsonSchema`` and a function's parameters as ``parametersJsonSchema``, on the
Gemini API and on Vertex AI, where Google's OpenAPI subset (``responseSchema``,
``parameters``) would refuse a nullable field's list of types or a ``$ref``, or lose
``additionalProperties``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from relay.providers.base import Adapter
from relay.providers.gemini import GeminiAdapter, GeminiConfig
from relay.providers.vertex import VertexAdapter, VertexConfig
from relay.providers.vertex_auth import VertexTokenSource
from relay.translate import canonical as c
from tests.relay.providers.conftest import (
    CHAT,
    GEMINI_KEY,
    NativeSim,
    complete,
    stream,
    summarise,
    tool_calls,
)

MODEL = "gemini-2.5-flash"
# What OpenAI SDKs make of a Pydantic model with an optional and a nested field: nullable
# types as lists, a definition referred to, no properties beyond those named.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "note": {"type": ["string", "null"]},
        "where": {"$ref": "#/$defs/Place"},
        "days": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]},
    },
    "required": ["city", "note", "where", "days"],
    "additionalProperties": False,
    "$defs": {
        "Place": {
            "type": "object",
            "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
            "required": ["lat", "lon"],
            "additionalProperties": False,
        }
    },
}
# zod-to-json-schema and MCP servers name the dialect; Google reads no such keyword.
DIALECT = {"$schema": "http://json-schema.org/draft-07/schema#"}


def gemini(sim: NativeSim, sa_info: dict[str, Any]) -> Adapter:
    return GeminiAdapter(GeminiConfig(api_key=GEMINI_KEY, base_url=sim.url))


def vertex(sim: NativeSim, sa_info: dict[str, Any]) -> Adapter:
    config = VertexConfig(sa_info, location="us-central1", base_url=sim.url)
    return VertexAdapter(config, VertexTokenSource(sa_info))


MakeAdapter = Callable[[NativeSim, dict[str, Any]], Adapter]
ADAPTERS: list[MakeAdapter] = [gemini, vertex]


@pytest.mark.parametrize("make", ADAPTERS)
def test_a_response_format_schema_goes_as_json_schema(
    native_sim: NativeSim, sa_info: dict[str, Any], make: MakeAdapter
) -> None:
    schema = {"name": "trip", "strict": True, "schema": {**DIALECT, **SCHEMA}}
    asked = {**CHAT, "response_format": {"type": "json_schema", "json_schema": schema}}
    answer = complete(make(native_sim, sa_info), asked, MODEL)
    assert c.text_of(answer.parts).startswith("tok0")
    config = native_sim.requests()[-1]["body"]["generationConfig"]
    assert config == {"responseMimeType": "application/json", "responseJsonSchema": SCHEMA}


@pytest.mark.parametrize("make", ADAPTERS)
def test_function_parameters_go_as_json_schema(
    native_sim: NativeSim, sa_info: dict[str, Any], make: MakeAdapter
) -> None:
    function = {"name": "plan_trip", "description": "Plan a trip", "parameters": SCHEMA}
    asked = {**CHAT, "tools": [{"type": "function", "function": function}]}
    adapter = make(native_sim, sa_info)
    (call,) = tool_calls(complete(adapter, asked, MODEL))
    assert call.name == "plan_trip"
    streamed = summarise(stream(adapter, asked, MODEL))
    assert [found[1] for found in streamed.calls.values()] == ["plan_trip"]
    for sent in native_sim.requests()[-2:]:
        assert sent["body"]["tools"] == [
            {
                "functionDeclarations": [
                    {
                        "name": "plan_trip",
                        "description": "Plan a trip",
                        "parametersJsonSchema": SCHEMA,
                    }
                ]
            }
        ]


def _generate(sim: NativeSim, body: dict[str, Any]) -> httpx.Response:
    url = f"{sim.url}/v1beta/models/{MODEL}:generateContent"
    return httpx.post(url, json=body, headers={"x-goog-api-key": GEMINI_KEY}, trust_env=False)


HELLO = [{"role": "user", "parts": [{"text": "Hello"}]}]
REF = {"type": "object", "properties": {"where": {"$ref": "#/$defs/Place"}}}
REFUSED = [
    (
        {"generationConfig": {"responseMimeType": "application/json", "responseSchema": SCHEMA}},
        "Unknown name \"type\" at 'generation_config.response_schema.properties[1].value': "
        "Proto field is not repeating, cannot start list.",
    ),
    (
        {"tools": [{"functionDeclarations": [{"name": "f", "parameters": SCHEMA}]}]},
        'Unknown name "type" at \'tools[0].function_declarations[0].parameters'
        ".properties[1].value': Proto field is not repeating",
    ),
    (
        {"generationConfig": {"responseMimeType": "application/json", "responseSchema": REF}},
        "Unknown name \"$ref\" at 'generation_config.response_schema.properties[0].value': "
        "Cannot find field.",
    ),
    (
        {
            "generationConfig": {
                "responseMimeType": "application/json",
                "responseSchema": {"type": "object"},
                "responseJsonSchema": SCHEMA,
            }
        },
        "cannot both be set",
    ),
    ({"generationConfig": {"responseJsonSchema": SCHEMA}}, "requires responseMimeType"),
]


@pytest.mark.parametrize(("extra", "message"), REFUSED)
def test_the_simulator_refuses_json_schema_where_google_takes_its_own(
    native_sim: NativeSim, extra: dict[str, Any], message: str
) -> None:
    refused = _generate(native_sim, {"contents": HELLO, **extra})
    assert refused.status_code == 400, refused.text
    assert message in refused.json()["error"]["message"]


def test_the_simulator_takes_googles_own_schema(native_sim: NativeSim) -> None:
    """Google's form of the same constraints (``nullable``, no ``$ref``) is accepted."""
    own = {
        "type": "OBJECT",
        "properties": {"note": {"type": "string", "nullable": True}},
        "required": ["note"],
    }
    config = {"responseMimeType": "application/json", "responseSchema": own}
    tools = [{"functionDeclarations": [{"name": "f", "parameters": own}]}]
    answered = _generate(
        native_sim, {"contents": HELLO, "generationConfig": config, "tools": tools}
    )
    assert answered.status_code == 200, answered.text
