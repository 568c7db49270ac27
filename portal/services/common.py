"""Who acts: the one Actor type every service takes, the portal's and billing's alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    from django.contrib.auth.models import User
    from django.db.models import Model

# A person, or a label naming the script, job or command acting on its own ("cli",
# "billing", "health").
Actor: TypeAlias = "User | str"


def user_or_none(actor: Actor) -> User | None:
    return None if isinstance(actor, str) else actor


def apply_changes(instance: Model, values: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Set on ``instance`` the fields of ``values`` that differ from what it holds, and
    return those as ``{field: {"from": old, "to": new}}``, the audit's form (empty when
    nothing differs). Checking and saving stay the caller's."""
    changed = {
        field: {"from": getattr(instance, field), "to": value}
        for field, value in values.items()
        if getattr(instance, field) != value
    }
    for field, change in changed.items():
        setattr(instance, field, change["to"])
    return changed
