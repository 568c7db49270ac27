"""The price catalog that ships with Tollgate: providers' public list prices, context
windows and capabilities of well-known models (``models.json``). Read from the package,
never from the network.

Every entry carries ``checked``: the day its figures were compared with a stored copy of the
provider's own page (``source``). Where that page was read through a copy held elsewhere (an
archived snapshot, or a transcription quoting it verbatim), ``source_copy`` names the copy
and the day it read the page. ``unverified`` names the figures the page did not show. A
model no provider page confirms is not in the catalog: there is no undated figure.

A price the provider has already announced for a later date (a price "through December
31" and another "starting January 1") is a ``scheduled`` change: from its moment it
replaces the entry's ``prices`` (the long-context tier stays), and the import schedules it
on the wholesale list so every relay charges it from that moment."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from billing.money import to_micros
from billing.pricing.lookups import PRICE_COLUMNS  # the catalog's price names are Prices'

CATALOG_PATH = Path(__file__).with_name("models.json")


@dataclass(frozen=True, slots=True)
class ScheduledPrice:
    """Prices (by ModelPrice column, micro-units) that apply from ``effective_from`` on."""

    effective_from: datetime
    prices: dict[str, int]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One model of the catalog, its prices in micro-units (by ModelPrice column)."""

    id: str
    provider: str
    checked: date  # when the figures were compared with the provider's page
    source: str
    context_window: int | None
    max_output_tokens: int | None
    capabilities: tuple[str, ...]
    surfaces: tuple[str, ...] | None
    prices: dict[str, int]
    long_context_above_tokens: int | None
    long_context_prices: dict[str, int]
    flex_percent: int | None
    priority_percent: int | None
    note: str = ""
    unverified: tuple[str, ...] = ()  # figures the page at ``source`` did not show
    # The copy the provider's page was read through, when not a copy of the page itself.
    source_copy_url: str = ""
    source_copy_read: date | None = None
    scheduled: tuple[ScheduledPrice, ...] = ()  # announced changes, oldest first

    def prices_at(self, at: datetime) -> dict[str, int]:
        """The prices in force at ``at``: the latest scheduled change due by then, if any."""
        prices = self.prices
        for change in self.scheduled:
            if change.effective_from <= at:
                prices = change.prices
        return prices

    def scheduled_after(self, at: datetime) -> list[tuple[datetime, dict[str, Any]]]:
        """The changes still to come after ``at``, as (moment, ``price_fields``) pairs."""
        return [
            (change.effective_from, self.price_fields(change.effective_from))
            for change in self.scheduled
            if change.effective_from > at
        ]

    def price_fields(self, at: datetime | None = None) -> dict[str, Any]:
        """The entry's prices in force at ``at`` (default now) as
        ``billing.services.model_price_set``'s price arguments."""
        prices = self.prices_at(at or datetime.now(UTC))
        fields: dict[str, Any] = {"cached_input_per_mtok": None, **prices}
        fields.update(
            long_context_above_tokens=self.long_context_above_tokens,
            long_context_prices=self.long_context_prices or None,
            flex_percent=self.flex_percent,
            priority_percent=self.priority_percent,
        )
        return fields


@dataclass(frozen=True, slots=True)
class Catalog:
    currency: str
    entries: tuple[CatalogEntry, ...]

    def by_id(self) -> dict[str, CatalogEntry]:
        return {entry.id: entry for entry in self.entries}

    def checked_dates(self) -> list[date]:
        """The dates the entries were checked, oldest first."""
        return sorted(entry.checked for entry in self.entries)


def _prices(raw: dict[str, Any], where: str) -> dict[str, int]:
    unknown = set(raw) - set(PRICE_COLUMNS)
    if unknown:
        raise ValueError(f"{where}: unknown prices {sorted(unknown)}")
    return {PRICE_COLUMNS[name]: to_micros(str(value)) for name, value in raw.items()}


_ENTRY_KEYS = frozenset(
    {
        "id",
        "provider",
        "checked",
        "source",
        "source_copy",
        "unverified",
        "note",
        "context_window",
        "max_output_tokens",
        "capabilities",
        "surfaces",
        "prices",
        "long_context",
        "flex_percent",
        "priority_percent",
        "scheduled",
    }
)


