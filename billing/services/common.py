"""Helpers shared by billing's services: watermark locks, relay notification, accounts.

Billing's services take the one ``Actor`` type of ``portal.services.common``."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from billing.models import BillingAccount, BillingWatermark, TenantDefaults
from portal import invalidation
from portal.models import AuditEntry, Organization

# The label billing's own jobs act under.
SYSTEM_ACTOR = "billing"


def watermark_lock(name: str) -> BillingWatermark:
    """The named watermark, locked until the end of the caller's transaction.

    Holding it serialises the job it belongs to across workers.
    """
    BillingWatermark.objects.get_or_create(name=name)
    return BillingWatermark.objects.select_for_update().get(name=name)


def tell_relay() -> None:
    """Make every relay process reload prices and limits once the transaction commits."""
    transaction.on_commit(invalidation.bump_generation)


def new_account_fields(organization: Organization) -> dict[str, Any]:
    """What a new account of ``organization`` starts with: a tenant gets its seller's
    TenantDefaults (prepaid with nothing to spend when the seller set none); a reseller is
    invoiced by the platform (postpaid)."""
    if organization.kind == Organization.Kind.RESELLER:
        return {"mode": BillingAccount.Mode.POSTPAID}
    defaults = TenantDefaults.objects.filter(seller_id=organization.parent_id).first()
    return defaults.account_fields() if defaults else {"mode": BillingAccount.Mode.PREPAID}


def account_for(organization: Organization, *, currency: str | None = None) -> BillingAccount:
    """The organisation's billing account, created the first time something is charged to
    it, on its seller's default terms (``new_account_fields``), with no budget."""
    account = BillingAccount.objects.filter(organization=organization).first()
    if account is not None:
        return account
    defaults: dict[str, Any] = new_account_fields(organization)
    if currency:
        defaults["currency"] = currency
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
