"""Helpers shared by billing's services: actors, watermark locks, relay notification."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from django.db import transaction

from billing.models import BillingAccount, BillingWatermark
from portal import invalidation
from portal.models import AuditEntry, Organization

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

# A person, or a label naming the job or command acting on its own ("billing", "cli").
Actor: TypeAlias = "AbstractBaseUser | str"
SYSTEM_ACTOR = "billing"


def user_or_none(actor: Actor) -> AbstractBaseUser | None:
    return None if isinstance(actor, str) else actor


def watermark_lock(name: str) -> BillingWatermark:
    """The named watermark, locked until the end of the caller's transaction.

    Holding it serialises the job it belongs to across workers.
    """
    BillingWatermark.objects.get_or_create(name=name)
    return BillingWatermark.objects.select_for_update().get(name=name)


def tell_relay() -> None:
    """Make every relay process reload prices and limits once the transaction commits."""
    transaction.on_commit(invalidation.bump_generation)


def account_for(organization: Organization, *, currency: str | None = None) -> BillingAccount:
    """The organisation's billing account, created with the defaults (postpaid, no credit
    limit, no budget) the first time something is charged to it."""
    account = BillingAccount.objects.filter(organization=organization).first()
    if account is not None:
        return account
    defaults: dict[str, Any] = {"currency": currency} if currency else {}
    with transaction.atomic():
        account, created = BillingAccount.objects.get_or_create(
            organization=organization, defaults=defaults
        )
        if created:
            AuditEntry.record(
                actor=SYSTEM_ACTOR,
                action="billing_account.create",
                target=account,
                organization=organization,
                data={"mode": account.mode, "currency": account.currency, "automatic": True},
            )
    return account
