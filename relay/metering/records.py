"""A request's usage record and its token counts, as queued and as written."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings

from billing.pricing import Counts, PricePair, Prices, event_cost_fields_of, total_micros
from billing.pricing.arithmetic import UNSET
from relay import tokens

logger = logging.getLogger("relay.metering")

# Events kept in memory while the database refuses writes; beyond this the oldest are
# dropped (and logged) rather than let a long outage exhaust the process's memory.
MAX_PENDING_EVENTS = 100_000
# Delivered text kept per request for local token counting (when the upstream reports no
# usage); longer answers are extrapolated from this much.
MAX_KEPT_TEXT_CHARS = 64 * 1024
# The most tokens (or pictures) one count can hold: the usage event's column maximum. No
# real request comes near it; a channel that reports more is held to it, so that its
# answer cannot make the event unwritable or its cost overflow.
MAX_COUNT = 2**31 - 1


@dataclass(slots=True)
class Usage(Counts):
    """A request's counts in every priced dimension (``billing.pricing.Counts``): the
    parts (cache reads and writes, audio, images) inside prompt and completion tokens."""

    @classmethod
    def from_canonical(cls, usage: Any) -> Usage | None:
        """From ``relay.translate.canonical.Usage`` (whole prompt, reasoning in output)."""
        if usage is None:
            return None
        return cls(
            prompt_tokens=_count(usage.input_tokens),
            completion_tokens=_count(usage.output_tokens),
            cached_tokens=_count(usage.cached_tokens),
            reasoning_tokens=_count(usage.reasoning_tokens),
            cache_write_tokens=_count(usage.cache_write_tokens),
            cache_write_1h_tokens=_count(usage.cache_write_1h_tokens),
            audio_input_tokens=_count(usage.audio_input_tokens),
            audio_output_tokens=_count(usage.audio_output_tokens),
            image_input_tokens=_count(usage.image_input_tokens),
            image_output_tokens=_count(usage.image_output_tokens),
            output_images=_count(usage.output_images),
            service_tier=usage.service_tier,
        )

    @classmethod
    def from_openai(cls, usage: Any, service_tier: Any = None) -> Usage | None:
        """From a chat or completions ``usage`` object and the answer's ``service_tier``."""
        if type(usage) is not dict and not isinstance(usage, Mapping):
            return None
        get = usage.get
        prompt = _mapping(get("prompt_tokens_details")).get
        completion = _mapping(get("completion_tokens_details")).get
        return cls(
            prompt_tokens=_count(get("prompt_tokens")),
            completion_tokens=_count(get("completion_tokens")),
            cached_tokens=_count(prompt("cached_tokens")),
            reasoning_tokens=_count(completion("reasoning_tokens")),
            cache_write_tokens=_count(prompt("cache_write_tokens")),
            audio_input_tokens=_count(prompt("audio_tokens")),
            audio_output_tokens=_count(completion("audio_tokens")),
            image_input_tokens=_count(prompt("image_tokens")),
            image_output_tokens=_count(completion("image_tokens")),
            service_tier=service_tier_of(service_tier),
        )


# The event columns a ``Usage`` fills, one per field.
COUNT_FIELDS = tuple(f.name for f in fields(Counts))
# The parts of the output among them (a cut stream's are counted afresh).
_OUTPUT_FIELDS = (
    "completion_tokens",
    "reasoning_tokens",
    "audio_output_tokens",
    "image_output_tokens",
    "output_images",
)


def service_tier_of(value: Any) -> str:
    """The billed service tier from a provider's answer: "flex", "priority" or ""."""
    return value if value in ("flex", "priority") else ""


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    """``value`` if it is a mapping (a JSON object), else an empty one."""
    return value if type(value) is dict or isinstance(value, Mapping) else _EMPTY


