"""Who acts: the one Actor type every service takes, the portal's and billing's alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from django.contrib.auth.models import User

# A person, or a label naming the script, job or command acting on its own ("cli",
# "billing", "health").
Actor: TypeAlias = "User | str"


def user_or_none(actor: Actor) -> User | None:
    return None if isinstance(actor, str) else actor
