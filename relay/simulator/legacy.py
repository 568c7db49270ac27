"""The simulator's ``POST /v1/embeddings`` and legacy ``POST /v1/completions``.

Embeddings: ``input`` is a string, an array of strings, an array of token ids or an array
of such arrays; each gets a deterministic vector (``wire.vector``) of ``dimensions``
numbers (default 8), as floats or as base64 of little-endian float32. ``prompt_tokens``
is the words of each string plus the length of each token array.

Completions: ``prompt`` is a string or an array of them (or token arrays); each gets
``n`` choices of ``min(options.tokens, max_tokens)`` pieces; ``prompt_tokens`` is the
prompts' words. ``echo`` puts the prompt before the text, ``logprobs`` adds OpenAI's
legacy logprobs object, and ``suffix`` is accepted.
"""

from __future__ import annotations

import base64
import struct
import time
from typing import Any

from relay.simulator.exchange import SimExchange
from relay.simulator.options import MAX_CHOICES, SYSTEM_FINGERPRINT, SimOptions
from relay.simulator.responses import RequestError, new_id
from relay.simulator.wire import data_event, pieces, play, vector

DEFAULT_DIMENSIONS = 8
MAX_DIMENSIONS = 4096


def _is_tokens(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    )


def _inputs(value: Any, name: str) -> list[str | list[int]]:
    """Each input as a string or a token array; raises ``RequestError``."""
    if isinstance(value, str):
        return [value]
    if _is_tokens(value):
        return [value]
    if (
        isinstance(value, list)
        and value
        and (all(isinstance(v, str) for v in value) or all(_is_tokens(v) for v in value))
    ):
        return list(value)
    raise RequestError(
        f"'{name}' must be a string, an array of strings, or an array of token arrays.", name
    )


def _size(value: str | list[int]) -> int:
    return len(value.split()) if isinstance(value, str) else len(value)


def _model(body: Any) -> str:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("You must provide a model parameter.", "model")
    return model


async def embeddings(exchange: SimExchange, body: Any, options: SimOptions) -> None:
    model = _model(body)
    inputs = _inputs(body.get("input"), "input")
    dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_DIMENSIONS
    ):
        raise RequestError(f"'dimensions' must be from 1 to {MAX_DIMENSIONS}.", "dimensions")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise RequestError("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    data = []
    for index, value in enumerate(inputs):
        numbers = vector(value if isinstance(value, str) else str(value), dimensions)
        embedding: Any = numbers
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{dimensions}f", *numbers)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(_size(value) for value in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    answer: dict[str, Any] = {"object": "list", "model": model, "data": data}
    if not options.nousage:
        answer["usage"] = usage
    await exchange.respond_json(200, answer)


def _logprobs(texts: list[str], top: int, offset: int) -> dict[str, Any]:
    offsets = []
    for text in texts:
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": texts,
        "token_logprobs": [-0.25] * len(texts),
        "top_logprobs": [
            {text: -0.25, **{f" alt{r}": -1.0 - r for r in range(1, top)}} for text in texts
        ],
        "text_offset": offsets,
    }


async def completions(exchange: SimExchange, body: Any, options: SimOptions) -> None:
    model = _model(body)
    prompts = _inputs(body.get("prompt"), "prompt")
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CHOICES:
        raise RequestError(f"'n' must be from 1 to {MAX_CHOICES}.", "n")
    limit = body.get("max_tokens", 16)
    if limit is None:
        limit = 16
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise RequestError("'max_tokens' must be a non-negative integer.", "max_tokens")
    logprobs = body.get("logprobs")
    if logprobs is not None and (
        isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= 5
    ):
        raise RequestError("'logprobs' must be an integer from 0 to 5.", "logprobs")
    produced = min(options.tokens, limit)
    finish = "length" if limit < options.tokens else "stop"
    echo = body.get("echo") is True
    texts = pieces(produced)
    prompt_tokens = sum(_size(p) for p in prompts)
    completion_tokens = produced * n * len(prompts)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    base = {
        "id": new_id("cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
    }

    def lead(prompt: str | list[int]) -> str:
        return (prompt if isinstance(prompt, str) else "") if echo else ""

    if body.get("stream") is not True:
        choices = []
        for p_index, prompt in enumerate(prompts):
            for j in range(n):
                echoed = lead(prompt)
                choices.append(
                    {
                        "index": p_index * n + j,
                        "text": echoed + "".join(texts),
                        "logprobs": _logprobs(texts, logprobs, len(echoed))
                        if logprobs is not None
                        else None,
                        "finish_reason": finish,
                    }
                )
        answer = {**base, "choices": choices}
        if not options.nousage:
            answer["usage"] = usage
        await exchange.respond_json(200, answer)
        return
    count = n * len(prompts)

    def chunk(index: int, text: str, finish_reason: str | None) -> bytes:
        choice = {
            "index": index,
            "text": text,
            "logprobs": _logprobs([text], logprobs, 0) if logprobs is not None and text else None,
            "finish_reason": finish_reason,
        }
        return data_event({**base, "choices": [choice]})

    head = [
        chunk(p_index * n + j, lead(prompt), None)
        for p_index, prompt in enumerate(prompts)
        for j in range(n)
        if lead(prompt)
    ]
    steps = [b"".join(chunk(index, text, None) for index in range(count)) for text in texts]
    tail = [chunk(index, "", finish) for index in range(count)]
    stream_options = body.get("stream_options")
    wants_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    if wants_usage and not options.nousage:
        tail.append(data_event({**base, "choices": [], "usage": usage}))
    tail.append(data_event("[DONE]"))
    await play(exchange, options, head, steps, tail)
