"""The price catalog that ships with Tollgate: providers' public list prices, context
windows and capabilities of well-known models (``models.json``). Read from the package,
never from the network.

An entry's ``checked`` is the day its figures were compared with a stored copy of the
provider's own page (``source``); ``unverified`` names the figures that page did not show.
An entry no provider page confirmed has no ``checked`` date and a ``note`` saying why: its
figures are as first published, and importing them flags them as unverified."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from billing.money import to_micros
from billing.pricing.lookups import PRICE_COLUMNS  # the catalog's price names are Prices'

CATALOG_PATH = Path(__file__).with_name("models.json")


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One model of the catalog, its prices in micro-units (by ModelPrice column)."""

    id: str
    provider: str
    checked: date | None  # None: no provider page confirmed these figures (see ``note``)
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

    @property
    def verified(self) -> bool:
        """Whether a provider page confirmed this entry's prices."""
        return self.checked is not None

    def price_fields(self) -> dict[str, Any]:
        """The entry as ``billing.services.model_price_set``'s price arguments."""
        fields: dict[str, Any] = {"cached_input_per_mtok": None, **self.prices}
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
        """The dates the verified entries were checked, oldest first."""
        return sorted(entry.checked for entry in self.entries if entry.checked is not None)

    def unverified_ids(self) -> list[str]:
        """The entries whose figures no provider page confirmed."""
        return [entry.id for entry in self.entries if not entry.verified]


def _prices(raw: dict[str, Any], where: str) -> dict[str, int]:
    unknown = set(raw) - set(PRICE_COLUMNS)
    if unknown:
        raise ValueError(f"{where}: unknown prices {sorted(unknown)}")
    return {PRICE_COLUMNS[name]: to_micros(str(value)) for name, value in raw.items()}


def parse(data: dict[str, Any]) -> Catalog:
    """Check and convert the catalog's JSON; raises ValueError on anything malformed."""
    entries = []
    for raw in data["models"]:
        where = f"catalog model {raw.get('id')!r}"
        prices = _prices(raw["prices"], where)
        if "input_per_mtok" not in prices or "output_per_mtok" not in prices:
            raise ValueError(f"{where}: input and output prices are required")
        long = raw.get("long_context") or {}
        tier = _prices(long.get("prices") or {}, where)
        surfaces = raw.get("surfaces")
        checked = raw["checked"]
        note = str(raw.get("note") or "")
        if checked is None and not note:
            raise ValueError(f"{where}: an unchecked entry needs a note saying why")
        entries.append(
            CatalogEntry(
                id=str(raw["id"]),
                provider=str(raw["provider"]),
                checked=None if checked is None else date.fromisoformat(checked),
                source=str(raw.get("source") or ""),
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
                note=note,
                unverified=tuple(str(name) for name in raw.get("unverified") or ()),
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
