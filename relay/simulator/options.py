"""The simulator's behaviour options, parsed from a ``/sim/<options>`` path prefix."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


DEFAULT_MODELS = ("sim-small", "sim-large")
MODEL_CREATED = 1_700_000_000  # fixed, so model listings are reproducible
SYSTEM_FINGERPRINT = "fp_simulator"
REQUEST_LOG_SIZE = 200
MAX_CHOICES = 128  # OpenAI's own limit for ``n``
MAX_TOP_LOGPROBS = 20

INVALID_BODY = object()  # stands for a body that is not JSON, since ``null`` is valid JSON

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


@dataclasses.dataclass(frozen=True, slots=True)
class SimOptions:
    """How one behaviour prefix answers; the defaults come from ``build_app``."""

    fail: int | None = None
    fail_first: int = 0
    latency_ms: float = 0.0
    tps: float = 0.0
    tokens: int = 16
    hang: bool = False
    hang_after: int | None = None
    reset_after: int | None = None
    nousage: bool = False
    cached: int = 0
    cache_write: int = 0  # Anthropic's cache_creation_input_tokens; Responses' writes
    cache_write_1h: int = 0  # of those, written for an hour
    # Audio and image tokens reported on top of the text's (parts of the prompt and of the
    # completion), and the service tier the answer says it was served on.
    audio_in: int = 0
    audio_out: int = 0
    image_in: int = 0
    image_out: int = 0
    # Pictures the answer generates: Responses image_generation_call items, chat
    # message.images (delta.images on streams), as OpenRouter-style image output returns.
    images: int = 0
    # Web searches an Anthropic answer runs when the request offers its web search tool
    # (no more than the tool's max_uses): server_tool_use blocks, counted in its usage.
    searches: int = 0
    # The length of each generated picture's base64 (0: a 1x1 PNG), for size-limit tests.
    image_size: int = 0
    tier: str = ""
    reasoning: int = 0
    key: str | None = None
    bad_json: bool = False
    error_body: bool = False
    # Faults for resilience tests: slow bytes, broken event streams, enormous answers.
    trickle_ms: float = 0.0
    bad_sse: bool = False
    huge: int = 0
    # Error messages repeat the caller's credential, as some providers do: the relay must
    # never pass it on.
    echo_key: bool = False
    stream_error: bool = False  # an error event after the first token of a stream
    # Gemini's refusal of the prompt itself: an HTTP 200 with no candidates and
    # promptFeedback.blockReason set to this (SAFETY, OTHER, BLOCKLIST, ...).
    blocked: str = ""


class OptionError(ValueError):
    """A behaviour prefix that cannot be understood; answered with a 400 envelope."""


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


def _status(value: str) -> int:
    number = int(value)
    if not 400 <= number <= 599:
        raise ValueError(value)
    return number


def _rate(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(value)
    return number


def _tier(value: str) -> str:
    if value not in ("flex", "priority", "default"):
        raise ValueError(value)
    return value


def _block_reason(value: str) -> str:
    if not value or not value.replace("_", "").isalpha() or not value.isupper():
        raise ValueError(value)
    return value


def _secret(value: str) -> str:
    if not value:
        raise ValueError(value)
    return value


_FLAGS = frozenset(
    {"hang", "nousage", "bad_json", "error_body", "bad_sse", "echo_key", "stream_error"}
)
_VALUED: dict[str, tuple[str, Callable[[str], Any]]] = {
    "fail": ("fail", _status),
    "fail_first": ("fail_first", _count),
    "latency": ("latency_ms", _rate),
    "tps": ("tps", _rate),
    "tokens": ("tokens", _count),
    "hang_after": ("hang_after", _count),
    "reset_after": ("reset_after", _count),
    "cached": ("cached", _count),
    "cache_write": ("cache_write", _count),
    "cache_write_1h": ("cache_write_1h", _count),
    "audio_in": ("audio_in", _count),
    "audio_out": ("audio_out", _count),
    "image_in": ("image_in", _count),
    "image_out": ("image_out", _count),
    "images": ("images", _count),
    "searches": ("searches", _count),
    "image_size": ("image_size", _count),
    "tier": ("tier", _tier),
    "reasoning": ("reasoning", _count),
    "key": ("key", _secret),
    "trickle": ("trickle_ms", _rate),
    "huge": ("huge", _count),
    "blocked": ("blocked", _block_reason),
}


def parse_options(text: str, defaults: SimOptions) -> SimOptions:
    """Parse the ``<options>`` of ``/sim/<options>/v1/...`` on top of ``defaults``.

    Grammar: a comma-separated list of ``name`` (flags: hang, nousage, bad_json, error_body,
    bad_sse, echo_key, stream_error) or ``name=value`` (fail=<400-599>, fail_first=<k>,
    latency=<ms>, tps=<n>, tokens=<n>, hang_after=<k>, reset_after=<k>, cached=<n>,
    cache_write=<n>, cache_write_1h=<n>, audio_in=<n>, audio_out=<n>, image_in=<n>,
    image_out=<n>, images=<n>, searches=<n>, image_size=<n>, tier=<flex|default|priority>,
    reasoning=<n>, key=<secret>, trickle=<ms>, huge=<bytes>, blocked=<Gemini block reason>).
    Empty items
    are ignored and a repeated option keeps its last value. Raises ``OptionError``.
    """
    changes: dict[str, Any] = {}
    for item in text.split(","):
        if not item:
            continue
        name, has_value, value = item.partition("=")
        if name in _FLAGS:
            if has_value:
                raise OptionError(f"Simulator option '{name}' takes no value.")
            changes[name] = True
        elif name in _VALUED:
            field, convert = _VALUED[name]
            try:
                changes[field] = convert(value)
            except ValueError:
                raise OptionError(f"Bad value for simulator option '{name}': '{value}'.") from None
        else:
            raise OptionError(f"Unknown simulator option '{name}'.")
    return dataclasses.replace(defaults, **changes)
