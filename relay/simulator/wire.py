"""What every simulated surface shares: deterministic text, word counts, SSE framing and
a stream player that honours the fault options (hang_after, reset_after, tps)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from relay.simulator.exchange import SimExchange, SimulatedReset
from relay.simulator.options import SSE_HEADERS, SimOptions
from relay.simulator.responses import new_id


def piece(position: int) -> str:
    """One completion token; joined, pieces read "tok0 tok1 tok2 ..."."""
    return f"tok{position}" if position == 0 else f" tok{position}"


def pieces(count: int) -> list[str]:
    return [piece(position) for position in range(count)]


def words(value: Any) -> int:
    """Whitespace-separated words of a string, or of every ``text`` in a list of parts
    (``text``, ``input_text``, ``output_text``); other parts count nothing."""
    if isinstance(value, str):
        return len(value.split())
    total = 0
    if isinstance(value, list):
        for part in value:
            if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text.split())
    return total


def json_text(count: int) -> str:
    """Structured output: a JSON object whose one string holds ``count`` tokens."""
    return orjson.dumps({"answer": "".join(pieces(count))}).decode()


def named_event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def data_event(payload: dict[str, Any] | str) -> bytes:
    if isinstance(payload, str):
        return b"data: " + payload.encode() + b"\n\n"
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit-free vector for ``text``: multiples of 1/128 in [-1, 1), which
    float32 holds exactly, so float and base64 answers carry the same numbers."""
    out: list[float] = []
    counter = 0
    while len(out) < dimensions:
        digest = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        out.extend((byte - 128) / 128 for byte in digest)
        counter += 1
    return out[:dimensions]


async def play(
    exchange: SimExchange,
    options: SimOptions,
    head: Sequence[bytes],
    steps: Sequence[bytes],
    tail: Iterable[bytes],
) -> None:
    """Stream ``head``, then one ``step`` per token (paced by ``tps``; stopped by
    ``hang_after``/``reset_after`` before the tail, so a cut stream never looks whole),
    then ``tail``."""
    exchange.watch()
    await exchange.start(200, [*SSE_HEADERS, (b"x-request-id", new_id("req_").encode())])
    for frame in head:
        await exchange.chunk(frame)
    hang_at = min(options.hang_after, len(steps)) if options.hang_after is not None else -1
    reset_at = min(options.reset_after, len(steps)) if options.reset_after is not None else -1
    for index in range(len(steps) + 1):
        if index == hang_at:
            await exchange.pause(None)
            return
        if index == reset_at:
            raise SimulatedReset(f"simulated connection reset after {index} chunks")
        if index == len(steps):
            break
        if options.tps and not await exchange.pause(1 / options.tps):
            return
        await exchange.chunk(steps[index])
        if exchange.disconnected:
            return
    frames = list(tail)
    for frame in frames[:-1]:
        await exchange.chunk(frame)
    await exchange.end(frames[-1] if frames else b"")