def _count(value: Any) -> int:
    """A count from a channel's answer: a whole number from 0 to ``MAX_COUNT``, else 0."""
    # ``type(value) is int`` nearly always: the rest is for what JSON never gives.
    if type(value) is not int and (not isinstance(value, int) or isinstance(value, bool)):
        return 0
    if value <= 0:
        return 0
    return value if value <= MAX_COUNT else MAX_COUNT


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    created_at: datetime
    tenant_id: int
    api_key_id: int
    model: str
    stream: bool
    status_code: int
    total_latency_ms: int
    surface: str = "chat"
    channel_id: int | None = None
    upstream_model: str = ""
    error_code: str = ""
    completed: bool = True
    upstream_latency_ms: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
    # The provider's counts of the prompt, sent as a stream began (Anthropic's
    # ``message_start``), before its ``usage``: a stream cut before that is billed for
    # them, its cache reads and writes included, and for the text it delivered, counted
    # here; only its output is estimated.
    prompt_usage: Usage | None = None
    # Pictures the relay counted in the request (its dialect) and in the answer: no
    # provider reports them, and prices per image bill them (``billed``).
    input_images: int = 0
    output_images: int = 0
    # Web searches the provider ran (its count, or its search blocks as a stream went),
    # within what the request allowed: Anthropic reports them apart from its tokens.
    web_search_calls: int = 0
    # The prices in force when the request arrived, kept on the event with its cost.
    price: PricePair | None = None
    # Material for local counting when the upstream sent no usage: the request's messages
    # and tools, and the text delivered to the client.
    prompt_messages: Any = None
    prompt_tools: Any = None
    completion_text: list[str] | None = None
    # Characters of delivered text beyond MAX_KEPT_TEXT_CHARS: not kept, only counted.
    completion_kept_chars: int = 0
    completion_overflow_chars: int = 0
    # The money scopes the request was held against (``relay.spend``), released when its
    # event is written.
    spend_scopes: tuple[str, ...] = ()

    def keep_text(self, pieces: list[str]) -> None:
        """Keep delivered text for local counting, up to MAX_KEPT_TEXT_CHARS; beyond that
        only its length, so a long stream's memory stays flat."""
        texts = self.completion_text
        if texts is None:
            return
        for piece in pieces:
            if self.completion_kept_chars < MAX_KEPT_TEXT_CHARS:
                texts.append(piece)
                self.completion_kept_chars += len(piece)
            else:
                self.completion_overflow_chars += len(piece)

    def known_cost(self) -> int | None:
        """The retail cost, if it is known without counting tokens locally."""
        if self.price is None:
            return 0
        if self.usage is None:
            if self.status_code >= 400 and not self.completion_text:
                return 0
            return None
        return total_micros(self.price.retail, self.billed(self.usage))

    def to_json(self) -> bytes:
        """The record for the Redis queue; the prompt only when it must be counted."""
        data = {name: getattr(self, name) for name in _SLOTS_BUT_PRICE}
        if self.usage is not None or (self.status_code >= 400 and not self.completion_text):
            data["prompt_messages"] = data["prompt_tools"] = data["completion_text"] = None
        elif self.prompt_usage is not None:
            data["prompt_messages"] = data["prompt_tools"] = None  # the provider counted it
        if data["prompt_usage"] is None:
            del data["prompt_usage"]  # as a version before it queued records
        if not data["web_search_calls"]:
            del data["web_search_calls"]  # likewise
        # The price last, so that a reader can take it by its bytes (``from_json``).
        data["price"] = _price_json(self.price) if self.price is not None else None
        try:
            return orjson.dumps(data, option=orjson.OPT_PASSTHROUGH_DATACLASS, default=_queued)
        except TypeError:  # text orjson refuses (lone surrogates): escape it instead
            data["price"] = self.price
            return json.dumps(data, default=_plain, ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> UsageRecord:
        data = _with_price_by_bytes(raw)
        if data is None:
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError:
                data = json.loads(raw)
            if data.get("price") is not None:
                data["price"] = _price_pair(data["price"])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        data["spend_scopes"] = tuple(data.get("spend_scopes") or ())
        if data.get("usage") is not None:
            data["usage"] = Usage(**data["usage"])
        if data.get("prompt_usage") is not None:
            data["prompt_usage"] = Usage(**data["prompt_usage"])
        return cls(**data)

    @classmethod
    def from_queued(cls, raw: bytes) -> UsageRecord:
        """A record from the Redis queue: as queued by a settlement, or wrapped by the
        sweeper of a stream cut by a lost relay process (``relay.orphans``)."""
        if raw.startswith(b'{"request_id"'):
            return cls.from_json(raw)
        wrapper = json.loads(raw)
        if not isinstance(wrapper, dict) or not isinstance(wrapper.get("cut"), str):
            return cls.from_json(raw)
        record = cls.from_json(wrapper["cut"].encode())
        text = str(wrapper.get("text") or "")
        record.completion_text = [text] if text else []
        record.completion_kept_chars = len(text)
        record.completion_overflow_chars = int(wrapper.get("over") or 0)
        if wrapper.get("usage"):
            record.usage = Usage(**json.loads(wrapper["usage"]))
        return record

    def billed(self, usage: Usage) -> Usage:
        """``usage`` (the provider's or a local count) with the images the relay counted:
        a request that reached a model is billed for the pictures it sent and received."""
        if (
            usage.input_images >= self.input_images
            and usage.output_images >= self.output_images
            and usage.web_search_calls >= self.web_search_calls
        ):
            return usage
        return replace(
            usage,
            input_images=max(usage.input_images, self.input_images),
            output_images=max(usage.output_images, self.output_images),
            web_search_calls=max(usage.web_search_calls, self.web_search_calls),
        )

    def counts(self) -> tuple[Usage, bool]:
        """The counts to bill (images included), and whether they are estimated."""
        if self.usage is not None:
            return self.billed(self.usage), False
        if self.status_code >= 400 and not self.completion_text:
            return Usage(), False  # nothing reached a model that we know of
        kept = "".join(self.completion_text or ())
        opening = self.prompt_usage
        prompt, completion = tokens.counter.count(
            self.prompt_messages if opening is None else None,
            self.prompt_tools if opening is None else None,
            kept,
            idle_seconds=settings.RELAY_TOKEN_COUNTER_IDLE_SECONDS,
        )
        if self.completion_overflow_chars:
            # The text not kept is counted at the kept text's tokens per character.
            completion += -(
                -self.completion_overflow_chars * max(completion, 1) // max(len(kept), 4)
            )
        if opening is not None:
            output: dict[str, Any] = dict.fromkeys(_OUTPUT_FIELDS, 0)
            output["completion_tokens"] = completion
            return self.billed(replace(opening, **output)), True
        return self.billed(Usage(prompt_tokens=prompt, completion_tokens=completion)), True

    def to_event_fields(self) -> dict[str, Any]:
        usage, estimated = self.counts()
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "tenant_id": self.tenant_id,
            "api_key_id": self.api_key_id,
            "model": self.model,
            "surface": self.surface,
            "channel_id": self.channel_id,
            "upstream_model": self.upstream_model,
            "stream": self.stream,
            "status_code": self.status_code,
            "error_code": self.error_code,
            "completed": self.completed,
            "upstream_latency_ms": self.upstream_latency_ms,
            "total_latency_ms": self.total_latency_ms,
            "attempts": self.attempts,
            "estimated": estimated,
            # Counts' fields are plain numbers and a string: no deep copy (``asdict``).
            **{name: getattr(usage, name) for name in COUNT_FIELDS},
            **event_cost_fields_of(self.price, usage),
        }


