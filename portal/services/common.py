"""What every portal service shares: who acts."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

# A person, or a label naming the script or command that acts on its own ("cli", "seed").
Actor: TypeAlias = "AbstractBaseUser | str"


def user_or_none(actor: Actor) -> AbstractBaseUser | None:
    return None if isinstance(actor, str) else actor
