"""Price lists, model prices and billing accounts: creation and changes, each audited.

Every change tells the relay processes to reload, since they cache prices and limits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from billing.models import (
    BillingAccount,
    BillingWatermark,
    KeyQuota,
    ModelPrice,
    PriceList,
    TenantDefaults,
)
from billing.pricing import DIMENSIONS
from billing.services.common import new_account_fields, tell_relay, watermark_lock
from billing.webhooks import WebhookRefused, webhook_url_check
from portal.models import ApiKey, AuditEntry, CatalogModel, Organization
from portal.services.common import Actor, user_or_none

# A new price may start a moment ago (a form submitted slowly) but not further back:
# prices are never backdated over requests already served.
BACKDATING_TOLERANCE = timedelta(minutes=1)

_ACCOUNT_FIELDS = frozenset(
    {
        "mode",
        "currency",
        "credit_limit_micros",
        "price_list",
        "monthly_budget_micros",
        "budget_hard_stop",
        "own_budget_micros",
        "own_budget_hard_stop",
        "alert_thresholds",
        "alert_emails",
        "alert_webhook_url",
        "tax_rate_percent",
    }
)


@transaction.atomic
def price_list_create(
    *,
    owner: Organization,
    name: str,
    actor: Actor,
    currency: str | None = None,
    is_default: bool = False,
    markup_percent: Decimal | None = None,
) -> PriceList:
    """A new list owned by the platform (wholesale) or a reseller (for its tenants).

    A reseller's list must be in the currency of the platform's wholesale list, since its
    tenants' usage is bought at wholesale.
    """
    price_list = PriceList(
        owner=owner, name=name, is_default=is_default, markup_percent=markup_percent
    )
    if currency:
        price_list.currency = currency
    price_list.full_clean()
    wholesale = PriceList.objects.filter(owner__kind="platform", is_default=True).first()
    if owner.kind != "platform" and wholesale and wholesale.currency != price_list.currency:
        raise ValidationError({"currency": f"Wholesale is priced in {wholesale.currency}."})
    price_list.save()
    AuditEntry.record(
        actor=actor,
        action="price_list.create",
        target=price_list,
        organization=owner,
        data={
            "name": name,
            "currency": price_list.currency,
            "is_default": is_default,
            "markup_percent": None if markup_percent is None else str(markup_percent),
        },
    )
    tell_relay()
    return price_list


@transaction.atomic
def price_list_set_markup(
    *, price_list: PriceList, markup_percent: Decimal | None, actor: Actor
) -> PriceList:
    before = price_list.markup_percent
    price_list.markup_percent = markup_percent
    price_list.full_clean()
    price_list.save(update_fields=["markup_percent"])
    AuditEntry.record(
        actor=actor,
        action="price_list.set_markup",
        target=price_list,
        organization=price_list.owner,
        data={
            "before": None if before is None else str(before),
            "after": None if markup_percent is None else str(markup_percent),
        },
    )
    tell_relay()
    return price_list


# The dimensions a price may leave blank (``ModelPrice``: blank reads as the text price, or
# nothing per image), the tiers, and the long-context prices' names.
OPTIONAL_PRICE_FIELDS = (
    "cache_write_5m_per_mtok",
    "cache_write_1h_per_mtok",
    "audio_input_per_mtok",
    "audio_output_per_mtok",
    "image_input_per_mtok",
    "image_output_per_mtok",
    "input_image_micros",
    "output_image_micros",
    "web_search_micros",
    "long_context_above_tokens",
    "flex_percent",
    "priority_percent",
)
LONG_CONTEXT_NAMES = frozenset(DIMENSIONS) - {"request"} | {"request_fee"}


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@transaction.atomic
def model_price_set(
    *,
    price_list: PriceList,
    model: CatalogModel,
    input_per_mtok: int,
    output_per_mtok: int,
    actor: Actor,
    cached_input_per_mtok: int | None = None,
    request_fee_micros: int = 0,
    effective_from: datetime | None = None,
    long_context_prices: dict[str, int] | None = None,
    **optional: int | None,
) -> ModelPrice:
    """Price ``model`` in ``price_list`` from ``effective_from`` (default: now) onwards.

    Prices in micro-units per million tokens (per image for ``*_image_micros``); the
    cached-input price defaults to the input price, and each of ``OPTIONAL_PRICE_FIELDS``
    may be left out (see ``ModelPrice``). ``long_context_prices`` maps dimensions
    (``input``, ``output``, ``request_fee``...) to the prices above
    ``long_context_above_tokens``. Earlier prices stay, so past events and invoices still
    explain themselves; a later ``effective_from`` schedules the price, and every relay
    charges it from that moment (``billing.pricing.PriceSchedule``).
    """
    unknown = set(optional) - set(OPTIONAL_PRICE_FIELDS)
    if unknown:
        raise TypeError(f"unknown price fields: {sorted(unknown)}")
    now = timezone.now()
    effective_from = effective_from or now
    if effective_from < now - BACKDATING_TOLERANCE:
        raise ValidationError({"effective_from": "Prices cannot be backdated."})
    if cached_input_per_mtok is None:
        cached_input_per_mtok = input_per_mtok
    values = [input_per_mtok, output_per_mtok, request_fee_micros, cached_input_per_mtok]
    values += [v for v in optional.values() if v is not None]
    tier = dict(long_context_prices or {})
    values += list(tier.values())
    if not all(_whole(v) for v in values):
        raise ValidationError("Prices are whole, non-negative numbers of micro-units.")
    if set(tier) - LONG_CONTEXT_NAMES:
        raise ValidationError({"long_context_prices": "Unknown dimensions."})
    if tier and optional.get("long_context_above_tokens") is None:
        raise ValidationError(
            {"long_context_above_tokens": "Say above how many prompt tokens these apply."}
        )
    price = ModelPrice(
        price_list=price_list,
        model=model,
        input_per_mtok=input_per_mtok,
        cached_input_per_mtok=cached_input_per_mtok,
        output_per_mtok=output_per_mtok,
        request_fee_micros=request_fee_micros,
        long_context_prices=tier,
        effective_from=effective_from,
        created_by=user_or_none(actor),
        **optional,
    )
    price.full_clean()
    price.save()
    AuditEntry.record(
        actor=actor,
        action="model_price.set",
        target=price,
        organization=price_list.owner,
        data={
            "price_list": price_list.name,
            "model": model.public_id,
            "currency": price_list.currency,
            "input_per_mtok": input_per_mtok,
            "cached_input_per_mtok": cached_input_per_mtok,
            "output_per_mtok": output_per_mtok,
            "request_fee_micros": request_fee_micros,
            **{name: value for name, value in optional.items() if value is not None},
            **({"long_context_prices": tier} if tier else {}),
            "effective_from": effective_from.isoformat(),
        },
    )
    tell_relay()
    return price


def price_changes_announce() -> bool:
    """Tell the relay about prices that came into force since the last run (they were
    set ahead of time, so the change that created them was announced too early)."""
    now = timezone.now()
    with transaction.atomic():
        watermark = watermark_lock(BillingWatermark.PRICE_CHANGES)
        since = watermark.position
        due = ModelPrice.objects.filter(effective_from__lte=now)
        if since is not None:
            due = due.filter(effective_from__gt=since)
        announce = since is not None and due.exists()
        watermark.position = now
        watermark.save(update_fields=["position", "updated_at"])
        if announce:
            tell_relay()
    return announce


def _check_price_list(account: BillingAccount) -> None:
    price_list = account.price_list
    if price_list is None:
        return
    parent_id = account.organization.parent_id
    if account.organization.kind != "tenant":
        raise ValidationError({"price_list": "Only tenants are priced by a list."})
    if price_list.owner_id != parent_id:
        raise ValidationError({"price_list": "Use a list of the tenant's own reseller."})


@transaction.atomic
def billing_account_create(
    *, organization: Organization, actor: Actor, **fields: Any
) -> BillingAccount:
    """Open the organisation's account; fields as on BillingAccount (mode, limits...)."""
    unknown = set(fields) - _ACCOUNT_FIELDS
    if unknown:
        raise TypeError(f"unknown account fields: {sorted(unknown)}")
    if organization.kind == Organization.Kind.PLATFORM:
        raise ValidationError("The platform is not billed.")
    # Terms not given are the seller's defaults for new tenants (prepaid without them).
    account = BillingAccount(
        organization=organization, **{**new_account_fields(organization), **fields}
    )
    account.full_clean()
    _check_price_list(account)
    _check_webhook(account)
    account.save()
    AuditEntry.record(
        actor=actor,
        action="billing_account.create",
        target=account,
        organization=organization,
        data=_account_data(account),
    )
    tell_relay()
    return account


