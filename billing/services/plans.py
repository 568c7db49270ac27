"""Plan workflows: define plans, subscribe tenants, and renew each month exactly once.

A month of a subscription is a ``PlanCharge`` row, unique per subscription and month:
whoever inserts it (the subscription itself for the month it starts in, or the renewal
job on the first of each month, however many times and on however many workers it runs)
posts the fee and grants the included credit; anyone else finds the row and posts
nothing. The ledger's unique (account, kind, reference) constraint guards it a second
time. Months are calendar months (UTC), the invoices' periods; a subscription started
mid-month pays that month's whole fee (no proration).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from billing.models import LedgerEntry, Plan, PlanCharge, PlanWindow, Subscription
from billing.periods import Period
from billing.services.common import SYSTEM_ACTOR, account_for, tell_relay
from portal.models import AuditEntry, Organization
from portal.services.common import Actor, user_or_none

MAX_WINDOWS = 8


def _clean_windows(windows: list[dict[str, Any]]) -> list[PlanWindow]:
    if len(windows) > MAX_WINDOWS:
        raise ValidationError({"windows": f"A plan has at most {MAX_WINDOWS} windows."})
    cleaned = []
    for spec in windows:
        length, kind, cap = spec.get("length"), spec.get("kind", "tokens"), spec.get("cap")
        model_ids = spec.get("model_ids") or []
        if length not in PlanWindow.SECONDS:
            raise ValidationError({"windows": "A window is 5h, 1d or 7d long."})
        if kind not in PlanWindow.Kind.values:
            raise ValidationError({"windows": "A window caps tokens or spend."})
        if not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0:
            raise ValidationError({"windows": "A window's cap is a positive whole number."})
        if not isinstance(model_ids, list) or not all(
            isinstance(m, str) and m.strip() for m in model_ids
        ):
            raise ValidationError({"windows": "A window's models are a list of model ids."})
        cleaned.append(
            PlanWindow(length=length, kind=kind, cap=cap, model_ids=sorted(set(model_ids)))
        )
    return cleaned


def _money(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError({name: "Give a whole number of micro-units, zero or more."})
    return value


@transaction.atomic
def plan_create(
    *,
    seller: Organization,
    name: str,
    monthly_fee_micros: int,
    included_credit_micros: int = 0,
    windows: list[dict[str, Any]] | None = None,
    actor: Actor,
    description: str = "",
    currency: str = "",
) -> Plan:
    """A plan ``seller`` (the platform or a reseller) offers its tenants."""
    if seller.kind == Organization.Kind.TENANT:
        raise ValidationError({"seller": "Tenants do not sell plans."})
    if not name.strip():
        raise ValidationError({"name": "Name the plan."})
    if Plan.objects.filter(seller=seller, name=name.strip()).exists():
        raise ValidationError({"name": "This seller already has a plan of that name."})
    plan = Plan(
        seller=seller,
        name=name.strip(),
        description=description,
        monthly_fee_micros=_money("monthly_fee_micros", monthly_fee_micros),
        included_credit_micros=_money("included_credit_micros", included_credit_micros),
    )
    if currency:
        plan.currency = currency.upper()
    plan.save()
    cleaned = _clean_windows(windows or [])
    for window in cleaned:
        window.plan = plan
    PlanWindow.objects.bulk_create(cleaned)
    _audit(actor, "plan.create", plan, seller, windows=[str(w) for w in cleaned])
    return plan


@transaction.atomic
def plan_update(
    *,
    plan: Plan,
    actor: Actor,
    is_active: bool | None = None,
    windows: list[dict[str, Any]] | None = None,
) -> Plan:
    """Open or close a plan to new subscribers, or replace its windows (which apply to
    its current subscribers at once). Fee and credit stay as sold: make a new plan."""
    plan = Plan.objects.select_for_update().get(pk=plan.pk)
    changes: dict[str, Any] = {}
    if is_active is not None and is_active != plan.is_active:
        plan.is_active = is_active
        plan.save(update_fields=["is_active"])
        changes["is_active"] = is_active
    if windows is not None:
        cleaned = _clean_windows(windows)
        plan.windows.all().delete()
        for window in cleaned:
            window.plan = plan
        PlanWindow.objects.bulk_create(cleaned)
        changes["windows"] = [str(w) for w in cleaned]
        tell_relay()
    if changes:
        _audit(actor, "plan.update", plan, plan.seller, **changes)
    return plan


@transaction.atomic
def subscription_create(*, tenant: Organization, plan: Plan, actor: Actor) -> Subscription:
    """Subscribe ``tenant`` to one of its seller's plans, ending its current subscription;
    this month's fee is posted and its credit granted at once."""
    plan = Plan.objects.select_for_update().get(pk=plan.pk)
    if tenant.kind != Organization.Kind.TENANT or tenant.parent_id != plan.seller_id:
        raise ValidationError({"plan": "This plan is not sold to this organisation."})
    if not plan.is_active:
        raise ValidationError({"plan": "This plan takes no new subscribers."})
    if not _served(tenant):
        # Its month would be charged at once for keys the relay refuses.
        raise ValidationError(
            {"plan": "This tenant is deactivated: it can take a plan once it is reactivated."}
        )
    account = account_for(tenant, currency=plan.currency)
    if account.currency != plan.currency:
        raise ValidationError({"plan": f"This plan is priced in {plan.currency}."})
    now = timezone.now()
    for current in Subscription.objects.select_for_update().filter(
        tenant=tenant, status=Subscription.Status.ACTIVE
    ):
        _end(current, actor, now)
    subscription = Subscription.objects.create(
        tenant=tenant, plan=plan, started_at=now, created_by=user_or_none(actor)
    )
    _audit(actor, "subscription.create", subscription, tenant, plan=plan.name)
    plan_charge_post(subscription=subscription, period=Period.containing(now))
    tell_relay()
    return subscription


