"""Ledger: top-ups and adjustments audited, codes redeemable once, one charge per success,
and the spending limits the relay reserves against."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.db import connection

from billing.models import BillingAccount, LedgerEntry, RedemptionCode, TenantDefaults, UsageEvent
from billing.pricing import account_spending_limit
from billing.selectors import BILLABLE, account_balance_micros, organization_balance
from billing.services import (
    account_adjust,
    account_refund,
    account_topup,
    billing_account_create,
    redemption_code_create,
    redemption_code_redeem,
    rollups_advance,
    usage_charge_post,
    usage_charges_advance,
)
from billing.services.common import account_for
from portal.models import AuditEntry
from tests.billing.conftest import EventFactory, Market, generate_month

NOW = datetime(2026, 4, 3, 10, tzinfo=UTC)


@pytest.fixture
def account(market: Market) -> BillingAccount:
    return billing_account_create(organization=market.tenant, mode="prepaid", actor="test")


# --- Top-ups and adjustments ----------------------------------------------------------------


@pytest.mark.django_db
def test_topup_and_adjust_move_the_balance_and_are_audited(
    account: BillingAccount, reseller_admin: Any
) -> None:
    account_topup(account=account, amount_micros=5_000_000, actor=reseller_admin, memo="wire")
    account_adjust(account=account, amount_micros=-250_000, actor=reseller_admin, memo="fix")
    account_refund(account=account, amount_micros=1_000, actor="support", memo="bad answer")

    assert account_balance_micros(account) == 4_751_000
    assert organization_balance(account.organization) == 4_751_000
    actions = Counter(AuditEntry.objects.values_list("action", flat=True))
    assert actions["ledger.topup"] == actions["ledger.adjust"] == actions["ledger.refund"] == 1
    topup = LedgerEntry.objects.get(kind="topup")
    assert topup.created_by == reseller_admin
    with pytest.raises(ValidationError):
        account_topup(account=account, amount_micros=0, actor="test")
    with pytest.raises(ValidationError):
        account_adjust(account=account, amount_micros=10, actor="test", memo=" ")


# --- Redemption codes -----------------------------------------------------------------------


@pytest.mark.django_db
def test_a_code_works_once(account: BillingAccount, market: Market, tenant_owner: Any) -> None:
    code, text = redemption_code_create(
        issuer=market.reseller, amount_micros=20_000_000, currency="USD", actor="test"
    )
    assert text.startswith("TG-") and text not in str(RedemptionCode.objects.values().get())

    entry = redemption_code_redeem(code=text.lower(), account=account, actor=tenant_owner)

    assert entry.amount_micros == 20_000_000
    assert entry.reference == f"code:{code.pk}"
    assert account_balance_micros(account) == 20_000_000
    code.refresh_from_db()
    assert (code.redeemed_account, code.redeemed_by) == (account, tenant_owner)
    with pytest.raises(ValidationError) as refused:
        redemption_code_redeem(code=text, account=account, actor=tenant_owner)
    assert refused.value.code == "redeemed"
    assert account_balance_micros(account) == 20_000_000


@pytest.mark.django_db
@pytest.mark.parametrize(
    "typed",
    [
        lambda text: text.replace("-", " "),  # spaces in place of dashes
        lambda text: text.replace("-", ""),  # no separators at all
        lambda text: f"  {text.lower().replace('-', ' - ')} ",  # loose spacing, lower case
    ],
)
def test_a_code_is_recognised_however_its_groups_are_separated(
    account: BillingAccount, market: Market, typed: Any
) -> None:
    _, text = redemption_code_create(
        issuer=market.reseller, amount_micros=1_000_000, currency="USD", actor="test"
    )
    entry = redemption_code_redeem(code=typed(text), account=account, actor="test")
    assert entry.amount_micros == 1_000_000
    with pytest.raises(ValidationError):  # a different code is still refused
        other = text[:-1] + ("A" if text[-1] != "A" else "B")
        redemption_code_redeem(code=other, account=account, actor="test")


@pytest.mark.django_db
def test_codes_are_refused_outside_their_issuer_currency_or_time(
    account: BillingAccount, market: Market
) -> None:
    other = billing_account_create(organization=market.other_tenant, actor="test")
    _, reseller_code = redemption_code_create(
        issuer=market.reseller, amount_micros=1, currency="USD", actor="test"
    )
    _, euro_code = redemption_code_create(
        issuer=market.platform, amount_micros=1, currency="EUR", actor="test"
    )
    _, old_code = redemption_code_create(
        issuer=market.platform,
        amount_micros=1,
        currency="USD",
        actor="test",
        expires_at=datetime(2020, 1, 1, tzinfo=UTC),
    )
    for code, target, reason in [
        (reseller_code, other, "invalid"),  # another reseller's tenant
        (euro_code, account, "currency"),
        (old_code, account, "expired"),
        ("TG-NOPE-NOPE", account, "invalid"),
    ]:
        with pytest.raises(ValidationError) as refused:
            redemption_code_redeem(code=code, account=target, actor="test")
        assert refused.value.code == reason
    assert LedgerEntry.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_concurrent_redemptions_credit_once(market: Market) -> None:
    account = billing_account_create(organization=market.tenant, mode="prepaid", actor="test")
    _, text = redemption_code_create(
        issuer=market.platform, amount_micros=7_000_000, currency="USD", actor="test"
    )
    attempts = 8
    barrier = threading.Barrier(attempts)
    outcomes: list[str] = []

    def redeem() -> None:
        try:
            barrier.wait()
            redemption_code_redeem(code=text, account=account, actor="race")
            outcomes.append("ok")
        except ValidationError as exc:
            outcomes.append(exc.code or "")
        except Exception as exc:  # a lock timeout would be a finding, not a pass
            outcomes.append(repr(exc))
        finally:
            connection.close()

    threads = [threading.Thread(target=redeem) for _ in range(attempts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert sorted(outcomes) == ["ok"] + ["redeemed"] * (attempts - 1)
    assert LedgerEntry.objects.filter(kind="topup").count() == 1
    assert account_balance_micros(account) == 7_000_000


# --- Usage charges --------------------------------------------------------------------------


@pytest.mark.django_db
def test_every_success_has_exactly_one_usage_charge(market: Market) -> None:
    with time_machine.travel(NOW, tick=False):
        events = generate_month(market, count=200)
        posted = usage_charge_post()
        again = usage_charge_post()

    billable = UsageEvent.objects.filter(BILLABLE)
    assert posted == billable.count() and again == 0
    charges = Counter(
        (entry.account.organization_id, entry.reference)
        for entry in LedgerEntry.objects.filter(kind="usage").select_related("account")
    )
    assert set(charges.values()) == {1}
    for event in events:
        priced_success = event.is_priced and event.status_code < 400
        assert ((event.tenant_id, event.request_id) in charges) == (
            priced_success or event.cost_retail_micros > 0
        )
        if event.reseller_id and (event.tenant_id, event.request_id) in charges:
            assert (event.reseller_id, event.request_id) in charges
    # Each account is charged exactly its side of the events' costs.
    for tenant in market.tenants:
        account = BillingAccount.objects.get(organization=tenant)
        assert -account_balance_micros(account) == sum(
            e.cost_retail_micros for e in events if e.tenant_id == tenant.pk
        )
    reseller = BillingAccount.objects.get(organization=market.reseller)
    assert -account_balance_micros(reseller) == sum(
        e.cost_wholesale_micros for e in events if e.reseller_id == market.reseller.pk
    )


@pytest.mark.django_db
def test_the_periodic_job_charges_late_events(market: Market, event: EventFactory) -> None:
    with time_machine.travel(NOW, tick=False):
        event(prompt_tokens=1000)
        assert usage_charges_advance() == 1
        assert usage_charges_advance() == 0
    with time_machine.travel(NOW + timedelta(hours=6), tick=False):
        late = event(prompt_tokens=2000, created_at=datetime(2026, 3, 2, tzinfo=UTC))
        assert usage_charges_advance() == 1
    assert LedgerEntry.objects.filter(reference=late.request_id).count() == 2  # tenant, reseller


# --- Spending limits for the relay ----------------------------------------------------------


@pytest.mark.django_db
def test_prepaid_limit_counts_events_not_yet_posted(
    account: BillingAccount, market: Market, event: EventFactory
) -> None:
    account_topup(account=account, amount_micros=1_000_000, actor="test")
    with time_machine.travel(NOW, tick=False):
        spent = event(model="model-b", prompt_tokens=10_000, completion_tokens=1_000)
        limit = account_spending_limit(market.tenant.pk)
        assert limit.mode == "prepaid" and limit.currency == "USD"
        assert limit.available_micros == 1_000_000 - spent.cost_retail_micros
        usage_charges_advance()
        assert account_spending_limit(market.tenant.pk) == limit  # posted: same figure
    assert limit.budget_remaining_micros is None and limit.hard_stop is False


@pytest.mark.django_db
def test_postpaid_limit_is_credit_minus_what_is_owed(market: Market, event: EventFactory) -> None:
    billing_account_create(
        organization=market.tenant,
        mode="postpaid",
        credit_limit_micros=5_000_000,
        monthly_budget_micros=3_000_000,
        budget_hard_stop=True,
        actor="test",
    )
    with time_machine.travel(NOW, tick=False):
        spent = event(model="model-b", prompt_tokens=10_000, created_at=NOW - timedelta(hours=1))
        earlier = event(model="model-a", prompt_tokens=9_000, created_at=NOW - timedelta(hours=5))
        old = event(
            model="model-b", prompt_tokens=5_000, created_at=datetime(2026, 3, 3, tzinfo=UTC)
        )
        rollups_advance()
        usage_charges_advance()
        late = event(model="model-b", prompt_tokens=1_000, created_at=NOW - timedelta(minutes=1))
        limit = account_spending_limit(market.tenant.pk)

    april = [spent, earlier, late]  # the first two rolled up, the last one not yet
    owed = sum(e.cost_retail_micros for e in [*april, old])
    assert limit.available_micros == 5_000_000 - owed
    # The budget counts April only: settled hours from rollups, the rest from raw events.
    assert limit.budget_remaining_micros == 3_000_000 - sum(e.cost_retail_micros for e in april)
    assert limit.hard_stop is True


@pytest.mark.django_db
def test_no_account_means_prepaid_with_nothing_to_spend(market: Market) -> None:
    limit = account_spending_limit(market.direct_tenant.pk)
    assert (limit.mode, limit.available_micros, limit.budget_remaining_micros) == (
        "prepaid",
        0,
        None,
    )
    assert organization_balance(market.direct_tenant) is None
    # The first charge opens the account on the same terms.
    assert account_for(market.direct_tenant).mode == BillingAccount.Mode.PREPAID


@pytest.mark.django_db
def test_no_account_follows_the_sellers_default_terms(market: Market) -> None:
    TenantDefaults.objects.create(
        seller=market.reseller, mode="postpaid", credit_limit_micros=2_000_000
    )
    limit = account_spending_limit(market.tenant.pk)
    assert (limit.mode, limit.available_micros) == ("postpaid", 2_000_000)
    # Another seller's defaults change nothing for its neighbours.
    assert account_spending_limit(market.direct_tenant.pk).available_micros == 0
    account = account_for(market.tenant)
    assert (account.mode, account.credit_limit_micros) == ("postpaid", 2_000_000)
    # A reseller itself is invoiced by the platform: postpaid.
    assert account_for(market.reseller).mode == BillingAccount.Mode.POSTPAID


@pytest.mark.django_db
def test_spending_limit_takes_a_handful_of_queries(
    account: BillingAccount, market: Market, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(8):
        account_spending_limit(market.tenant.pk)


# --- Per-key spend quotas -------------------------------------------------------------------


@pytest.mark.django_db
def test_key_quota_counts_total_and_period_spend(market: Market, event: EventFactory) -> None:
    from billing.pricing import key_spending_limit
    from billing.services import key_quota_set

    key, other_key = market.keys[market.tenant.pk]
    assert key_spending_limit(key.pk) is None
    key_quota_set(
        api_key=key,
        total_limit_micros=1_000_000,
        period="day",
        period_limit_micros=100_000,
        actor="test",
    )
    with time_machine.travel(NOW, tick=False):
        yesterday = event(api_key=key, prompt_tokens=100_000, created_at=NOW - timedelta(days=1))
        today = event(api_key=key, prompt_tokens=40_000, created_at=NOW - timedelta(hours=2))
        event(api_key=other_key, prompt_tokens=99_999)  # another key's spend does not count
        rollups_advance()  # yesterday and today's early hours now come from rollups
        recent = event(api_key=key, prompt_tokens=4_000, created_at=NOW - timedelta(minutes=1))
        limit = key_spending_limit(key.pk)

    spent = [e.cost_retail_micros for e in (yesterday, today, recent)]
    assert limit is not None and limit.period == "day"
    assert limit.total_remaining_micros == 1_000_000 - sum(spent)
    assert limit.period_remaining_micros == 100_000 - spent[1] - spent[2]
    assert AuditEntry.objects.filter(action="api_key.set_quota").count() == 1

    key_quota_set(api_key=key, actor="test")  # no limits: the quota goes
    assert key_spending_limit(key.pk) is None
