"""The exact arithmetic of a request's price: every dimension a provider charges.

Money is integer micro-units (1e-6 of the currency unit); token prices are micro-units per
million tokens, image prices micro-units per image, web search micro-units per search the
provider ran. Nothing here uses floats.

Token semantics follow OpenAI's ``usage`` object: the parts (cached reads, cache writes,
audio and image tokens) are inside ``prompt_tokens`` and ``completion_tokens``, and
reasoning is inside ``completion_tokens``. A request's prompt is split, in this order,
into cached reads, cache writes (1 hour, then 5 minutes), audio, image and the text rest,
each capped by what is left, so no token is billed twice and none is lost; its completion
into audio, image and the text rest. A request's token charges are summed exactly and
rounded once, half up, as before dimensions existed; that rounding is then apportioned
to the dimensions by largest remainder, so each dimension's charge is within a micro-unit
of its exact share and a request's cost is exactly the sum of its charges. Any grouping of
charges (an invoice line per model and dimension) therefore adds up to the events' costs
to the micro-unit.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from billing.money import PER_MILLION, div_ceil, div_round_half_up, percent_of

# Token dimensions, priced per million tokens: the prompt's parts, then the completion's.
PROMPT_DIMENSIONS = (
    "input",
    "cached_input",
    "cache_write_5m",
    "cache_write_1h",
    "audio_input",
    "image_input",
)
OUTPUT_DIMENSIONS = ("output", "audio_output", "image_output")
TOKEN_DIMENSIONS = PROMPT_DIMENSIONS + OUTPUT_DIMENSIONS
IMAGE_DIMENSIONS = ("input_image", "output_image")  # priced per image
# Tools the provider runs and bills by the call: priced per call, and offered only where
# priced (``UNSET``: the feature is refused, ``relay.dialects.fees``).
CALL_DIMENSIONS = ("web_search",)
# Every dimension, in invoice order; "request" is the fee per request.
DIMENSIONS = TOKEN_DIMENSIONS + IMAGE_DIMENSIONS + CALL_DIMENSIONS + ("request",)
UNITS = {**dict.fromkeys(TOKEN_DIMENSIONS, "mtok"), **dict.fromkeys(IMAGE_DIMENSIONS, "image")}
UNITS["web_search"] = "search"
UNITS["request"] = "request"
LABELS = {
    "input": "Input tokens",
    "cached_input": "Cached input tokens (read)",
    "cache_write_5m": "Cache writes, 5 minutes",
    "cache_write_1h": "Cache writes, 1 hour",
    "audio_input": "Audio input tokens",
    "image_input": "Image input tokens",
    "output": "Output tokens",
    "audio_output": "Audio output tokens",
    "image_output": "Image output tokens",
    "input_image": "Input images",
    "output_image": "Generated images",
    "web_search": "Web searches",
    "request": "Requests",
}
# What a dimension costs when its price was left blank; in this order, so a blank
# one-hour cache write costs the five-minute one's (never less: providers charge more).
FALLBACK = {
    "cache_write_5m": "input",
    "cache_write_1h": "cache_write_5m",
    "audio_input": "input",
    "image_input": "input",
    "audio_output": "output",
    "image_output": "output",
}
SERVICE_TIERS = ("flex", "priority")
UNSET = -1


def price_attribute(dimension: str) -> str:
    return "request_fee" if dimension == "request" else dimension


@dataclass(frozen=True, slots=True)
class Prices:
    """Unit prices of every dimension (per million tokens, per image, per call, per request).

    A token price not given (``UNSET``) is its text counterpart's (``FALLBACK``); an image
    price not given is zero; a call price not given stays ``UNSET``: the tool is not
    offered, and a call the operator let through unpriced costs nothing. ``long_context``
    is the full set of prices that applies to a request whose prompt exceeds
    ``long_context_above`` tokens; ``flex_percent`` and ``priority_percent`` scale every
    token price on those service tiers.
    """

    input: int
    cached_input: int
    output: int
    request_fee: int
    currency: str
    cache_write_5m: int = UNSET
    cache_write_1h: int = UNSET
    audio_input: int = UNSET
    audio_output: int = UNSET
    image_input: int = UNSET
    image_output: int = UNSET
    input_image: int = 0
    output_image: int = 0
    web_search: int = UNSET
    long_context_above: int | None = None
    long_context: Prices | None = None
    flex_percent: int = 100
    priority_percent: int = 100

    def __post_init__(self) -> None:
        for name, fallback in FALLBACK.items():
            if getattr(self, name) is None or getattr(self, name) < 0:
                object.__setattr__(self, name, getattr(self, fallback))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Prices:
        """From ``dataclasses.asdict`` (the relay's usage queue)."""
        values = dict(data)
        if values.get("long_context") is not None:
            values["long_context"] = cls.from_dict(values["long_context"])
        return cls(**values)

    def unit(self, dimension: str) -> int:
        value: int = getattr(self, price_attribute(dimension))
        return value

    def offers(self, dimension: str) -> bool:
        """Whether a call dimension has a price (``CALL_DIMENSIONS``)."""
        return self.unit(dimension) >= 0

    def for_request(self, prompt_tokens: int, service_tier: str = "") -> tuple[Prices, bool]:
        """The unit prices one request pays (its tier and service tier applied), and whether
        it crossed the long-context threshold. Read them with ``unit``; the common case (no
        service-tier scaling) returns a set as it is, with no copy."""
        long = (
            self.long_context is not None
            and self.long_context_above is not None
            and prompt_tokens > self.long_context_above
        )
        chosen = self.long_context if long and self.long_context is not None else self
        percent = (
            self.flex_percent
            if service_tier == "flex"
            else self.priority_percent
            if service_tier == "priority"
            else 100
        )
        if percent == 100:
            return chosen, long
        factor = Decimal(percent)
        changes: dict[str, Any] = {"long_context": None, "long_context_above": None}
        changes.update({d: percent_of(chosen.unit(d), factor) for d in TOKEN_DIMENSIONS})
        return dataclasses.replace(chosen, **changes), long

    def sets(self) -> tuple[Prices, ...]:
        return (self,) if self.long_context is None else (self, self.long_context)

    def marked_up(self, markup_percent: Decimal) -> Prices:
        """Every price of every set times ``100 + markup_percent`` percent, half up."""
        factor = Decimal(100) + markup_percent
        changes: dict[str, Any] = {
            price_attribute(d): percent_of(self.unit(d), factor)
            for d in DIMENSIONS
            if self.unit(d) != UNSET  # a tool not offered stays so
        }
        if self.long_context is not None:
            changes["long_context"] = self.long_context.marked_up(markup_percent)
        return dataclasses.replace(self, **changes)


@dataclass(slots=True)
class Counts:
    """What one request used, as the relay meters it (``relay.metering.Usage``)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    input_images: int = 0
    output_images: int = 0
    web_search_calls: int = 0
    service_tier: str = ""


def _n(value: int) -> int:
    return value if value > 0 else 0


def quantities(counts: Counts) -> dict[str, int]:
    """What each dimension bills for one request (see the module's docstring)."""
    left = _n(counts.prompt_tokens)
    found: dict[str, int] = {}
    writes = _n(counts.cache_write_tokens)
    for dimension, wanted in (
        ("cached_input", _n(counts.cached_tokens)),
        ("cache_write_1h", min(_n(counts.cache_write_1h_tokens), writes)),
        ("cache_write_5m", writes - min(_n(counts.cache_write_1h_tokens), writes)),
        ("audio_input", _n(counts.audio_input_tokens)),
        ("image_input", _n(counts.image_input_tokens)),
    ):
        found[dimension] = min(wanted, left)
        left -= found[dimension]
    found["input"] = left
    left = max(_n(counts.completion_tokens), _n(counts.reasoning_tokens))
    output_total = left
    for dimension, wanted in (
        ("audio_output", _n(counts.audio_output_tokens)),
        ("image_output", _n(counts.image_output_tokens)),
    ):
        found[dimension] = min(wanted, left)
        left -= found[dimension]
    found["output"] = left
    found["input_image"] = _n(counts.input_images)
    found["output_image"] = _n(counts.output_images)
    found["web_search"] = _n(counts.web_search_calls)
    used = counts.prompt_tokens > 0 or output_total > 0
    items = found["input_image"] or found["output_image"] or found["web_search"]
    found["request"] = 1 if used or items else 0
    return found


_ORDER = {dimension: index for index, dimension in enumerate(DIMENSIONS)}
_TOKEN_SET = frozenset(TOKEN_DIMENSIONS)
_CALL_SET = frozenset(CALL_DIMENSIONS)


def _item_unit(flat: Prices, dimension: str) -> int:
    """A dimension's unit price as charged: a call let through unpriced costs nothing."""
    unit = flat.unit(dimension)
    return 0 if unit < 0 and dimension in _CALL_SET else unit


def charges(prices: Prices, counts: Counts) -> tuple[dict[str, tuple[int, int, int]], bool]:
    """``{dimension: (quantity, unit price, micros)}`` for each dimension the request used,
    and whether it was priced at long-context prices (see the module's docstring for the
    rounding)."""
    flat, long = prices.for_request(_n(counts.prompt_tokens), counts.service_tier)
    if _text_only(counts):
        return _text_charges(flat, counts), long
    return _apportioned(flat, counts), long


def _text_only(counts: Counts) -> bool:
    """No cache, audio or image parts: the whole prompt is "input", the whole completion
    "output" (most requests)."""
    return (
        counts.cached_tokens <= 0
        and counts.cache_write_tokens <= 0
        and counts.cache_write_1h_tokens <= 0
        and counts.audio_input_tokens <= 0
        and counts.image_input_tokens <= 0
        and counts.audio_output_tokens <= 0
        and counts.image_output_tokens <= 0
        and counts.input_images <= 0
        and counts.output_images <= 0
        and counts.web_search_calls <= 0
    )


def _apportioned(flat: Prices, counts: Counts) -> dict[str, tuple[int, int, int]]:
    """``charges`` at the unit prices ``flat``, for any counts."""
    used = {d: q for d, q in quantities(counts).items() if q}
    exact = {d: q * getattr(flat, d) for d, q in used.items() if d in _TOKEN_SET}
    micros = {d: share // PER_MILLION for d, share in exact.items()}
    left = div_round_half_up(sum(exact.values()), PER_MILLION) - sum(micros.values())
    by_remainder = sorted(exact, key=lambda d: (-(exact[d] % PER_MILLION), _ORDER[d]))
    for dimension in by_remainder[:left]:
        micros[dimension] += 1
    found = {}
    for dimension, quantity in used.items():
        unit = _item_unit(flat, dimension)
        charged = micros[dimension] if dimension in micros else quantity * unit
        found[dimension] = (quantity, unit, charged)
    return found


def _text_charges(flat: Prices, counts: Counts) -> dict[str, tuple[int, int, int]]:
    """``_apportioned`` for text-only counts, without its dictionaries and sort: at most
    two token dimensions share the rounding, "input" first on equal remainders."""
    prompt = _n(counts.prompt_tokens)
    output = max(_n(counts.completion_tokens), _n(counts.reasoning_tokens))
    found: dict[str, tuple[int, int, int]] = {}
    if not prompt and not output:
        return found
    exact_in, exact_out = prompt * flat.input, output * flat.output
    micros_in, micros_out = exact_in // PER_MILLION, exact_out // PER_MILLION
    left = div_round_half_up(exact_in + exact_out, PER_MILLION) - micros_in - micros_out
    if left > 0:
        if prompt and output:
            if left > 1:
                micros_in, micros_out = micros_in + 1, micros_out + 1
            elif exact_in % PER_MILLION >= exact_out % PER_MILLION:
                micros_in += 1
            else:
                micros_out += 1
        elif prompt:
            micros_in += 1
        else:
            micros_out += 1
    if prompt:
        found["input"] = (prompt, flat.input, micros_in)
    if output:
        found["output"] = (output, flat.output, micros_out)
    found["request"] = (1, flat.request_fee, flat.request_fee)
    return found


def cost_micros(prices: Prices, **counts: Any) -> int:
    """The cost of one request in micro-units: the sum of its charges.

    Takes ``Counts``' fields by keyword. A request with no tokens and no images (an error
    that reached no model) costs nothing, not even the fee.
    """
    return total_micros(prices, Counts(**counts))


_PER_ITEM_DIMENSIONS = (*IMAGE_DIMENSIONS, *CALL_DIMENSIONS, "request")


def total_micros(prices: Prices, counts: Counts) -> int:
    """The sum of ``charges(prices, counts)``, without building them (the relay's per
    request figure). The token charges are their exact total rounded once and then only
    apportioned, so their sum is that rounded total; images and the fee are whole."""
    prompt = _n(counts.prompt_tokens)
    flat, _ = prices.for_request(prompt, counts.service_tier)
    if _text_only(counts) and flat.input >= 0 and flat.output >= 0:
        # Text only, most requests: ``quantities`` would give the whole prompt to "input"
        # and the whole completion to "output" (the same sum, without its dictionary).
        output = max(_n(counts.completion_tokens), _n(counts.reasoning_tokens))
        total = div_round_half_up(prompt * flat.input + output * flat.output, PER_MILLION)
        return total + flat.request_fee if prompt or output else total
    used = quantities(counts)
    exact = 0
    for dimension in TOKEN_DIMENSIONS:
        quantity = used[dimension]
        if quantity:
            unit = getattr(flat, dimension)
            if unit < 0:  # no price list holds one; the apportioning is then the rule
                found, _ = charges(prices, counts)
                return sum(micros for _, _, micros in found.values())
            exact += quantity * unit
    total = div_round_half_up(exact, PER_MILLION)
    for dimension in _PER_ITEM_DIMENSIONS:
        quantity = used[dimension]
        if quantity:
            total += quantity * _item_unit(flat, dimension)
    return total


# Image parts in any client API take at least this many bytes of the request body, and a
# generated image at least one output token: loose bounds, used only when images are priced
# and the caller has not counted the request's pictures.
MIN_IMAGE_PART_BYTES = 20


def worst_case_cost_micros(
    prices: Prices,
    *,
    prompt_bytes: int,
    max_output_tokens: int,
    input_images: int | None = None,
    output_images: int | None = None,
    web_searches: int = 0,
) -> int:
    """An upper bound of ``cost_micros`` for a request not yet sent, for reservations.

    Byte-level BPE tokens are at least one byte each, so the byte length of the serialised
    request body bounds its prompt tokens. Every prompt token is priced at the dearest
    prompt dimension, every possible output token at the dearest output dimension, of
    either tier on the dearest service tier; the division rounds up (a request's token
    charges are rounded once, so this bounds them). ``input_images`` is the number of
    pictures the relay counted in the request, exactly what a price per input image will
    bill; not given, the body's size bounds it. ``output_images`` bounds the pictures it
    may generate; not given, every possible output token could be one. ``web_searches``
    is the most searches the request lets the provider run (its tool's ``max_uses``).
    """
    prompt = max(prompt_bytes, 0)
    output = max(max_output_tokens, 0)
    percent = Decimal(max(100, prices.flex_percent, prices.priority_percent))
    sets = prices.sets()

    def dearest(dimensions: tuple[str, ...]) -> int:
        return max(percent_of(s.unit(d), percent) for s in sets for d in dimensions)

    scaled = prompt * dearest(PROMPT_DIMENSIONS) + output * dearest(OUTPUT_DIMENSIONS)
    worst = div_ceil(scaled, PER_MILLION)
    worst += max(s.request_fee for s in sets)
    pictures = prompt // MIN_IMAGE_PART_BYTES if input_images is None else max(input_images, 0)
    worst += pictures * max(s.input_image for s in sets)
    generated = output if output_images is None else max(output_images, 0)
    worst += generated * max(s.output_image for s in sets)
    if web_searches > 0:
        worst += web_searches * max(max(s.web_search, 0) for s in sets)
    return worst


@dataclass(frozen=True, slots=True)
class PricePair:
    """What the tenant pays (retail) and what the platform charges for it (wholesale).

    For a tenant directly under the platform the two are the same and ``reseller_id`` is
    None; otherwise ``reseller_id`` is the tenant's reseller, who keeps the difference.
    """

    retail: Prices
    wholesale: Prices
    reseller_id: int | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PricePair:
        return cls(
            Prices.from_dict(data["retail"]),
            Prices.from_dict(data["wholesale"]),
            data["reseller_id"],
        )


SIDES = ("retail", "wholesale")
# The snapshot columns every event keeps (the four first dimensions, as charged).
SNAPSHOT_COLUMNS = {
    "input_per_mtok": "input",
    "cached_input_per_mtok": "cached_input",
    "output_per_mtok": "output",
    "request_fee_micros": "request",
}
# Per side, each snapshot column's event field and the price attribute it copies.
_SNAPSHOT_FIELDS = {
    side: tuple(
        (f"{side}_{column}", price_attribute(dimension))
        for column, dimension in SNAPSHOT_COLUMNS.items()
    )
    for side in SIDES
}


def event_cost_fields(pair: PricePair | None, **counts: Any) -> dict[str, Any]:
    """The price snapshot and costs to store on a UsageEvent, keyed by field name.

    ``counts`` are ``Counts``' fields. ``charges`` keeps, per dimension used, the quantity
    and each side's unit price and charge; the costs are their sums. With no ``pair`` (the
    model had no price for the tenant) the event is unpriced: blank currency, no prices,
    zero costs. An event without tokens costs zero but still keeps the prices that applied.
    """
    if pair is None:
        return {
            "currency": "",
            "reseller_id": None,
            **{f"{side}_{name}": None for side in SIDES for name in SNAPSHOT_COLUMNS},
            "long_context": False,
            "charges": {},
            "cost_retail_micros": 0,
            "cost_wholesale_micros": 0,
        }
    return event_cost_fields_of(pair, Counts(**counts))


def event_cost_fields_of(pair: PricePair | None, used: Counts) -> dict[str, Any]:
    """``event_cost_fields`` of a ``Counts`` (the relay's usage record) as it is."""
    if pair is None:
        return event_cost_fields(None)
    retail, long = charges(pair.retail, used)
    # A tenant directly under the platform pays the wholesale prices: charged once.
    wholesale = retail if pair.wholesale == pair.retail else charges(pair.wholesale, used)[0]
    fields: dict[str, Any] = {"currency": pair.retail.currency, "reseller_id": pair.reseller_id}
    for side, prices in (("retail", pair.retail), ("wholesale", pair.wholesale)):
        flat, _ = prices.for_request(max(used.prompt_tokens, 0), used.service_tier)
        for field, attribute in _SNAPSHOT_FIELDS[side]:
            fields[field] = getattr(flat, attribute)
    fields["long_context"] = long
    fields["charges"] = {
        dimension: [quantity, unit, micros, *wholesale[dimension][1:]]
        for dimension, (quantity, unit, micros) in retail.items()
    }
    fields["cost_retail_micros"] = sum(micros for _, _, micros in retail.values())
    fields["cost_wholesale_micros"] = sum(micros for _, _, micros in wholesale.values())
    return fields