def _date(value: Any, where: str, name: str) -> date:
    """An ISO date (YYYY-MM-DD), or ValueError naming the field."""
    if not isinstance(value, str):
        raise ValueError(f"{where}: {name} must be an ISO date, not {value!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{where}: {name} must be an ISO date, not {value!r}") from None


def _source_copy(raw: Any, where: str) -> tuple[str, date | None]:
    if raw is None:
        return "", None
    if not isinstance(raw, dict) or set(raw) != {"url", "read"}:
        raise ValueError(f"{where}: source_copy needs exactly a url and the date it was read")
    url = str(raw["url"])
    if not url.startswith("https://"):
        raise ValueError(f"{where}: source_copy url must be an https address")
    return url, _date(raw["read"], where, "source_copy.read")


def _required_prices(raw: Any, where: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: prices must be an object")
    prices = _prices(raw, where)
    if "input_per_mtok" not in prices or "output_per_mtok" not in prices:
        raise ValueError(f"{where}: input and output prices are required")
    return prices


def _scheduled(raw: Any, where: str) -> tuple[ScheduledPrice, ...]:
    """Announced price changes: each from a timezone-aware ISO moment, in order."""
    changes: list[ScheduledPrice] = []
    for item in raw or ():
        if not isinstance(item, dict) or set(item) != {"from", "prices"}:
            raise ValueError(f"{where}: a scheduled price needs exactly 'from' and 'prices'")
        try:
            moment = datetime.fromisoformat(str(item["from"]))
        except ValueError:
            raise ValueError(f"{where}: scheduled 'from' must be an ISO moment") from None
        if moment.tzinfo is None:
            raise ValueError(f"{where}: scheduled 'from' must carry its time zone")
        if changes and moment <= changes[-1].effective_from:
            raise ValueError(f"{where}: scheduled prices must be in order, one per moment")
        changes.append(ScheduledPrice(moment, _required_prices(item["prices"], where)))
    return tuple(changes)


def parse(data: dict[str, Any]) -> Catalog:
    """Check and convert the catalog's JSON; raises ValueError on anything malformed."""
    entries = []
    for raw in data["models"]:
        where = f"catalog model {raw.get('id')!r}"
        prices = _required_prices(raw.get("prices"), where)
        long = raw.get("long_context") or {}
        tier = _prices(long.get("prices") or {}, where)
        surfaces = raw.get("surfaces")
        unknown_keys = set(raw) - _ENTRY_KEYS
        if unknown_keys:
            raise ValueError(f"{where}: unknown fields {sorted(unknown_keys)}")
        # Every figure carries the date it was checked: a model without one is refused.
        checked = _date(raw.get("checked"), where, "checked")
        source = str(raw.get("source") or "")
        if not source.startswith("https://"):
            raise ValueError(f"{where}: source must be the provider's page (an https address)")
        copy_url, copy_read = _source_copy(raw.get("source_copy"), where)
        if copy_read is not None and copy_read > checked:
            raise ValueError(f"{where}: source_copy was read after the entry was checked")
        entries.append(
            CatalogEntry(
                id=str(raw["id"]),
                provider=str(raw["provider"]),
                checked=checked,
                source=source,
                context_window=raw.get("context_window"),
                max_output_tokens=raw.get("max_output_tokens"),
                capabilities=tuple(raw.get("capabilities") or ()),
                surfaces=None if surfaces is None else tuple(surfaces),
                prices=prices,
                long_context_above_tokens=long.get("above_tokens"),
                # The tier's prices by dimension name, as ModelPrice.long_context_prices.
                long_context_prices={
                    name: tier[column] for name, column in PRICE_COLUMNS.items() if column in tier
                },
                flex_percent=raw.get("flex_percent"),
                priority_percent=raw.get("priority_percent"),
                note=str(raw.get("note") or ""),
                unverified=tuple(str(name) for name in raw.get("unverified") or ()),
                source_copy_url=copy_url,
                source_copy_read=copy_read,
                scheduled=_scheduled(raw.get("scheduled"), where),
            )
        )
    ids = [entry.id for entry in entries]
    if len(set(ids)) != len(ids):
        raise ValueError("the catalog lists a model twice")
    return Catalog(currency=str(data["currency"]).upper(), entries=tuple(entries))


@functools.cache
def load() -> Catalog:
    """The shipped catalog (read once per process)."""
    return parse(json.loads(CATALOG_PATH.read_text(encoding="utf-8")))
