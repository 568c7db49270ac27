"""Importing the shipped price catalog (``billing.catalog``) into the wholesale list.

The import adds what is missing and changes nothing else: a model not yet in the catalog
is created with the catalog's context window and capabilities, and a model without a
wholesale price is priced at the provider's list price. Models the operator already priced
keep their price (``reprice`` brings them to the catalog's); importing twice changes
nothing, so the command and the button are safe to press again. Every entry carries the
date its figures were checked against the provider's page (``billing.catalog``).

A price change the provider has already announced is scheduled with the wholesale price
it follows: the catalog's price in force now is set from now, each later one from its
moment, so every relay charges it from then on. A model priced otherwise by the operator
gets none of them; a price the operator scheduled at the same moment is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.catalog import Catalog, CatalogEntry, load
from billing.models import ModelPrice, PriceList
from billing.pricing import prices_of
from billing.services.prices import model_price_set, price_list_create
from portal.models import AuditEntry, CatalogModel, Organization
from portal.services.catalog import catalog_model_upsert
from portal.services.common import Actor


@dataclass(slots=True)
class CatalogImport:
    """What an import did, by model id."""

    models_created: list[str] = field(default_factory=list)
    models_completed: list[str] = field(default_factory=list)
    priced: list[str] = field(default_factory=list)
    repriced: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # priced by the operator otherwise
    scheduled: list[str] = field(default_factory=list)  # announced later prices scheduled

    @property
    def changed(self) -> bool:
        return bool(
            self.models_created
            or self.models_completed
            or self.priced
            or self.repriced
            or self.scheduled
        )


def _wholesale_list(catalog: Catalog, actor: Actor) -> PriceList:
    wholesale = PriceList.objects.filter(owner__kind="platform", is_default=True).first()
    if wholesale is None:
        platform = Organization.objects.filter(kind=Organization.Kind.PLATFORM).first()
        if platform is None:
            raise ValidationError("There is no platform organisation to own the wholesale list.")
        wholesale = price_list_create(
            owner=platform,
            name="Wholesale",
            currency=catalog.currency,
            is_default=True,
            actor=actor,
        )
    if wholesale.currency != catalog.currency:
        raise ValidationError(
            f"The catalog is priced in {catalog.currency}; the wholesale list in "
            f"{wholesale.currency}."
        )
    return wholesale


def _catalog_model(entry: CatalogEntry, actor: Actor, result: CatalogImport) -> CatalogModel:
    """The model, created from the catalog, or with the blanks it had filled in."""
    existing = CatalogModel.objects.filter(public_id=entry.id).first()
    if existing is not None and not any(
        not have and wanted
        for have, wanted in (
            (existing.context_window, entry.context_window),
            (existing.max_output_tokens, entry.max_output_tokens),
            (existing.capabilities, entry.capabilities),
        )
    ):
        return existing
    model = catalog_model_upsert(
        public_id=entry.id,
        actor=actor,
        owned_by=existing.owned_by if existing else entry.provider,
        capabilities=(existing.capabilities if existing else None) or entry.capabilities,
        context_window=(existing.context_window if existing else None) or entry.context_window,
        max_output_tokens=(existing.max_output_tokens if existing else None)
        or entry.max_output_tokens,
        description=existing.description if existing else "",
        surfaces=existing.surfaces if existing else entry.surfaces,
    )
    (result.models_completed if existing else result.models_created).append(entry.id)
    return model


def _same(price: ModelPrice, fields: dict[str, Any]) -> bool:
    """Whether ``price`` charges what ``fields`` (``price_fields``) would, dimension by
    dimension."""
    wanted = ModelPrice(**fields)
    if wanted.cached_input_per_mtok is None:  # as model_price_set will store it
        wanted.cached_input_per_mtok = wanted.input_per_mtok
    wanted.long_context_prices = fields["long_context_prices"] or {}
    return prices_of(price, "") == prices_of(wanted, "")


def _schedule(
    entry: CatalogEntry,
    wholesale: PriceList,
    model: CatalogModel,
    actor: Actor,
    now: datetime,
    result: CatalogImport,
) -> None:
    """Schedule the entry's announced later prices that the list does not hold yet."""
    for moment, fields in entry.scheduled_after(now):
        there = ModelPrice.objects.filter(
            price_list=wholesale, model=model, effective_from=moment
        ).first()
        if there is not None:
            if not _same(there, fields) and entry.id not in result.kept:
                result.kept.append(entry.id)  # the operator scheduled their own price then
            continue
        model_price_set(
            price_list=wholesale, model=model, actor=actor, effective_from=moment, **fields
        )
        if entry.id not in result.scheduled:
            result.scheduled.append(entry.id)


@transaction.atomic
def price_catalog_import(
    *, actor: Actor, reprice: bool = False, catalog: Catalog | None = None
) -> CatalogImport:
    """Import the shipped catalog into the platform's wholesale list (created if missing).

    With ``reprice``, a model whose wholesale price differs from the catalog's is given
    the catalog's price from now on (earlier prices stay for history).
    """
    catalog = catalog or load()
    wholesale = _wholesale_list(catalog, actor)
    now = timezone.now()
    result = CatalogImport()
    for entry in catalog.entries:
        model = _catalog_model(entry, actor, result)
        current = (
            ModelPrice.objects.filter(price_list=wholesale, model=model, effective_from__lte=now)
            .order_by("-effective_from")
            .first()
        )
        fields = entry.price_fields(now)
        if current is None or not _same(current, fields):
            if current is not None and not reprice:
                result.kept.append(entry.id)
                continue  # the operator's price: the catalog's later ones do not follow it
            model_price_set(price_list=wholesale, model=model, actor=actor, **fields)
            (result.repriced if current is not None else result.priced).append(entry.id)
        _schedule(entry, wholesale, model, actor, now, result)
    if result.changed:
        AuditEntry.record(
            actor=actor,
            action="price_catalog.import",
            target=wholesale,
            organization=wholesale.owner,
            data={
                "models_created": result.models_created,
                "models_completed": result.models_completed,
                "priced": result.priced,
                "repriced": result.repriced,
                "kept": result.kept,
                "scheduled": result.scheduled,
            },
        )
    return result
