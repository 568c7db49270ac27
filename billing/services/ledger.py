"""Ledger workflows: top-ups, adjustments, refunds, redemption codes and usage charges.

Balances only ever change through these functions, each writing one ledger entry (and,
where a person acts, an audit entry) in the same transaction.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from billing.models import (
    BillingAccount,
    BillingWatermark,
    LedgerEntry,
    RedemptionCode,
    UsageEvent,
)
from billing.selectors import BILLABLE, watermark_margin
from billing.services.common import account_for, tell_relay
from portal import crypto
from portal.models import AuditEntry, Organization
from portal.services.common import Actor, user_or_none

REDEMPTION_CODE_PREFIX = "TG"
USAGE_BATCH_SIZE = 1000


def _entry(
    *,
    account: BillingAccount,
    kind: str,
    amount_micros: int,
    actor: Actor,
    memo: str,
    reference: str = "",
    action: str,
) -> LedgerEntry:
    entry = LedgerEntry.objects.create(
        account=account,
        kind=kind,
        amount_micros=amount_micros,
        reference=reference,
        memo=memo,
        created_at=timezone.now(),
        created_by=user_or_none(actor),
    )
    AuditEntry.record(
        actor=actor,
        action=action,
        target=entry,
        organization=account.organization,
        data={
            "account": account.pk,
            "amount_micros": amount_micros,
            "currency": account.currency,
            "reference": reference,
            "memo": memo,
        },
    )
    tell_relay()
    return entry


def _positive(amount_micros: int) -> None:
    if not isinstance(amount_micros, int) or isinstance(amount_micros, bool) or amount_micros <= 0:
        raise ValidationError({"amount_micros": "Give a positive whole number of micro-units."})


@transaction.atomic
def account_topup(
    *,
    account: BillingAccount,
    amount_micros: int,
    actor: Actor,
    memo: str = "",
    reference: str = "",
) -> LedgerEntry:
    """Credit the account (a payment received by the operator or the reseller)."""
    _positive(amount_micros)
    return _entry(
        account=account,
        kind=LedgerEntry.Kind.TOPUP,
        amount_micros=amount_micros,
        actor=actor,
        memo=memo,
        reference=reference,
        action="ledger.topup",
    )


@transaction.atomic
def account_adjust(
    *, account: BillingAccount, amount_micros: int, actor: Actor, memo: str
) -> LedgerEntry:
    """Correct a balance by a signed amount; the memo says why."""
    if not isinstance(amount_micros, int) or isinstance(amount_micros, bool) or not amount_micros:
        raise ValidationError({"amount_micros": "Give a non-zero whole number of micro-units."})
    if not memo.strip():
        raise ValidationError({"memo": "Say why the balance is adjusted."})
    return _entry(
        account=account,
        kind=LedgerEntry.Kind.ADJUSTMENT,
        amount_micros=amount_micros,
        actor=actor,
        memo=memo,
        action="ledger.adjust",
    )


@transaction.atomic
def account_refund(
    *, account: BillingAccount, amount_micros: int, actor: Actor, memo: str, reference: str = ""
) -> LedgerEntry:
    """Credit back charges the customer should not have borne (``reference``: their cause,
    e.g. a request id or ``invoice:<id>``); a reference is refunded at most once."""
    _positive(amount_micros)
    return _entry(
        account=account,
        kind=LedgerEntry.Kind.REFUND,
        amount_micros=amount_micros,
        actor=actor,
        memo=memo,
        reference=reference,
        action="ledger.refund",
    )


# --- Redemption codes -----------------------------------------------------------------------


def _normalise_code(code: str) -> str:
    """A code as printed, ``TG-XXXX-…-XXXX``, however it was typed: any case, spaces or
    dashes between the groups, or none."""
    compact = "".join(code.replace("-", " ").split()).upper()
    body = compact.removeprefix(REDEMPTION_CODE_PREFIX)
    if compact.startswith(REDEMPTION_CODE_PREFIX) and len(body) == 24:
        return "-".join([REDEMPTION_CODE_PREFIX, *(body[i : i + 4] for i in range(0, 24, 4))])
    return "".join(code.split()).upper()


@transaction.atomic
def redemption_code_create(
    *,
    issuer: Organization,
    amount_micros: int,
    currency: str,
    actor: Actor,
    memo: str = "",
    expires_at: datetime | None = None,
) -> tuple[RedemptionCode, str]:
    """A code worth ``amount_micros``, and its text: shown now, never stored in clear.

    Codes of the platform may be redeemed by any account in their currency; codes of a
    reseller only by its tenants.
    """
    _positive(amount_micros)
    if issuer.kind == Organization.Kind.TENANT:
        raise ValidationError({"issuer": "Tenants cannot issue redemption codes."})
    body = base64.b32encode(secrets.token_bytes(15)).decode()
    text = "-".join([REDEMPTION_CODE_PREFIX, *(body[i : i + 4] for i in range(0, 24, 4))])
    code = RedemptionCode(
        issuer=issuer,
        prefix=text[:7],
        digest=crypto.api_key_digest(_normalise_code(text)),
        amount_micros=amount_micros,
        currency=currency.upper(),
        memo=memo,
        expires_at=expires_at,
        created_by=user_or_none(actor),
    )
    code.save()
    AuditEntry.record(
        actor=actor,
        action="redemption_code.create",
        target=code,
        organization=issuer,
        data={"prefix": code.prefix, "amount_micros": amount_micros, "currency": code.currency},
    )
    return code, text


@transaction.atomic
def redemption_code_redeem(*, code: str, account: BillingAccount, actor: Actor) -> LedgerEntry:
    """Credit ``account`` with the code's amount; a code works once, however many try.

    The code is claimed with a conditional UPDATE (only while unredeemed); a second
    redemption, concurrent or later, finds no row to claim and is refused.
    """
    found = RedemptionCode.objects.filter(
        digest=crypto.api_key_digest(_normalise_code(code))
    ).first()
    if found is None:
        raise ValidationError("This code is not valid.", code="invalid")
    if found.redeemed_at is not None:
        raise ValidationError("This code has already been redeemed.", code="redeemed")
    now = timezone.now()
    if found.expires_at is not None and found.expires_at <= now:
        raise ValidationError("This code has expired.", code="expired")
    if found.currency != account.currency:
        raise ValidationError("This code is in another currency.", code="currency")
    organization = account.organization
    if (
        found.issuer.kind != Organization.Kind.PLATFORM
        and organization.parent_id != found.issuer_id
    ):
        raise ValidationError("This code is not valid.", code="invalid")
    claimed = RedemptionCode.objects.filter(pk=found.pk, redeemed_at__isnull=True).update(
        redeemed_at=now, redeemed_account=account, redeemed_by=user_or_none(actor)
    )
    if claimed != 1:
        raise ValidationError("This code has already been redeemed.", code="redeemed")
    return _entry(
        account=account,
        kind=LedgerEntry.Kind.TOPUP,
        amount_micros=found.amount_micros,
        actor=actor,
        memo=f"Redemption code {found.prefix}…",
        reference=f"code:{found.pk}",
        action="redemption_code.redeem",
    )


# --- Usage charges --------------------------------------------------------------------------


def usage_charge_post(
    *, recorded_after: datetime | None = None, recorded_until: datetime | None = None
) -> int:
    """Post one usage charge per billable event recorded in the range; returns how many.

    The tenant's account is charged the retail cost and, for resold usage, the reseller's
    account the wholesale cost, each entry referencing the event's request id. The unique
    (account, kind, reference) constraint makes reruns and overlapping runs post nothing
    twice, so work is committed batch by batch rather than in one long transaction.
    Accounts are opened with the defaults for organisations that have none.
    """
    tenant_charge = LedgerEntry.objects.filter(
        kind=LedgerEntry.Kind.USAGE,
        reference=OuterRef("request_id"),
        account__organization_id=OuterRef("tenant_id"),
    )
    events = UsageEvent.objects.filter(BILLABLE).filter(~Exists(tenant_charge))
    if recorded_after is not None:
        events = events.filter(recorded_at__gt=recorded_after)
    if recorded_until is not None:
        events = events.filter(recorded_at__lte=recorded_until)
    fields = (
        "id",
        "request_id",
        "created_at",
        "tenant_id",
        "reseller_id",
        "model",
        "currency",
        "cost_retail_micros",
        "cost_wholesale_micros",
    )
    posted, last_id = 0, 0
    while True:
        batch = list(events.filter(id__gt=last_id).order_by("id").only(*fields)[:USAGE_BATCH_SIZE])
        if not batch:
            return posted
        last_id = batch[-1].id
        posted += _post_batch(batch)


@transaction.atomic
def _post_batch(events: list[UsageEvent]) -> int:
    org_ids = {e.tenant_id for e in events} | {e.reseller_id for e in events if e.reseller_id}
    accounts = {
        a.organization_id: a for a in BillingAccount.objects.filter(organization_id__in=org_ids)
    }
    for organization in Organization.objects.filter(pk__in=org_ids - set(accounts)):
        currency = next(
            e.currency for e in events if organization.pk in (e.tenant_id, e.reseller_id)
        )
        accounts[organization.pk] = account_for(organization, currency=currency)
    entries = []
    for event in events:
        entries.append(_usage_entry(accounts[event.tenant_id], event, event.cost_retail_micros))
        if event.reseller_id:
            reseller = accounts[event.reseller_id]
            entries.append(_usage_entry(reseller, event, event.cost_wholesale_micros))
    LedgerEntry.objects.bulk_create(entries, ignore_conflicts=True)
    return len(events)


def _usage_entry(account: BillingAccount, event: UsageEvent, cost: int) -> LedgerEntry:
    return LedgerEntry(
        account=account,
        kind=LedgerEntry.Kind.USAGE,
        amount_micros=-cost,
        reference=event.request_id,
        memo=event.model,
        created_at=event.created_at,
    )


def usage_charges_advance() -> int:
    """The periodic job: post charges for events recorded since the last run (less the
    margin, for rows committed late), then move the watermark."""
    now = timezone.now()
    position = (
        BillingWatermark.objects.filter(name=BillingWatermark.USAGE_CHARGES)
        .values_list("position", flat=True)
        .first()
    )
    since = None if position is None else position - watermark_margin()
    posted = usage_charge_post(recorded_after=since)
    BillingWatermark.objects.get_or_create(name=BillingWatermark.USAGE_CHARGES)
    BillingWatermark.objects.filter(name=BillingWatermark.USAGE_CHARGES).exclude(
        position__gt=now
    ).update(position=now, updated_at=now)
    return posted
