"""Local token counting, used only when an upstream reports no usage.

The o200k_base encoding ships inside the bpe-openai wheel, so counting works with no
network. It costs ~70 MB once loaded, so it is loaded on first need, off the event loop
(the usage writer's thread calls this), never at import.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

# Per-message framing tokens of the chat format and the reply's priming tokens: the
# figures OpenAI documents for counting chat prompts.
TOKENS_PER_MESSAGE = 3
TOKENS_REPLY_PRIMING = 3
# A picture's cost depends on its size and detail, which the relay does not decode; the
# low-detail cost is a floor, and the result is marked estimated anyway.
TOKENS_PER_IMAGE = 85


def estimate_prompt(payload: Mapping[str, Any]) -> int:
    """A quick prompt size for rate limits, without the tokenizer (about 4 chars a token).

    Runs on the hot path, so it only walks the messages; the real count replaces it when
    the request settles.
    """
    total = TOKENS_REPLY_PRIMING
    for message in payload.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE
        content = message.get("content")
        if isinstance(content, str):
            total += len(content) // 4
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping):
                    if part.get("type") == "text":
                        total += len(str(part.get("text", ""))) // 4
                    elif part.get("type") in ("image_url", "input_image"):
                        total += TOKENS_PER_IMAGE
    return total


@functools.cache
def _encoding() -> Any:
    import bpe_openai

    return bpe_openai.get_encoding("o200k_base")


def count_text(text: str) -> int:
    if not text:
        return 0
    return len(_encoding().encode(text))


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return count_text(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text":
                total += count_text(str(part.get("text", "")))
            elif part.get("type") in ("image_url", "input_image"):
                total += TOKENS_PER_IMAGE
            elif part.get("type") == "refusal":
                total += count_text(str(part.get("refusal", "")))
    return total


def count_prompt(messages: Iterable[Any], tools: Any = None) -> int:
    total = TOKENS_REPLY_PRIMING
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        total += TOKENS_PER_MESSAGE
        total += count_text(str(message.get("role", "")))
        total += _content_tokens(message.get("content"))
        if message.get("name"):
            total += count_text(str(message["name"]))
        for call in message.get("tool_calls") or ():
            function = call.get("function", {}) if isinstance(call, Mapping) else {}
            total += count_text(str(function.get("name", "")))
            total += count_text(str(function.get("arguments", "")))
    if tools:
        import orjson

        total += count_text(orjson.dumps(tools).decode())
    return total
