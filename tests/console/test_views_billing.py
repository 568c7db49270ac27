"""The money pages: a tenant's balance, codes, budget and invoices; a reseller's terms,
top-ups, price lists, revenue and invoices. Changes go through billing's services, so
balances are ledger sums and every change leaves an audit entry."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.urls import reverse

from billing import services as billing
from billing.models import BillingAccount, Invoice, LedgerEntry, ModelPrice, PriceList
from billing.selectors import account_balance_micros
from billing.services.common import account_for
from portal.models import AuditEntry, Organization
from tests.billing.conftest import MARCH, Market, generate_month, record_event
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db


def balance(organization: Organization) -> int:
    return account_balance_micros(BillingAccount.objects.get(organization=organization))


# --- Tenant: balance, codes, budget ---------------------------------------------------------


def test_a_tenant_redeems_a_code_once(
    market: Market, tenant_billing: Any, reseller_admin: Any
) -> None:
    _, code = billing.redemption_code_create(
        issuer=market.reseller, amount_micros=25_000_000, currency="USD", actor=reseller_admin
    )
    page = client_for(tenant_billing)
    url = reverse("redeem", args=["tenant"])

    response = page.post(url, {"code": code.lower()}, follow=True)
    assert "Code redeemed: 25.00 USD added to the balance." in response.content.decode()
    assert balance(market.tenant) == 25_000_000
    assert "25.00 USD" in page.get(reverse("billing", args=["tenant"])).content.decode()

    again = page.post(url, {"code": code})
    assert again.status_code == 400
    assert "This code has already been redeemed." in again.content.decode()
    wrong = page.post(url, {"code": "TG-NOPE"})
    assert wrong.status_code == 400 and "This code is not valid." in wrong.content.decode()
    assert balance(market.tenant) == 25_000_000
    assert AuditEntry.objects.filter(action="redemption_code.redeem").count() == 1


def test_another_resellers_code_does_not_work(
    market: Market, tenant_owner: Any, other_reseller_admin: Any
) -> None:
    _, code = billing.redemption_code_create(
        issuer=market.other_reseller, amount_micros=1_000_000, currency="USD", actor="test"
    )
    response = client_for(tenant_owner).post(reverse("redeem", args=["tenant"]), {"code": code})
    assert response.status_code == 400
    assert not LedgerEntry.objects.filter(kind=LedgerEntry.Kind.TOPUP).exists()


def test_owner_sets_the_budget_and_billing_members_only_see_it(
    market: Market, tenant_owner: Any, tenant_billing: Any
) -> None:
    url = reverse("budget", args=["tenant"])
    response = client_for(tenant_owner).post(
        url,
        {
            "own_budget": "150.5",
            "own_budget_hard_stop": "on",
            "alert_thresholds": "80, 50%, 100",
            "alert_emails": "ops@example.test, cfo@example.test",
            "alert_webhook_url": "https://hooks.example.test/budget",
        },
    )
    assert response.status_code == 302
    account = BillingAccount.objects.get(organization=market.tenant)
    assert account.own_budget_micros == 150_500_000
    assert account.own_budget_hard_stop is True
    assert account.alert_thresholds == [50, 80, 100]
    assert account.alert_emails == ["ops@example.test", "cfo@example.test"]
    assert AuditEntry.objects.filter(action="billing_account.create").count() == 1
    # Opening the account from the budget page gives no credit: the seller's defaults.
    assert account.mode == BillingAccount.Mode.PREPAID
    assert (account.monthly_budget_micros, account.hard_budget_micros) == (None, 150_500_000)

    viewer = client_for(tenant_billing)
    html = viewer.get(url).content.decode()
    assert "150.50 USD" in html and "Save budget" not in html
    assert viewer.post(url, {"own_budget": "1"}).status_code == 403
    assert BillingAccount.objects.get(pk=account.pk).own_budget_micros == 150_500_000

    bad = client_for(tenant_owner).post(url, {"alert_thresholds": "half", "alert_emails": "x"})
    assert bad.status_code == 400
    body = bad.content.decode()
    assert "Give whole percentages" in body and "Enter a valid email address." in body


def test_the_tenant_cannot_lift_its_sellers_budget_only_add_a_lower_one(
    market: Market, tenant_owner: Any, reseller_admin: Any
) -> None:
    account = billing.billing_account_create(
        organization=market.tenant,
        mode="postpaid",
        monthly_budget_micros=100_000_000,
        budget_hard_stop=True,
        actor=reseller_admin,
    )
    url = reverse("budget", args=["tenant"])
    owner = client_for(tenant_owner)
    # Clearing "its" budget and hard stop touches only the tenant's own fields.
    assert owner.post(url, {"own_budget": "", "alert_thresholds": "50"}).status_code == 302
    account.refresh_from_db()
    assert (account.monthly_budget_micros, account.budget_hard_stop) == (100_000_000, True)
    assert account.hard_budget_micros == 100_000_000
    # A higher budget of its own is refused; a lower one applies beside the seller's.
    higher = owner.post(url, {"own_budget": "150", "own_budget_hard_stop": "on"})
    assert higher.status_code == 400 and "can only be lower" in higher.content.decode()
    lower = owner.post(url, {"own_budget": "40", "own_budget_hard_stop": "on"})
    assert lower.status_code == 302
    account.refresh_from_db()
    assert (account.own_budget_micros, account.hard_budget_micros) == (40_000_000, 40_000_000)
    assert account.monthly_budget_micros == 100_000_000 and account.budget_hard_stop
    html = owner.get(url).content.decode()
    assert "budget set by the seller" in html and "100.00 USD" in html and "40.00 USD" in html


def test_budget_alerts_are_listed(market: Market, tenant_owner: Any) -> None:
    account = account_for(market.tenant)
    billing.billing_account_update(account=account, monthly_budget_micros=1_000, actor="test")
    generate_month(market, count=60)
    with time_machine.travel(datetime(2026, 3, 31, tzinfo=UTC), tick=False):
        created = billing.budget_check(account=account, period=MARCH)
    assert created
    html = client_for(tenant_owner).get(reverse("budget", args=["tenant"])).content.decode()
    assert "2026-03" in html and "100 %" in html


# --- Reseller: terms, top-ups ---------------------------------------------------------------


def test_reseller_sets_a_tenants_terms_and_tops_it_up(
    market: Market, reseller_admin: Any, tenant_owner: Any
) -> None:
    gold = PriceList.objects.create(owner=market.reseller, name="Gold", markup_percent=10)
    page = client_for(reseller_admin)
    response = page.post(
        reverse("terms", args=["tenant"]),
        {
            "price_list": gold.pk,
            "mode": "prepaid",
            "credit_limit": "",
            "monthly_budget": "500",
        },
    )
    assert response.status_code == 302
    account = BillingAccount.objects.get(organization=market.tenant)
    assert (account.price_list, account.mode, account.monthly_budget_micros) == (
        gold,
        "prepaid",
        500_000_000,
    )

    response = page.post(
        reverse("topup", args=["tenant"]), {"amount": "40.25", "memo": "wire 1234"}, follow=True
    )
    assert "40.25 USD added to the balance of Tenant." in response.content.decode()
    assert balance(market.tenant) == 40_250_000
    entry = LedgerEntry.objects.get(kind=LedgerEntry.Kind.TOPUP)
    assert entry.memo == "wire 1234" and entry.created_by == reseller_admin
    assert AuditEntry.objects.filter(action="ledger.topup", actor=reseller_admin).count() == 1
    listing = page.get(reverse("tenants", args=["reseller"])).content.decode()
    assert "prepaid, budget 500.00/month" in listing and "Gold" in listing
    assert "40.25 USD" in listing

    # The tenant sees the outcome, but cannot set its own terms.
    owner = client_for(tenant_owner)
    assert "40.25 USD" in owner.get(reverse("billing", args=["tenant"])).content.decode()
    assert owner.post(reverse("topup", args=["tenant"]), {"amount": "1000"}).status_code == 403
    assert owner.post(reverse("terms", args=["tenant"]), {"mode": "postpaid"}).status_code == 403
    assert balance(market.tenant) == 40_250_000


def test_terms_refuse_another_resellers_list_and_bad_amounts(
    market: Market, reseller_admin: Any
) -> None:
    page = client_for(reseller_admin)
    other = page.post(
        reverse("terms", args=["tenant"]), {"price_list": market.other_list.pk, "mode": "prepaid"}
    )
    assert other.status_code == 400 and "Select a valid choice." in other.content.decode()
    topup = page.post(reverse("topup", args=["tenant"]), {"amount": "0.0000001"})
    assert topup.status_code == 400
    assert not LedgerEntry.objects.exists()
    # Another reseller's tenant is not even there.
    assert page.get(reverse("terms", args=["other-tenant"])).status_code == 404


# --- Reseller: price lists ------------------------------------------------------------------


def test_reseller_creates_a_list_prices_a_model_and_changes_the_markup(
    market: Market, reseller_admin: Any
) -> None:
    page = client_for(reseller_admin)
    response = page.post(
        reverse("price_lists", args=["reseller"]), {"name": "Startup", "markup_percent": "25"}
    )
    created = PriceList.objects.get(owner=market.reseller, name="Startup")
    assert response["Location"] == reverse("price_list", args=["reseller", created.pk])
    assert created.markup_percent == Decimal(25) and created.currency == "USD"

    url = reverse("price_list", args=["reseller", created.pk])
    html = page.get(url).content.decode()
    # Every wholesale model is listed, sold at the markup until priced explicitly.
    assert html.count('class="muted">wholesale + 25 %') == 3
    # …and shows the prices that makes: model-a's 0.15 / 0.075 / 0.60 plus 25 %.
    row_a = html.split('<td class="mono">model-a</td>', 1)[1].split("</tr>", 1)[0]
    assert row_a.count('<td class="num">') == 5
    for price in ("0.1875", "0.09375", "0.75"):
        assert f'<td class="num">{price}</td>' in row_a
    response = page.post(
        url,
        {
            "action": "price",
            "model": "model-b",
            "input_per_mtok": "3.5",
            "output_per_mtok": "14",
            "request_fee": "0.0001",
        },
    )
    assert response.status_code == 302
    price = ModelPrice.objects.get(price_list=created)
    assert (price.input_per_mtok, price.cached_input_per_mtok, price.output_per_mtok) == (
        3_500_000,
        3_500_000,
        14_000_000,
    )
    assert price.request_fee_micros == 100
    assert page.post(url, {"action": "markup", "markup_percent": ""}).status_code == 302
    created.refresh_from_db()
    assert created.markup_percent is None
    html = page.get(url).content.decode()
    assert "3.50" in html and html.count("not sold") == 2
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"price_list.create", "model_price.set", "price_list.set_markup"} <= actions


def test_price_lists_are_the_owners_only(
    market: Market, reseller_admin: Any, tenant_owner: Any, operator_user: Any
) -> None:
    page = client_for(reseller_admin)
    other_url = reverse("price_list", args=["reseller", market.other_list.pk])
    assert page.get(other_url).status_code == 404
    assert page.post(other_url, {"action": "markup", "markup_percent": "5"}).status_code == 404
    assert page.get(reverse("price_lists", args=["other-reseller"])).status_code == 404
    assert page.get(reverse("price_lists", args=["platform"])).status_code == 404
    assert client_for(tenant_owner).get(reverse("price_lists", args=["tenant"])).status_code == 404
    # Operators reach the wholesale list from their console; it has no markup.
    operator = client_for(operator_user)
    assert operator.get(reverse("operator_price_lists"))["Location"] == reverse(
        "price_lists", args=["platform"]
    )
    html = operator.get(reverse("price_list", args=["platform", market.wholesale.pk])).content
    assert b"Markup" not in html and b"model-a" in html


# --- Reseller: revenue and invoices ---------------------------------------------------------


def test_revenue_page_shows_retail_wholesale_and_margin_by_tenant(
    market: Market, reseller_admin: Any, other_reseller_admin: Any
) -> None:
    generate_month(market, count=120)
    billing.rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    from billing.selectors import reseller_margin

    rows = reseller_margin(reseller=market.reseller, period=MARCH)
    retail = sum(r.retail_micros for r in rows)
    margin = sum(r.margin_micros for r in rows)
    assert margin > 0

    from billing.money import format_micros

    html = (
        client_for(reseller_admin)
        .get(reverse("revenue", args=["reseller"]), {"month": "2026-03"})
        .content.decode()
    )
    assert format_micros(retail) in html and format_micros(margin) in html
    assert "<td>Tenant</td>" in html
    assert "Other Tenant" not in html and "Direct" not in html
    other = client_for(other_reseller_admin).get(
        reverse("revenue", args=["other-reseller"]), {"month": "2026-03"}
    )
    assert "<td>Other Tenant</td>" in other.content.decode()
    assert "<td>Tenant</td>" not in other.content.decode()


def test_invoice_is_issued_by_the_reseller_and_downloaded_by_the_tenant(
    market: Market, reseller_admin: Any, tenant_billing: Any, tenant_member: Any
) -> None:
    generate_month(market, count=80)
    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        draft = billing.invoice_generate(customer=market.tenant, period=MARCH)
        assert draft is not None and draft.is_draft
        tenant = client_for(tenant_billing)
        pdf_url = reverse("invoice_download", args=[draft.pk, "pdf"])
        # A draft is the issuer's business until issued.
        assert tenant.get(pdf_url).status_code == 404
        assert (
            "No invoices yet." in tenant.get(reverse("billing", args=["tenant"])).content.decode()
        )

        reseller = client_for(reseller_admin)
        listing = reseller.get(reverse("invoices_issued", args=["reseller"])).content.decode()
        assert "Issue invoice to Tenant for 2026-03" in listing
        assert reseller.get(pdf_url).status_code == 200  # the issuer sees drafts
        response = reseller.post(reverse("invoice_action", args=[draft.pk, "issue"]))
        assert response.status_code == 302
        draft.refresh_from_db()
        assert draft.status == Invoice.Status.ISSUED and draft.number == "RESELLER-2026-000001"

        html = tenant.get(reverse("billing", args=["tenant"])).content.decode()
        assert "RESELLER-2026-000001" in html
        pdf = tenant.get(pdf_url)
        assert pdf.status_code == 200 and pdf["Content-Type"] == "application/pdf"
        assert pdf.content.startswith(b"%PDF")
        assert 'filename="invoice-RESELLER-2026-000001.pdf"' in pdf["Content-Disposition"]
        csv = tenant.get(reverse("invoice_download", args=[draft.pk, "csv"]))
        rows = csv.content.decode().splitlines()
        assert rows[0].startswith("row_type,invoice") and rows[-1].startswith("total,")
        assert rows[-1].endswith(f",{draft.total_micros}")
        # A member sees the tenant but not its invoices; a tenant cannot mark it paid.
        assert client_for(tenant_member).get(pdf_url).status_code == 403
        assert tenant.post(reverse("invoice_action", args=[draft.pk, "paid"])).status_code == 403
        assert tenant.get(reverse("invoice_download", args=[draft.pk, "exe"])).status_code == 404

        reseller.post(reverse("invoice_action", args=[draft.pk, "paid"]))
        draft.refresh_from_db()
        assert draft.status == Invoice.Status.PAID
        issued = reseller.get(reverse("invoices_issued", args=["reseller"]), {"status": "paid"})
        assert "RESELLER-2026-000001" in issued.content.decode()


def test_draft_now_drafts_the_current_month_which_is_not_issuable_yet(
    market: Market, reseller_admin: Any, tenant_owner: Any
) -> None:
    generate_month(market, count=40)  # March 2026
    reseller = client_for(reseller_admin)
    with time_machine.travel(datetime(2026, 3, 20, tzinfo=UTC), tick=False):
        listing = reseller.get(reverse("invoices_issued", args=["reseller"])).content.decode()
        assert "Draft now" in listing and "No invoices" in listing
        response = reseller.post(reverse("invoices_draft_now", args=["reseller"]))
        assert response.status_code == 302
        drafts = Invoice.objects.filter(issuer=market.reseller, period_start=MARCH.start)
        # Only this reseller's tenants (the other reseller's tenant is not its customer).
        assert {d.customer for d in drafts} == {market.tenant}
        assert all(d.is_draft and not d.is_issuable for d in drafts)
        html = reseller.get(reverse("invoices_issued", args=["reseller"])).content.decode()
        # A draft of a month not over offers no Issue button, only when it can be issued.
        assert "Issue invoice to" not in html and "Issuable from 2026-04-01" in html
        refused = reseller.post(reverse("invoice_action", args=[drafts[0].pk, "issue"]))
        assert refused.status_code == 302
        drafts[0].refresh_from_db()
        assert drafts[0].is_draft
        # Tenant people cannot draft their reseller's invoices.
        denied = client_for(tenant_owner).post(reverse("invoices_draft_now", args=["reseller"]))
        assert denied.status_code == 404
    with time_machine.travel(datetime(2026, 4, 1, 0, 1, tzinfo=UTC), tick=False):
        html = reseller.get(reverse("invoices_issued", args=["reseller"])).content.decode()
        assert "Issue invoice to" in html and "Issuable from" not in html


def test_operator_sees_every_invoice(market: Market, operator: Any) -> None:
    generate_month(market, count=80)
    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        for customer in (market.tenant, market.reseller, market.other_tenant):
            billing.invoice_generate(customer=customer, period=MARCH)
    html = operator.get(reverse("operator_invoices")).content.decode()
    assert html.count("draft</span>") == 3
    assert "Other Tenant" in html and "Reseller" in html


# --- Query counts ---------------------------------------------------------------------------


def _add_rows(market: Market, n: int) -> None:
    """n more tenants (each with an account, a top-up and an issued invoice), price lists
    with prices, and ledger entries: what the list pages iterate over."""
    for i in range(n):
        tenant = Organization.objects.create(
            name=f"Extra {n}-{i}", slug=f"extra-{n}-{i}", kind="tenant", parent=market.reseller
        )
        price_list = PriceList.objects.create(owner=market.reseller, name=f"List {n}-{i}")
        ModelPrice.objects.create(
            price_list=price_list,
            model=market.wholesale.prices.first().model,
            input_per_mtok=1,
            cached_input_per_mtok=1,
            output_per_mtok=1,
            effective_from=datetime(2020, 1, 1, tzinfo=UTC),
        )
        account = BillingAccount.objects.create(organization=tenant, price_list=price_list)
        billing.account_topup(account=account, amount_micros=1_000, actor="test")
        billing.account_topup(account=account_for(market.tenant), amount_micros=1, actor="test")
        Invoice.objects.create(
            issuer=market.reseller,
            customer=tenant,
            kind=Invoice.Kind.TENANT,
            period_start=MARCH.start,
            period_end=MARCH.end,
            currency="USD",
            status=Invoice.Status.ISSUED,
            number=f"X-{n}-{i}",
        )
        Invoice.objects.create(
            issuer=market.reseller,
            customer=market.tenant,
            kind=Invoice.Kind.TENANT,
            period_start=MARCH.start.replace(year=2000 + n * 10 + i),
            period_end=MARCH.end.replace(year=2000 + n * 10 + i),
            currency="USD",
            status=Invoice.Status.ISSUED,
            number=f"T-{n}-{i}",
        )


PAGES = [
    ("tenant_owner", "billing", ["tenant"]),
    ("tenant_owner", "budget", ["tenant"]),
    ("tenant_owner", "members", ["tenant"]),
    ("reseller_admin", "terms", ["tenant"]),
    ("reseller_admin", "tenants", ["reseller"]),
    ("reseller_admin", "price_lists", ["reseller"]),
    ("reseller_admin", "revenue", ["reseller"]),
    ("reseller_admin", "invoices_issued", ["reseller"]),
    ("operator_user", "operator_invoices", []),
    ("operator_user", "usage_log", []),
]


@pytest.mark.parametrize(("persona", "name", "args"), PAGES, ids=[p[1] for p in PAGES])
def test_list_pages_make_a_bounded_number_of_queries(
    market: Market, request: pytest.FixtureRequest, persona: str, name: str, args: list[str]
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    page = client_for(request.getfixturevalue(persona))
    url = reverse(name, args=args)

    def count() -> int:
        with CaptureQueriesContext(connection) as queries:
            assert page.get(url).status_code == 200
        return len(queries)

    _add_rows(market, 2)
    generate_month(market, count=30)
    billing.rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    few = count()
    _add_rows(market, 6)
    for n in range(40):
        record_event(
            tenant=market.tenant,
            api_key=market.keys[market.tenant.pk][n % 2],
            model="model-a",
            created_at=datetime(2026, 3, 1 + n % 28, 12, tzinfo=UTC),
            prompt_tokens=100,
            completion_tokens=10,
        )
    billing.rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    assert count() == few <= 16, (name, few)


def test_forms_show_saved_amounts_in_plain_decimals(market: Market, reseller_admin: Any) -> None:
    account = account_for(market.tenant)
    billing.billing_account_update(
        account=account, monthly_budget_micros=100_000_000, credit_limit_micros=2_500, actor="t"
    )
    html = client_for(reseller_admin).get(reverse("terms", args=["tenant"])).content.decode()
    assert 'value="100"' in html and 'value="0.0025"' in html and "E+" not in html


def test_reseller_issues_a_code_shown_once_that_its_tenant_redeems(
    market: Market, reseller_admin: Any, tenant_owner: Any, outsider: Any
) -> None:
    import re

    page = client_for(reseller_admin)
    response = page.post(reverse("codes", args=["reseller"]), {"amount": "15", "memo": "promo"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    text = re.search(r'value="(TG-[A-Z2-7-]+)"', response.content.decode())[1]
    listing = page.get(reverse("codes", args=["reseller"])).content.decode()
    assert text not in listing and text[:7] in listing and "15.00 USD" in listing

    # Another reseller's tenant cannot use it; the reseller's own tenant can, once.
    refused = client_for(outsider).post(reverse("redeem", args=["other-tenant"]), {"code": text})
    assert refused.status_code == 400
    client_for(tenant_owner).post(reverse("redeem", args=["tenant"]), {"code": text})
    assert balance(market.tenant) == 15_000_000
    listing = page.get(reverse("codes", args=["reseller"])).content.decode()
    assert "Tenant" in listing and "not yet" not in listing
    assert client_for(tenant_owner).get(reverse("codes", args=["reseller"])).status_code == 404


def test_operators_issue_platform_codes(market: Market, operator: Any) -> None:
    assert operator.get(reverse("operator_codes"))["Location"] == reverse(
        "codes", args=["platform"]
    )
    response = operator.post(reverse("codes", args=["platform"]), {"amount": "2"})
    assert response.status_code == 200
    from billing.models import RedemptionCode

    code = RedemptionCode.objects.get()
    assert (code.issuer, code.amount_micros, code.currency) == (market.platform, 2_000_000, "USD")


def test_operator_sets_a_resellers_terms(
    market: Market, operator: Any, reseller_admin: Any
) -> None:
    url = reverse("terms", args=["reseller"])
    assert "id_price_list" not in operator.get(url).content.decode()  # wholesale, always
    response = operator.post(url, {"mode": "postpaid", "credit_limit": "5000"})
    assert response.status_code == 302
    account = BillingAccount.objects.get(organization=market.reseller)
    assert (account.mode, account.credit_limit_micros) == ("postpaid", 5_000_000_000)
    # The reseller cannot set its own terms.
    assert client_for(reseller_admin).get(url).status_code == 403


def test_the_revenue_page_charts_revenue_and_margin_per_day(
    market: Market, reseller_admin: Any
) -> None:
    from django.utils import timezone

    from tests.billing.conftest import record_event

    event = record_event(
        tenant=market.tenant,
        api_key=market.keys[market.tenant.pk][0],
        model="model-a",
        created_at=timezone.now(),
        prompt_tokens=10_000,
        completion_tokens=100,
    )
    html = client_for(reseller_admin).get(reverse("revenue", args=["reseller"])).content.decode()
    chart = html.split("Revenue per day (USD)", 1)[1].split("</figure>", 1)[0]
    margin = event.cost_retail_micros - event.cost_wholesale_micros
    assert margin > 0 and "<rect" in chart
    assert f"Margin {margin / 1_000_000:.6f}".rstrip("0") in chart
