"""The model catalog: public model ids and what they can do."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from portal.models import (
    AuditEntry,
    CatalogModel,
)
from portal.models.catalog import SURFACES
from portal.services.common import Actor, apply_changes


def check_public_id(public_id: str) -> None:
    # Clients type these ids; one with a space in it could never be requested.
    if not public_id or public_id != "".join(public_id.split()):
        raise ValidationError({"public_id": "A model id cannot be blank or contain spaces."})


def check_surfaces(surfaces: Iterable[str]) -> list[str]:
    """The client APIs a model is offered on: known names, at least one, each once."""
    chosen = list(surfaces)
    unknown = [s for s in chosen if s not in SURFACES]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValidationError(
            {"surfaces": f"Give one or more of: {', '.join(SURFACES)}, each once."}
        )
    return chosen


@transaction.atomic
def catalog_model_upsert(
    *,
    public_id: str,
    actor: Actor,
    owned_by: str = "tollgate",
    capabilities: Iterable[str] = (),
    context_window: int | None = None,
    max_output_tokens: int | None = None,
    description: str = "",
    surfaces: Iterable[str] | None = None,
) -> CatalogModel:
    """Create the catalog entry ``public_id`` or bring it to the given values.

    Audited only when something changed, so re-running a seed leaves no noise.
    """
    check_public_id(public_id)
    values: dict[str, Any] = {
        "owned_by": owned_by,
        "capabilities": list(capabilities),
        "context_window": context_window,
        "max_output_tokens": max_output_tokens,
        "description": description,
    }
    if surfaces is not None:
        values["surfaces"] = check_surfaces(surfaces)
    # Validate before get_or_create, which would otherwise insert unchecked values.
    CatalogModel(public_id=public_id, **values).full_clean(
        validate_unique=False, validate_constraints=False
    )
    model, created = CatalogModel.objects.select_for_update().get_or_create(
        public_id=public_id, defaults=values
    )
    if created:
        AuditEntry.record(
            actor=actor,
            action="catalog_model.create",
            target=model,
            data={"public_id": public_id, **values},
        )
        return model
    changed = apply_changes(model, values)
    if changed:
        model.save(update_fields=list(changed))
        AuditEntry.record(
            actor=actor,
            action="catalog_model.update",
            target=model,
            data={"public_id": public_id, "changed": changed},
        )
    return model
