"""Validate responses against OpenAI's official OpenAPI schemas, the contract Tollgate keeps.

The schemas travel with the tests in ``tests/reference/`` (MIT, OpenAI; see its README).
``validate(instance, "CreateChatCompletionResponse")`` raises ``jsonschema.ValidationError``;
``validate_chat_stream`` checks a whole SSE body, ``validate_responses_stream`` a Responses one.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

__all__ = [
    "REFERENCE_DIR",
    "ValidationError",
    "parse_sse_data",
    "responses_validator",
    "schema_document",
    "validate",
    "validate_chat_stream",
    "validate_responses_stream",
    "validator",
]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
SCHEMA_FILE = "openai-openapi-chat-subset.json"
# The document has no $id; any absolute URI lets its "#/components/..." refs resolve.
DOCUMENT_URI = "urn:tollgate:openai-openapi-chat-subset"


@functools.cache
def schema_document() -> dict[str, Any]:
    """The whole OpenAPI document, parsed once per test run."""
    return json.loads((REFERENCE_DIR / SCHEMA_FILE).read_text(encoding="utf-8"))


@functools.cache
def _registry() -> Registry:
    resource: Resource[Any] = DRAFT202012.create_resource(schema_document())
    return Registry().with_resource(DOCUMENT_URI, resource)


@functools.cache
def validator(schema_name: str) -> Draft202012Validator:
    """A cached validator for ``#/components/schemas/<schema_name>``."""
    if schema_name not in schema_document()["components"]["schemas"]:
        raise KeyError(f"no component schema named {schema_name!r} in {SCHEMA_FILE}")
    schema = {"$ref": f"{DOCUMENT_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=_registry())


def validate(instance: Any, schema_name: str) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``instance`` matches the named schema."""
    validator(schema_name).validate(instance)


def parse_sse_data(text: str) -> list[str]:
    """The ``data`` payloads of a server-sent-events body, in order.

    Follows the SSE rules a client uses: events end at a blank line, several ``data:``
    lines in one event join with newlines, comments (``:``) and other fields are ignored.
    """
    payloads: list[str] = []
    data: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if not line:
            if data:
                payloads.append("\n".join(data))
                data = []
        elif line.startswith("data:"):
            value = line[len("data:") :]
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # an event cut off before its blank line still carried data
        payloads.append("\n".join(data))
    return payloads


def validate_chat_stream(text: str) -> list[dict[str, Any]]:
    """Check a complete chat completion stream and return its chunks, ``[DONE]`` excluded.

    Every chunk must match ``CreateChatCompletionStreamResponse`` and the stream must end
    with ``data: [DONE]``, which is how an OpenAI client knows it was not cut short.
    """
    payloads = parse_sse_data(text)
    if not payloads or payloads[-1] != "[DONE]":
        raise ValidationError("the stream does not end with 'data: [DONE]'")
    chunks = []
    for payload in payloads[:-1]:
        chunk = json.loads(payload)
        validate(chunk, "CreateChatCompletionStreamResponse")
        chunks.append(chunk)
    return chunks


RESPONSES_SCHEMA_FILE = "openai-openapi-responses-subset.json"
RESPONSES_DOCUMENT_URI = "urn:tollgate:openai-openapi-responses-subset"


@functools.cache
def _responses_registry() -> Registry:
    document = json.loads((REFERENCE_DIR / RESPONSES_SCHEMA_FILE).read_text(encoding="utf-8"))
    resource: Resource[Any] = DRAFT202012.create_resource(document)
    return Registry().with_resource(RESPONSES_DOCUMENT_URI, resource)


@functools.cache
def responses_validator(schema_name: str) -> Draft202012Validator:
    """A cached validator for a component of the Responses API subset (``Response``,
    ``ResponseStreamEvent``, ...)."""
    schema = {"$ref": f"{RESPONSES_DOCUMENT_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=_responses_registry())


def validate_responses_stream(text: str) -> list[dict[str, Any]]:
    """Check a Responses API stream: every event matches ``ResponseStreamEvent``, its SSE
    ``event:`` name equals its ``type``, sequence numbers count up from 0, and the last
    event is ``response.completed`` (or ``response.incomplete``). Returns the events."""
    events: list[dict[str, Any]] = []
    name = None
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            event = json.loads(line[len("data:") :].strip())
            if name is not None and name != event.get("type"):
                raise ValidationError(f"event name {name!r} differs from type {event['type']!r}")
            responses_validator("ResponseStreamEvent").validate(event)
            events.append(event)
            name = None
    if [e["sequence_number"] for e in events] != list(range(len(events))):
        raise ValidationError("sequence numbers do not count up from 0")
    if not events or events[-1]["type"] not in ("response.completed", "response.incomplete"):
        raise ValidationError("the stream does not end with response.completed")
    return events