@transaction.atomic
def billing_account_update(
    *, account: BillingAccount, actor: Actor, **changes: Any
) -> BillingAccount:
    """Change an account's mode, limits, budget, alerts or price list; audited."""
    unknown = set(changes) - _ACCOUNT_FIELDS
    if unknown:
        raise TypeError(f"unknown account fields: {sorted(unknown)}")
    before = _account_data(account)
    for name, value in changes.items():
        setattr(account, name, value)
    account.full_clean()
    _check_price_list(account)
    if _webhook_changed(before, account):
        _check_webhook(account)
    account.save(update_fields=[*changes, "updated_at"])
    after = _account_data(account)
    AuditEntry.record(
        actor=actor,
        action="billing_account.update",
        target=account,
        organization=account.organization,
        data={k: {"before": before[k], "after": after[k]} for k in after if before[k] != after[k]},
    )
    tell_relay()
    return account


def _webhook_changed(before: dict[str, Any], account: BillingAccount) -> bool:
    # A URL set before the check existed does not block unrelated changes (terms, credit).
    return bool(before["alert_webhook_url"] != account.alert_webhook_url)


def _check_webhook(account: BillingAccount) -> None:
    """The alert webhook must reach a public address (see billing.webhooks)."""
    try:
        webhook_url_check(account.alert_webhook_url)
    except WebhookRefused as exc:
        raise ValidationError({"alert_webhook_url": str(exc)}) from None


