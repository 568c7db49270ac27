"""Which conversation a request belongs to, so its turns can stay on one channel.

A provider's prompt cache only hits when a conversation's turns reach the same channel.
The key is the client's own word where it gives one (OpenAI's ``prompt_cache_key`` or
``user``, Anthropic's ``metadata.user_id``), else a hash of the conversation's opening:
its system prompt or instructions and its first message, which every later turn repeats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

MAX_KEY_CHARS = 512


def _named(payload: Mapping[str, Any]) -> str | None:
    for value in (
        payload.get("prompt_cache_key"),
        (payload.get("metadata") or {}).get("user_id")
        if isinstance(payload.get("metadata"), Mapping)
        else None,
        payload.get("user"),
    ):
        if isinstance(value, str) and value:
            return value[:MAX_KEY_CHARS]
    return None


def _opening(payload: Mapping[str, Any]) -> list[Any]:
    """The parts of the request that stay the same on every turn of one conversation."""
    opening: list[Any] = [payload.get("system"), payload.get("instructions")]
    messages = payload.get("messages")
    if not isinstance(messages, list):
        messages = payload.get("input")
    if isinstance(messages, str):
        return [*opening, messages]
    if isinstance(messages, list):
        # System and developer messages, then the first of any other role.
        for message in messages:
            opening.append(message)
            role = message.get("role") if isinstance(message, Mapping) else None
            if role not in ("system", "developer"):
                break
    return opening


def conversation_key(payload: Mapping[str, Any]) -> str:
    """A stable key for the conversation ``payload`` (a chat, Responses or Messages request
    body) belongs to; the tenant is added by the caller, so keys never cross tenants."""
    named = _named(payload)
    if named is not None:
        return "k:" + named
    try:
        opening = orjson.dumps(_opening(payload), option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        opening = repr(_opening(payload)).encode()
    return "h:" + hashlib.blake2b(opening, digest_size=16).hexdigest()
