"""What the native protocols share: reading and logging a request, behaviour options, and
the deterministic answer (``tok0 tok1 ...``, or a call of the first tool)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson

from relay.simulator.options import INVALID_BODY, OptionError, SimOptions

if TYPE_CHECKING:
    from relay.simulator.app import SimulatorApp
    from relay.simulator.exchange import SimExchange

# Gemini counts an image as 258 prompt tokens; the simulator does the same for everyone.
IMAGE_TOKENS = 258


def header(scope: Mapping[str, Any], name: str) -> str:
    wanted = name.encode()
    for key, value in scope["headers"]:
        if key.lower() == wanted:
            return str(value.decode("latin-1"))
    return ""


def query(scope: Mapping[str, Any]) -> dict[str, str]:
    raw = scope.get("query_string", b"").decode("latin-1")
    return {name: values[-1] for name, values in parse_qs(raw).items()}


async def read_request(
    app: SimulatorApp, scope: Mapping[str, Any], exchange: SimExchange
) -> tuple[bytes, Any]:
    """The raw body and its JSON (``INVALID_BODY`` if it is not JSON), logged for tests."""
    raw = await exchange.read_body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = INVALID_BODY
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    app.requests.append(
        {
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "headers": headers,
            "body": None if body is INVALID_BODY else body,
            "raw": raw,
        }
    )
    return raw, body


async def gate(
    app: SimulatorApp, scope: Mapping[str, Any], exchange: SimExchange, options: SimOptions
) -> int | bool | None:
    """Latency, hangs and failures: False if nothing more should be sent, a status if the
    provider should answer with that error, None to answer normally."""
    if not await exchange.pause(options.latency_ms / 1000):
        return False
    if options.hang:
        await exchange.pause(None)
        return False
    status = options.fail
    if options.fail_first:
        prefix = scope["path"]
        seen = app.fail_first_seen.get(prefix, 0)
        app.fail_first_seen[prefix] = seen + 1
        status = (status or 500) if seen < options.fail_first else None
    return status


def option_error(options: SimOptions | OptionError) -> str | None:
    return str(options) if isinstance(options, OptionError) else None


@dataclasses.dataclass(frozen=True, slots=True)
class NativePlan:
    """The answer, in provider-neutral terms."""

    pieces: list[str]
    tool_name: str | None
    truncated: bool
    prompt_tokens: int  # every prompt token, cached or not
    cache_read: int
    cache_write: int
    reasoning: int
    options: SimOptions = dataclasses.field(default_factory=SimOptions)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    @property
    def output_tokens(self) -> int:
        return (1 if self.tool_name else len(self.pieces)) + self.reasoning

    @property
    def uncached_prompt(self) -> int:
        return max(self.prompt_tokens - self.cache_read - self.cache_write, 0)


def count_text(texts: list[str], messages: int, images: int) -> int:
    """The simulator's prompt size: 3 + 4 per message + words + 258 per image."""
    return 3 + 4 * messages + sum(len(t.split()) for t in texts) + IMAGE_TOKENS * images


def plan(
    options: SimOptions,
    *,
    prompt_tokens: int,
    max_tokens: int | None,
    tool_name: str | None,
    thinking: bool,
) -> NativePlan:
    produced = options.tokens if max_tokens is None else min(options.tokens, max_tokens)
    pieces = [f"tok{i}" if i == 0 else f" tok{i}" for i in range(produced)]
    cache_read = min(options.cached, prompt_tokens)
    cache_write = min(options.cache_write, prompt_tokens - cache_read)
    return NativePlan(
        pieces=pieces,
        tool_name=tool_name,
        truncated=produced < options.tokens,
        prompt_tokens=prompt_tokens,
        cache_read=cache_read,
        cache_write=cache_write,
        reasoning=options.reasoning if thinking or options.reasoning else 0,
        options=options,
    )
