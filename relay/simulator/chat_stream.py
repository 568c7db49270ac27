"""The simulator's chat completion streams, and its enormous answers for resilience tests."""

from __future__ import annotations

import time
from typing import Any

import orjson

from relay.simulator.exchange import SimExchange, SimulatedReset
from relay.simulator.options import SSE_HEADERS, SYSTEM_FINGERPRINT, SimOptions
from relay.simulator.responses import (
    ChatPlan,
    error_envelope,
    new_id,
    service_tier,
    stream_steps,
    token_logprob,
    usage_for,
)

HUGE_PIECE_BYTES = 64 * 1024


async def stream(
    exchange: SimExchange, plan: ChatPlan, options: SimOptions, echo: str = ""
) -> None:
    base: dict[str, Any] = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": service_tier(options),
    }
    if plan.include_usage:
        base["usage"] = None  # OpenAI marks every chunk but the last this way

    def event(index: int, delta: dict[str, Any], finish: str | None = None) -> bytes:
        logprobs = None
        if plan.logprobs and "content" in delta and delta["content"]:
            entry = token_logprob(delta["content"], plan.top_logprobs)
            logprobs = {"content": [entry], "refusal": None}
        choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    exchange.watch()
    await exchange.start(200, [*SSE_HEADERS, (b"x-request-id", new_id("req_").encode())])
    steps = [stream_steps(plan, index) for index in range(plan.n)]
    for index in range(plan.n):
        tool = index == 0 and plan.tool_name is not None
        await exchange.chunk(event(index, {"role": "assistant", "content": None if tool else ""}))
    total_steps = max(map(len, steps))
    # A stalled or reset stream must never look complete, so both stop before the
    # finish chunks at the latest, even when k exceeds the content available.
    hang_at = reset_at = -1
    if options.hang_after is not None:
        hang_at = min(options.hang_after, total_steps)
    if options.reset_after is not None:
        reset_at = min(options.reset_after, total_steps)
    for step in range(total_steps + 1):
        if step == hang_at:
            await exchange.pause(None)
            return
        if step == reset_at:
            raise SimulatedReset(f"simulated connection reset after {step} chunks")
        if step == total_steps:
            break
        if options.tps and not await exchange.pause(1 / options.tps):
            return
        for index, deltas in enumerate(steps):
            if step < len(deltas):
                await exchange.chunk(event(index, deltas[step]))
        if options.stream_error and step == 0:
            failure = error_envelope(500, f"Simulated error in the stream.{echo}")
            await exchange.end(b"data: " + orjson.dumps(failure) + b"\n\n")
            return
        if options.bad_sse and step == 0:
            # Not JSON, and a line that is no SSE field at all: a broken proxy's output.
            await exchange.chunk(b'data: {"choices": [{"delta": {"content": "x\n\n')
            await exchange.chunk(b"<html>502 Bad Gateway</html>\n\n")
        if exchange.disconnected:
            return
    for index in range(plan.n):
        finish = "tool_calls" if index == 0 and plan.tool_name else plan.finish_reason
        await exchange.chunk(event(index, {}, finish))
    if plan.include_usage:
        tail = {**base, "choices": [], "usage": usage_for(plan, options)}
        await exchange.chunk(b"data: " + orjson.dumps(tail) + b"\n\n")
    await exchange.end(b"data: [DONE]\n\n")


async def huge(exchange: SimExchange, plan: ChatPlan, options: SimOptions) -> None:
    """An answer of ``options.huge`` content bytes, generated piece by piece so the
    simulator itself never holds it (non-streaming: one enormous JSON document)."""
    filler = ("lorem ipsum " * (HUGE_PIECE_BYTES // 12 + 1))[:HUGE_PIECE_BYTES]
    pieces, rest = divmod(options.huge, HUGE_PIECE_BYTES)
    contents = [filler] * pieces + ([filler[:rest]] if rest else [])
    completion = max(1, options.huge // 4)
    usage = {
        "prompt_tokens": plan.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": plan.prompt_tokens + completion,
    }
    exchange.watch()
    if plan.stream:
        await exchange.start(200, list(SSE_HEADERS))
        base = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": plan.model,
        }
        for content in contents:
            choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
            await exchange.chunk(b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n")
            if exchange.disconnected:
                return
        last = {"index": 0, "delta": {}, "finish_reason": "length"}
        await exchange.chunk(b"data: " + orjson.dumps({**base, "choices": [last]}) + b"\n\n")
        if plan.include_usage:
            tail = {**base, "choices": [], "usage": usage}
            await exchange.chunk(b"data: " + orjson.dumps(tail) + b"\n\n")
        await exchange.end(b"data: [DONE]\n\n")
        return
    await exchange.start(200, [(b"content-type", b"application/json")])
    head = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
    }
    await exchange.chunk(
        orjson.dumps(head)[:-1] + b',"choices":[{"index":0,"finish_reason":"length",'
        b'"message":{"role":"assistant","content":"'
    )
    for content in contents:
        await exchange.chunk(content.encode())
        if exchange.disconnected:
            return
    await exchange.end(b'"}}],"usage":' + orjson.dumps(usage) + b"}")
