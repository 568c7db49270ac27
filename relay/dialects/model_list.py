"""``GET /v1/models`` as Anthropic's Models API answers it, for Anthropic's clients.

A request carrying ``anthropic-version`` (Anthropic's SDKs send it on every call, OpenAI's
never) is an Anthropic client: it may authenticate with ``x-api-key``, its errors come in
Anthropic's envelope, and it is shown the models it can call on ``/v1/messages``, newest
first, as pages of ``limit`` (1 to 1,000, default 20) after ``after_id`` or before
``before_id``, with ``has_more``, ``first_id`` and ``last_id``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from relay import errors
from relay.snapshot import KeyInfo, ModelInfo

DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


def callable_models(models: list[ModelInfo], key: KeyInfo) -> list[ModelInfo]:
    """The models of ``models`` this key can call on the Messages API, newest first."""
    if not key.allows_surface("messages"):
        return []
    chosen = [m for m in models if "messages" in m.surfaces]
    return sorted(chosen, key=lambda m: (-m.created, m.public_id))


def callable_model(model: ModelInfo, key: KeyInfo) -> bool:
    return key.allows_surface("messages") and "messages" in model.surfaces


def model_info(model: ModelInfo) -> dict[str, Any]:
    """One model as Anthropic's ``ModelInfo``. The catalog has no display name of its own,
    so the id is shown; a model the relay serves is ``active``."""
    info: dict[str, Any] = {
        "type": "model",
        "id": model.public_id,
        "display_name": model.public_id,
        "created_at": datetime.fromtimestamp(model.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lifecycle": "active",
    }
    if model.max_output_tokens is not None:
        info["max_tokens"] = model.max_output_tokens
    return info


def list_page(models: list[ModelInfo], query_string: bytes) -> dict[str, Any]:
    """One page of ``models`` (already in order) as the query string asks for it."""
    query = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    limit = _limit(query.get("limit"))
    after, before = _cursor(query, "after_id"), _cursor(query, "before_id")
    if after is not None and before is not None:
        raise errors.RelayError(400, "after_id and before_id cannot be given together.")
    ids = [m.public_id for m in models]
    if before is not None:
        end = _position(ids, before, "before_id")
        start = max(end - limit, 0)
        has_more = start > 0
    else:
        start = 0 if after is None else _position(ids, after, "after_id") + 1
        end = start + limit
        has_more = end < len(ids)
    page = models[start:end]
    return {
        "data": [model_info(m) for m in page],
        "has_more": has_more,
        "first_id": page[0].public_id if page else None,
        "last_id": page[-1].public_id if page else None,
    }


def _limit(values: list[str] | None) -> int:
    if not values:
        return DEFAULT_LIMIT
    try:
        limit = int(values[0])
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        raise errors.RelayError(
            400, f"limit: must be a whole number from 1 to {MAX_LIMIT}.", param="limit"
        )
    return limit


def _cursor(query: dict[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[0] if values else None


def _position(ids: list[str], cursor: str, name: str) -> int:
    try:
        return ids.index(cursor)
    except ValueError:
        raise errors.RelayError(
            400, f"{name}: no model with this id is listed for this key.", param=name
        ) from None