_SLOTS_BUT_PRICE = tuple(name for name in UsageRecord.__slots__ if name != "price")

# Queued records carry their prices whole; a drained batch holds few distinct ones. Each
# is built once (PricePair is immutable, so records may share it), up to a bound.
_PRICE_PAIRS: dict[bytes, PricePair] = {}
_PRICE_PAIRS_MAX = 256


def _price_pair(data: dict[str, Any]) -> PricePair:
    key = orjson.dumps(data, option=orjson.OPT_SORT_KEYS)
    pair = _PRICE_PAIRS.get(key)
    if pair is None:
        pair = PricePair.from_dict(data)
        if len(_PRICE_PAIRS) >= _PRICE_PAIRS_MAX:
            _PRICE_PAIRS.clear()
        _PRICE_PAIRS[key] = pair
    return pair


# A queued record ends with its price (``to_json``): ``..., "price": {...}}``.
_PRICE_TAIL = b',"price":{'
# Price pairs by the bytes they are queued as: most records of a batch share a few.
_PRICE_BY_BYTES: dict[bytes, PricePair] = {}


def _with_price_by_bytes(raw: bytes) -> dict[str, Any] | None:
    """The record's fields with its price taken by its queued bytes, parsing only the rest
    (the price is ~900 of a record's ~1,600 bytes); None when ``raw`` does not end with a
    price (no price, or a record queued by an older version), to be parsed whole.

    The price found is the record's own: JSON escapes every quote inside a string, so the
    tail's bytes can only be a key of an object, and cut at one nested in a client's
    messages, what is left before it has a bracket left open and does not parse."""
    cut = raw.rfind(_PRICE_TAIL)
    if cut < 0 or not raw.endswith(b"}"):
        return None
    tail = raw[cut + len(_PRICE_TAIL) - 1 : -1]
    pair = _PRICE_BY_BYTES.get(tail)
    try:
        data = orjson.loads(raw[:cut] + b"}")
        if pair is None:
            pair = _price_pair(orjson.loads(tail))
            if len(_PRICE_BY_BYTES) >= _PRICE_PAIRS_MAX:
                _PRICE_BY_BYTES.clear()
            _PRICE_BY_BYTES[tail] = pair
    except (orjson.JSONDecodeError, TypeError, ValueError, KeyError):
        return None
    if not isinstance(data, dict) or "price" in data:
        return None
    data["price"] = pair
    return data


