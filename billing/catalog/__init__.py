"""The price catalog that ships with Tollgate: providers' public list prices, context
windows and capabilities of well-known models (``models.json``). Read from the package,
never from the network.

Every entry carries ``checked``: the day its figures were compared with a stored copy of the
provider's own page (``source``). Where that page was read through a copy held elsewhere (an
archived snapshot, or a transcription quoting it verbatim), ``source_copy`` names the copy
and the day it read the page. ``unverified`` names the figures the page did not show. A
model no provider page confirms is not in the catalog: there is no undated figure."""

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
