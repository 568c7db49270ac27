"""Budget alerts: each threshold fires once per period, by email and a real webhook."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.core import mail

from billing.models import BillingAccount, BudgetAlert
from billing.periods import Period
from billing.services import budget_alert_deliver, budget_check, rollups_advance
from billing.tasks import budget_check_task, budget_checks_task
from tests.billing.conftest import EventFactory, Market
from tests.servers import asgi_body, serve_in_thread

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 20, 12, tzinfo=UTC)
MARCH = Period.month(2026, 3)


class WebhookReceiver:
    """A loopback ASGI app that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = await asgi_body(receive)
        headers = dict(scope["headers"])
        self.received.append(
            {
                "path": scope["path"],
                "host": headers.get(b"host", b"").decode(),
                "json": json.loads(body),
            }
        )
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def webhook() -> Iterator[tuple[str, WebhookReceiver]]:
    receiver = WebhookReceiver()
    url, stop = serve_in_thread(receiver)
    yield url, receiver
    stop()


@pytest.fixture
def budgeted(market: Market, tenant_owner: Any) -> BillingAccount:
    from billing.services import billing_account_create

    return billing_account_create(
        organization=market.tenant,
        monthly_budget_micros=100_000,  # 0.10 USD
        alert_thresholds=[50, 80, 100],
        actor="test",
    )


def spend(event: EventFactory, micros: int) -> None:
    """Usage costing exactly ``micros`` at the reseller's model-a input price (0.225/1M):
    40 tokens cost 9 micro-units."""
    assert micros % 9 == 0
    event(prompt_tokens=40 * micros // 9, created_at=NOW)


def check_and_deliver(account: BillingAccount, capture_on_commit: Any) -> list[int]:
    """Run one account's check task as Celery would, delivery included; the thresholds
    it fired."""
    before = set(BudgetAlert.objects.values_list("pk", flat=True))
    with capture_on_commit(execute=True):
        budget_check_task.delay(account.pk)
    fired = BudgetAlert.objects.filter(account=account).exclude(pk__in=before)
    return list(fired.order_by("threshold_percent").values_list("threshold_percent", flat=True))


def test_thresholds_fire_once_per_period(
    budgeted: BillingAccount,
    event: EventFactory,
    tenant_owner: Any,
    django_capture_on_commit_callbacks: Any,
    celery_eager: None,
) -> None:
    with time_machine.travel(NOW, tick=False):
        spend(event, 45_000)
        assert budget_check(account=budgeted) == []

        spend(event, 36_000)  # 81 %: crosses 50 and 80 at once
        fired = check_and_deliver(budgeted, django_capture_on_commit_callbacks)
        assert fired == [50, 80]
        assert len(mail.outbox) == 2
        assert mail.outbox[0].to == [tenant_owner.email]
        assert "50% of the March 2026 budget" in mail.outbox[0].subject

        for _ in range(3):  # checked again and again: nothing new
            assert check_and_deliver(budgeted, django_capture_on_commit_callbacks) == []
        rollups_advance()  # spend now partly from rollups: the same figure
        assert budget_check(account=budgeted) == []

        spend(event, 27_000)  # 108 %
        assert check_and_deliver(budgeted, django_capture_on_commit_callbacks) == [100]

    assert len(mail.outbox) == 3
    alerts = BudgetAlert.objects.order_by("threshold_percent")
    assert [(a.threshold_percent, a.period_start) for a in alerts] == [
        (50, MARCH.start),
        (80, MARCH.start),
        (100, MARCH.start),
    ]
    assert all(a.notified_at is not None for a in alerts)

    # A new month starts from nothing.
    with time_machine.travel(datetime(2026, 4, 2, tzinfo=UTC), tick=False):
        assert budget_check(account=budgeted) == []


def test_the_service_records_and_the_task_delivers(
    budgeted: BillingAccount, event: EventFactory, django_capture_on_commit_callbacks: Any
) -> None:
    with time_machine.travel(NOW, tick=False):
        spend(event, 54_000)
        with django_capture_on_commit_callbacks() as callbacks:
            (alert,) = budget_check(account=budgeted)
    assert callbacks == []  # the service enqueues nothing
    assert alert.notified_at is None and mail.outbox == []


def test_delivery_is_claimed_once(budgeted: BillingAccount, event: EventFactory) -> None:
    with time_machine.travel(NOW, tick=False):
        spend(event, 54_000)
        (alert,) = budget_check(account=budgeted)  # callbacks not run: delivered by hand
    assert budget_alert_deliver(alert_id=alert.pk) is True
    assert budget_alert_deliver(alert_id=alert.pk) is False  # a retried task sends nothing
    assert len(mail.outbox) == 1


def test_webhook_is_posted_to_a_real_server(
    budgeted: BillingAccount,
    event: EventFactory,
    webhook: tuple[str, WebhookReceiver],
    django_capture_on_commit_callbacks: Any,
    celery_eager: None,
    settings: Any,
) -> None:
    from billing.services import billing_account_update

    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True  # the receiver is on loopback

    url, receiver = webhook
    billing_account_update(
        account=budgeted,
        alert_webhook_url=f"{url}/hooks/budget",
        alert_emails=["finance@example.test"],
        actor="test",
    )
    with time_machine.travel(NOW, tick=False):
        spend(event, 90_000)
        with django_capture_on_commit_callbacks(execute=True):
            budget_checks_task.delay()  # the periodic task, run eagerly

    assert [r["json"]["threshold_percent"] for r in receiver.received] == [50, 80]
    first = receiver.received[0]
    assert first["path"] == "/hooks/budget"
    assert first["json"]["organization"] == "tenant"
    assert first["json"]["period"] == "2026-03"
    assert first["json"]["spend_micros"] == 90_000
    assert first["json"]["budget_micros"] == 100_000
    assert [m.to for m in mail.outbox] == [["finance@example.test"]] * 2
    assert set(BudgetAlert.objects.values_list("webhook_status", flat=True)) == {204}


def test_a_failing_webhook_is_recorded(
    budgeted: BillingAccount,
    event: EventFactory,
    django_capture_on_commit_callbacks: Any,
    settings: Any,
) -> None:
    from billing.services import billing_account_update

    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True

    billing_account_update(
        account=budgeted, alert_webhook_url="http://127.0.0.1:9/closed", actor="test"
    )
    with time_machine.travel(NOW, tick=False):
        spend(event, 54_000)
        (alert,) = budget_check(account=budgeted)
    budget_alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert alert.webhook_status is None
    assert alert.webhook_error == "not delivered"  # the connection error is only logged


def test_accounts_without_budget_are_not_checked(market: Market, event: EventFactory) -> None:
    from billing.services import billing_account_create

    account = billing_account_create(organization=market.tenant, actor="test")
    event(prompt_tokens=10_000_000)
    assert budget_check(account=account) == []