@transaction.atomic
def subscription_cancel(*, subscription: Subscription, actor: Actor) -> Subscription:
    """End a subscription now: its windows stop applying; the month paid stays paid."""
    current = Subscription.objects.select_for_update().get(pk=subscription.pk)
    if current.status != Subscription.Status.ACTIVE:
        raise ValidationError("This subscription has already ended.")
    _end(current, actor, timezone.now())
    tell_relay()
    subscription.refresh_from_db()
    return current


def _end(subscription: Subscription, actor: Actor, now: datetime) -> None:
    subscription.status = Subscription.Status.CANCELLED
    subscription.cancelled_at = now
    subscription.save(update_fields=["status", "cancelled_at"])
    _audit(actor, "subscription.cancel", subscription, subscription.tenant)


def _served(tenant: Organization) -> bool:
    """Whether the relay serves ``tenant`` now: it and its seller are active."""
    return not Organization.objects.filter(
        Q(pk=tenant.pk) | Q(pk=tenant.parent_id), is_active=False
    ).exists()


def plan_charge_post(*, subscription: Subscription, period: Period) -> PlanCharge | None:
    """Charge ``subscription`` for ``period`` (a month): the fee debited and the credit
    granted, once; None when that month was already charged."""
    plan = subscription.plan
    try:
        with transaction.atomic():
            charge = PlanCharge.objects.create(
                subscription=subscription,
                period_start=period.start,
                period_end=period.end,
                fee_micros=plan.monthly_fee_micros,
                credit_micros=plan.included_credit_micros,
                currency=plan.currency,
                created_at=timezone.now(),
            )
    except IntegrityError:  # another run charged this month first
        return None
    account = account_for(subscription.tenant, currency=plan.currency)
    entries = []
    if charge.fee_micros:
        entries.append((LedgerEntry.Kind.PLAN_FEE, -charge.fee_micros, f"{plan.name} fee"))
    if charge.credit_micros:
        entries.append(
            (LedgerEntry.Kind.PLAN_CREDIT, charge.credit_micros, f"{plan.name} included credit")
        )
    for kind, amount, memo in entries:
        LedgerEntry.objects.create(
            account=account,
            kind=kind,
            amount_micros=amount,
            reference=charge.reference,
            memo=f"{memo} ({period.label})",
            created_at=charge.created_at,
        )
    if entries:
        tell_relay()
    return charge


def plans_renew(*, now: datetime | None = None) -> int:
    """The monthly renewal (run hourly by beat, and safe to run anywhere, any number of
    times): charge every active subscription for the current month; returns how many
    months were charged by this run.

    A deactivated tenant, or a tenant of a deactivated reseller, is refused by the relay,
    so its plan is not renewed while it stays so: a month it spends wholly deactivated
    costs nothing, and the first run after it is reactivated charges the month it is in."""
    period = Period.containing(now or timezone.now())
    due = (
        Subscription.objects.filter(status=Subscription.Status.ACTIVE, tenant__is_active=True)
        .exclude(tenant__parent__is_active=False)
        .exclude(charges__period_start=period.start)
        .select_related("plan", "tenant")
        .order_by("pk")
    )
    charged = 0
    for subscription in due:
        with transaction.atomic():
            charge = plan_charge_post(subscription=subscription, period=period)
            if charge is not None:
                charged += 1
                _audit(
                    SYSTEM_ACTOR,
                    "subscription.renew",
                    subscription,
                    subscription.tenant,
                    period=period.label,
                    fee_micros=charge.fee_micros,
                )
    return charged


def _audit(actor: Actor, action: str, target: Any, organization: Organization, **data: Any) -> None:
    AuditEntry.record(
        actor=actor, action=action, target=target, organization=organization, data=data
    )