# The queued form of each price pair in use, written once (a request's record carries its
# prices whole: ~900 of its ~1,600 bytes). Keyed by identity, the pair held so that its id
# is not reused while it is here; the snapshot shares one pair among its requests.
_PRICE_JSON: dict[int, tuple[PricePair, orjson.Fragment]] = {}


def _price_json(pair: PricePair) -> orjson.Fragment:
    cached = _PRICE_JSON.get(id(pair))
    if cached is None or cached[0] is not pair:
        if len(_PRICE_JSON) >= _PRICE_PAIRS_MAX:
            _PRICE_JSON.clear()
        queued = orjson.dumps(pair, option=orjson.OPT_PASSTHROUGH_DATACLASS, default=_queued)
        cached = _PRICE_JSON[id(pair)] = (pair, orjson.Fragment(queued))
    return cached[1]


def queued_counts(usage: Counts) -> dict[str, Any]:
    """Every count of ``usage`` as queued (here and in a stream's marks): without a web
    search count of 0, so that a process of the version before reads it as it did."""
    found = {name: getattr(usage, name) for name in COUNT_FIELDS}
    if not found["web_search_calls"]:
        del found["web_search_calls"]
    return found


def _queued(value: Any) -> dict[str, Any]:
    """A dataclass of a queued record (its usage, its prices), without the fields newer
    than the processes that may read it when they hold nothing: a process of the version
    before reads the record as it did (``Usage`` and ``Prices`` take no unknown field)."""
    if isinstance(value, Counts):
        return queued_counts(value)
    if isinstance(value, Prices):
        found = {f.name: getattr(value, f.name) for f in fields(value)}
        if found["web_search"] == UNSET:
            del found["web_search"]
        return found
    if isinstance(value, PricePair):
        return {
            "retail": value.retail,
            "wholesale": value.wholesale,
            "reseller_id": value.reseller_id,
        }
    raise TypeError(type(value).__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(type(value).__name__)