def _account_data(account: BillingAccount) -> dict[str, Any]:
    return {
        "mode": account.mode,
        "currency": account.currency,
        "credit_limit_micros": account.credit_limit_micros,
        "price_list": account.price_list_id,
        "monthly_budget_micros": account.monthly_budget_micros,
        "budget_hard_stop": account.budget_hard_stop,
        "own_budget_micros": account.own_budget_micros,
        "own_budget_hard_stop": account.own_budget_hard_stop,
        "alert_thresholds": account.alert_thresholds,
        "alert_emails": account.alert_emails,
        "alert_webhook_url": account.alert_webhook_url,
        "tax_rate_percent": None
        if account.tax_rate_percent is None
        else str(account.tax_rate_percent),
    }


@transaction.atomic
def key_quota_set(
    *,
    api_key: ApiKey,
    actor: Actor,
    total_limit_micros: int | None = None,
    period_limit_micros: int | None = None,
    period: str = KeyQuota.Period.MONTH,
) -> KeyQuota | None:
    """Cap the key's spend in total and/or per period; both None removes the quota."""
    existing = KeyQuota.objects.filter(api_key=api_key).first()
    before = None if existing is None else _quota_data(existing)
    if total_limit_micros is None and period_limit_micros is None:
        if existing is not None:
            existing.delete()
        quota = None
    else:
        quota = existing or KeyQuota(api_key=api_key)
        quota.total_limit_micros = total_limit_micros
        quota.period_limit_micros = period_limit_micros
        quota.period = period
        quota.full_clean()
        quota.save()
    AuditEntry.record(
        actor=actor,
        action="api_key.set_quota",
        target=api_key,
        organization=api_key.tenant,
        data={"before": before, "after": None if quota is None else _quota_data(quota)},
    )
    tell_relay()
    return quota


def _quota_data(quota: KeyQuota) -> dict[str, Any]:
    return {
        "total_limit_micros": quota.total_limit_micros,
        "period": quota.period,
        "period_limit_micros": quota.period_limit_micros,
    }


@transaction.atomic
def tenant_defaults_set(
    *, seller: Organization, mode: str, credit_limit_micros: int | None, actor: Actor
) -> TenantDefaults:
    """The terms ``seller`` (a reseller, or the platform) gives its new tenants until it
    sets theirs; audited. Existing tenants keep their own terms."""
    if seller.kind == Organization.Kind.TENANT:
        raise ValidationError("Tenants have no tenants.")
    defaults = TenantDefaults.objects.filter(seller=seller).first() or TenantDefaults(seller=seller)
    before = {"mode": defaults.mode, "credit_limit_micros": defaults.credit_limit_micros}
    defaults.mode = mode
    defaults.credit_limit_micros = (
        credit_limit_micros if mode == BillingAccount.Mode.POSTPAID else None
    )
    defaults.full_clean()
    defaults.save()
    AuditEntry.record(
        actor=actor,
        action="tenant_defaults.set",
        target=defaults,
        organization=seller,
        data={
            "before": before,
            "after": {"mode": defaults.mode, "credit_limit_micros": defaults.credit_limit_micros},
        },
    )
    tell_relay()
    return defaults
