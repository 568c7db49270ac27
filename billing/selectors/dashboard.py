"""Reads of billing data for the dashboard: accounts, ledgers, price lists, invoices,
revenue. Callers pass organisations already authorised through ``portal.access``; the
money arithmetic itself stays in ``billing.selectors.balances``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db.models import Count, QuerySet, Sum
from django.db.models.functions import TruncDate

from billing.models import (
    BillingAccount,
    BillingWatermark,
    BudgetAlert,
    Invoice,
    LedgerEntry,
    PriceList,
    RedemptionCode,
    UsageEvent,
)
from billing.periods import Period
from billing.selectors import balances
from billing.selectors.prices import PriceRow as PriceRow  # the price page's reads
from billing.selectors.prices import catalog_summary as catalog_summary
from billing.selectors.prices import price_rows as price_rows
from portal.access import Need, Scope, role_grants
from portal.models import Organization

LEDGER_SHOWN = 20
ALERTS_SHOWN = 24


def account_of(organization: Organization) -> BillingAccount | None:
    return (
        BillingAccount.objects.select_related("price_list")
        .filter(organization=organization)
        .first()
    )


@dataclass(frozen=True)
class AccountSummary:
    """What an organisation's billing pages show about its account."""

    account: BillingAccount | None
    balance_micros: int | None
    month: Period
    month_spend_micros: int | None

    @property
    def budget_remaining_micros(self) -> int | None:
        """What is left of this month's budget (the lower of the seller's and the
        organisation's own), never below zero; None without a budget."""
        budget = self.account.budget_micros if self.account is not None else None
        if budget is None:
            return None
        return max(budget - (self.month_spend_micros or 0), 0)

    @property
    def budget_used_percent(self) -> int | None:
        account = self.account
        budget = account.budget_micros if account is not None else None
        if not budget:
            return None
        return int((self.month_spend_micros or 0) * 100 // budget)


def account_summary(organization: Organization) -> AccountSummary:
    account = account_of(organization)
    month = Period.current()
    if account is None:
        return AccountSummary(None, None, month, None)
    return AccountSummary(
        account=account,
        balance_micros=balances.account_balance_micros(account, include_unposted=True),
        month=month,
        month_spend_micros=balances.period_spend_micros(account=account, period=month),
    )


def ledger_entries(account: BillingAccount | None, *, limit: int = LEDGER_SHOWN) -> list[Any]:
    """The latest entries people make (top-ups, payments, adjustments…), not the one
    usage charge per request, which the usage page already lists."""
    if account is None:
        return []
    return list(
        LedgerEntry.objects.filter(account=account)
        .exclude(kind=LedgerEntry.Kind.USAGE)
        .select_related("created_by")
        .order_by("-created_at", "-id")[:limit]
    )


def budget_alerts(account: BillingAccount | None) -> list[BudgetAlert]:
    if account is None:
        return []
    return list(BudgetAlert.objects.filter(account=account).order_by("-created_at")[:ALERTS_SHOWN])


# --- Invoices -------------------------------------------------------------------------------


def invoices_received(organization: Organization) -> QuerySet[Invoice]:
    """Invoices the organisation received (drafts are the issuer's business)."""
    return balances.organization_invoices(organization)


def invoices_issued(issuer: Organization, *, status: str = "") -> QuerySet[Invoice]:
    invoices = Invoice.objects.filter(issuer=issuer).select_related("customer", "issuer")
    if status:
        invoices = invoices.filter(status=status)
    return invoices.order_by("-period_start", "customer__name", "-id")


def invoices_all(*, status: str = "") -> QuerySet[Invoice]:
    invoices = Invoice.objects.select_related("customer", "issuer")
    if status:
        invoices = invoices.filter(status=status)
    return invoices.order_by("-period_start", "issuer__name", "customer__name", "-id")


@dataclass(frozen=True)
class InvoiceAccess:
    """How a person stands towards one invoice: as its issuer's or its customer's."""

    as_issuer: bool
    as_customer: bool


def invoice_access(scope: Scope, invoice: Invoice) -> InvoiceAccess | None:
    """None when the person may not know the invoice exists. The customer's people see
    it once issued; the issuer's see drafts too. Both need the billing right."""
    issuer_role = scope.role_for(invoice.issuer_id)
    customer_role = scope.role_for(invoice.customer_id)
    sees_issuer = issuer_role is not None
    sees_customer = customer_role is not None and not invoice.is_draft
    if not (sees_issuer or sees_customer):
        return None
    return InvoiceAccess(
        as_issuer=sees_issuer and role_grants(issuer_role, Need.BILLING),  # type: ignore[arg-type]
        as_customer=sees_customer and role_grants(customer_role, Need.BILLING),  # type: ignore[arg-type]
    )


# --- Price lists ----------------------------------------------------------------------------


def price_lists_of(owner: Organization) -> QuerySet[PriceList]:
    return (
        PriceList.objects.filter(owner=owner)
        .annotate(
            priced_models=Count("prices__model", distinct=True),
            account_count=Count("accounts", distinct=True),
        )
        .order_by("-is_default", "name")
    )


# --- Revenue --------------------------------------------------------------------------------


@dataclass
class TenantRevenue:
    tenant_id: int
    tenant_name: str
    currency: str
    requests: int = 0
    retail_micros: int = 0
    wholesale_micros: int = 0

    @property
    def margin_micros(self) -> int:
        return self.retail_micros - self.wholesale_micros


def revenue_by_tenant(
    rows: list[balances.MarginRow],
) -> list[TenantRevenue]:
    totals: dict[tuple[int, str], TenantRevenue] = {}
    for row in rows:
        key = (row.tenant_id, row.currency)
        entry = totals.setdefault(key, TenantRevenue(row.tenant_id, row.tenant_name, row.currency))
        entry.requests += row.requests
        entry.retail_micros += row.retail_micros
        entry.wholesale_micros += row.wholesale_micros
    return sorted(totals.values(), key=lambda t: (-t.retail_micros, t.tenant_name))


def rollups_updated_at() -> datetime | None:
    return balances.watermark_position(BillingWatermark.ROLLUPS)


# --- The operator's usage log ---------------------------------------------------------------


def usage_log(filters: dict[str, Any]) -> QuerySet[UsageEvent]:
    """Every usage event (operators only), narrowed by the usage log's filters."""
    events = UsageEvent.objects.select_related("tenant", "api_key", "channel")
    if filters.get("tenant"):
        events = events.filter(tenant=filters["tenant"])
    if filters.get("key"):
        events = events.filter(api_key__prefix__startswith=filters["key"].strip())
    if filters.get("model"):
        events = events.filter(model=filters["model"].strip())
    if filters.get("surface"):
        events = events.filter(surface=filters["surface"])
    if filters.get("channel"):
        events = events.filter(channel=filters["channel"])
    status = filters.get("status") or ""
    if status == "ok":
        events = events.filter(status_code__lt=400)
    elif status == "error":
        events = events.filter(status_code__gte=400)
    elif status:
        events = events.filter(status_code=int(status))
    if filters.get("start"):
        events = events.filter(created_at__gte=filters["start"])
    if filters.get("end"):
        events = events.filter(created_at__lt=filters["end"])
    return events.order_by("-created_at", "-id")


def tenants_with_terms(tenants: QuerySet[Organization]) -> QuerySet[Organization]:
    """Tenants with their account and price list joined (one query for the list)."""
    return tenants.select_related("billing_account__price_list")


@dataclass(frozen=True)
class DailyRevenue:
    day: Any
    currency: str
    wholesale_micros: int
    retail_micros: int


def revenue_by_day(events: QuerySet[UsageEvent], start: datetime, end: datetime) -> list[Any]:
    """Priced usage per UTC day and currency: what the platform earns (wholesale; equal
    to retail for tenants directly under it) and what tenants were charged (retail)."""
    rows = (
        events.filter(created_at__gte=start, created_at__lt=end)
        .exclude(currency="")
        .order_by()
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day", "currency")
        .annotate(wholesale=Sum("cost_wholesale_micros"), retail=Sum("cost_retail_micros"))
        .order_by("day", "currency")
    )
    return [
        DailyRevenue(r["day"], r["currency"], r["wholesale"] or 0, r["retail"] or 0) for r in rows
    ]


def codes_issued(issuer: Organization) -> QuerySet[Any]:
    return (
        RedemptionCode.objects.filter(issuer=issuer)
        .select_related("redeemed_account__organization", "created_by")
        .order_by("-created_at", "-id")
    )


def issuer_currency(issuer: Organization) -> str:
    """The currency of the issuer's default price list, else of wholesale, else the
    installation's default: codes are redeemed by accounts priced in it."""
    default = (
        PriceList.objects.filter(owner=issuer, is_default=True)
        .values_list("currency", flat=True)
        .first()
    ) or (
        PriceList.objects.filter(owner__kind=Organization.Kind.PLATFORM, is_default=True)
        .values_list("currency", flat=True)
        .first()
    )
    return default or settings.BILLING_DEFAULT_CURRENCY
