"""The price page's reads: each model's price in every dimension, as charged, and where
it lies below what it costs the seller."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from django.utils import timezone

from billing import catalog
from billing.models import ModelPrice, PriceList
from billing.pricing import LABELS, UNITS, Prices, prices_of
from billing.pricing.arithmetic import CALL_DIMENSIONS, DIMENSIONS, FALLBACK
from portal.models import Organization


@dataclass
class PriceRow:
    """One catalog model in one list: the price in force, a scheduled one, and (for a
    reseller's list) wholesale, with the markup's price where no explicit one is set.

    ``effective`` is what the list charges in every dimension (explicit, or wholesale
    marked up); ``cost`` what it costs the seller: for the wholesale list the provider's
    list price from the shipped catalog (checked against the provider's page on
    ``cost_checked``), for a reseller's list wholesale. ``below_cost`` names the dimensions
    priced under it.
    """

    model: str
    current: ModelPrice | None = None
    scheduled: list[ModelPrice] = field(default_factory=list)
    wholesale: ModelPrice | None = None
    effective: Prices | None = None
    cost: Prices | None = None
    cost_checked: date | None = None  # set with the catalog's list price
    cost_is_list_price: bool = False  # the cost is the catalog's list price, not wholesale
    below_cost: list[str] = field(default_factory=list)

    @property
    def dimensions(self) -> list[tuple[str, int, str]]:
        """(label, unit price, unit) of every dimension the effective price sets apart
        from the text prices, for the price page."""
        return price_dimensions(self.effective) if self.effective else []


def price_dimensions(prices: Prices) -> list[tuple[str, int, str]]:
    found = []
    for dimension in (
        "cache_write_5m",
        "cache_write_1h",
        "audio_input",
        "audio_output",
        "image_input",
        "image_output",
        "input_image",
        "output_image",
        "web_search",
    ):
        value = prices.unit(dimension)
        if dimension in CALL_DIMENSIONS and not prices.offers(dimension):
            continue  # not offered
        text = FALLBACK.get(dimension)
        if (text is None and value) or (text is not None and value != prices.unit(text)):
            found.append((LABELS[dimension], value, UNITS[dimension]))
    tier = prices.long_context
    if tier is not None and prices.long_context_above is not None:
        above = f"above {prices.long_context_above:,} prompt tokens"
        for dimension in ("input", "cached_input", "output"):
            found.append((f"{LABELS[dimension]}, {above}", tier.unit(dimension), "mtok"))
    for name, percent in (
        ("Flex tier", prices.flex_percent),
        ("Priority tier", prices.priority_percent),
    ):
        if percent != 100:
            found.append((name, percent, "percent"))
    return found


def _below(price: Prices, cost: Prices) -> list[str]:
    below = [LABELS[d] for d in _under(price, cost)]
    if price.long_context is not None and cost.long_context is not None:
        below += [
            f"{LABELS[d]} (long context)" for d in _under(price.long_context, cost.long_context)
        ]
    return below


def _under(price: Prices, cost: Prices) -> list[str]:
    """The dimensions ``price`` sells under ``cost``; a tool it does not offer is refused,
    never sold below cost."""
    return [
        d
        for d in DIMENSIONS
        if price.unit(d) < cost.unit(d) and (d not in CALL_DIMENSIONS or price.offers(d))
    ]


def _in_force(prices: list[ModelPrice], now: datetime) -> tuple[ModelPrice | None, list]:
    started = [p for p in prices if p.effective_from <= now]
    current = max(started, key=lambda p: p.effective_from, default=None)
    later = sorted((p for p in prices if p.effective_from > now), key=lambda p: p.effective_from)
    return current, later


def price_rows(price_list: PriceList) -> list[PriceRow]:
    """Every model priced in the list or (for a reseller's list) at wholesale."""
    now = timezone.now()
    by_model: dict[str, list[ModelPrice]] = defaultdict(list)
    for price in ModelPrice.objects.filter(price_list=price_list).select_related("model"):
        by_model[price.model.public_id].append(price)
    wholesale: dict[str, ModelPrice | None] = {}
    if price_list.owner.kind != Organization.Kind.PLATFORM:
        wholesale_list = PriceList.objects.filter(
            owner__kind=Organization.Kind.PLATFORM, is_default=True
        ).first()
        if wholesale_list is not None:
            grouped: dict[str, list[ModelPrice]] = defaultdict(list)
            for price in ModelPrice.objects.filter(price_list=wholesale_list).select_related(
                "model"
            ):
                grouped[price.model.public_id].append(price)
            wholesale = {model: _in_force(prices, now)[0] for model, prices in grouped.items()}
    currency = price_list.currency
    platform = price_list.owner.kind == Organization.Kind.PLATFORM
    costs = catalog.load().by_id() if platform else {}
    rows = []
    for model in sorted(set(by_model) | set(wholesale)):
        current, scheduled = _in_force(by_model.get(model, []), now)
        row = PriceRow(model, current, scheduled, wholesale.get(model))
        wholesale_prices = prices_of(row.wholesale, currency) if row.wholesale else None
        if current is not None:
            row.effective = prices_of(current, currency)
        elif wholesale_prices is not None and price_list.markup_percent is not None:
            row.effective = wholesale_prices.marked_up(price_list.markup_percent)
        entry = costs.get(model)
        if entry is not None:
            row.cost = prices_of(ModelPrice(**catalog_fields(entry)), currency)
            row.cost_checked = entry.checked
            row.cost_is_list_price = True
        elif not platform:
            row.cost = wholesale_prices
        if row.effective is not None and row.cost is not None:
            row.below_cost = _below(row.effective, row.cost)
        rows.append(row)
    return rows


def catalog_fields(entry: catalog.CatalogEntry) -> dict[str, Any]:
    fields = {**entry.price_fields(), "long_context_prices": entry.long_context_prices}
    if fields["cached_input_per_mtok"] is None:
        fields["cached_input_per_mtok"] = fields["input_per_mtok"]
    return fields


@dataclass(frozen=True, slots=True)
class CatalogSummary:
    models: int
    first: date | None  # when the entries were checked, oldest and newest
    last: date | None
    through_copy: int  # entries whose provider page was read through a copy held elsewhere


def catalog_summary() -> CatalogSummary:
    """How many models the shipped catalog holds, when their figures were checked, and how
    many were checked through a copy of the provider's page held elsewhere."""
    shipped = catalog.load()
    checked = shipped.checked_dates()
    return CatalogSummary(
        len(shipped.entries),
        checked[0] if checked else None,
        checked[-1] if checked else None,
        sum(1 for entry in shipped.entries if entry.source_copy_url),
    )
