"""Monthly budgets: record each threshold crossed once per period, then tell people.

Crossing is recorded in the checking transaction (a unique row per account, month and
threshold, so it fires once however often the check runs); delivery, by email and an
optional webhook, is enqueued by the check task after commit and claims the alert before
sending. Services here enqueue nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from billing.models import BillingAccount, BudgetAlert
from billing.money import format_micros
from billing.periods import Period
from billing.selectors import period_spend_micros
from billing.webhooks import DELIVERY_FAILED, DELIVERY_REFUSED, WebhookRefused, webhook_post
from portal.models import Membership

logger = logging.getLogger(__name__)

ALERT_ROLES = (Membership.Role.OWNER, Membership.Role.ADMIN, Membership.Role.BILLING)


def _crossed(spend: int, budget: int, threshold: int) -> bool:
    if budget == 0:
        return spend > 0
    return spend * 100 >= budget * threshold


@transaction.atomic
def budget_check(*, account: BillingAccount, period: Period | None = None) -> list[BudgetAlert]:
    """Record an alert for each threshold the period's spend has reached for the first
    time; returns the new alerts, which the caller (the check task) has delivered."""
    budget = account.budget_micros  # the lower of the seller's and the customer's own
    if budget is None:
        return []
    period = period or Period.current()
    spend = period_spend_micros(account=account, period=period)
    created = []
    for threshold in sorted(set(account.alert_thresholds or [])):
        if not _crossed(spend, budget, threshold):
            break
        alert, is_new = BudgetAlert.objects.get_or_create(
            account=account,
            period_start=period.start,
            threshold_percent=threshold,
            defaults={"spend_micros": spend, "budget_micros": budget, "currency": account.currency},
        )
        if is_new:
            created.append(alert)
    return created


def _recipients(account: BillingAccount) -> list[str]:
    if account.alert_emails:
        return [str(address) for address in account.alert_emails]
    return sorted(
        {
            email
            for email in Membership.objects.filter(
                organization=account.organization_id, role__in=ALERT_ROLES
            ).values_list("user__email", flat=True)
            if email
        }
    )


def alert_payload(alert: BudgetAlert) -> dict[str, Any]:
    organization = alert.account.organization
    return {
        "type": "budget.threshold_reached",
        "organization": organization.slug,
        "period": f"{alert.period_start:%Y-%m}",
        "threshold_percent": alert.threshold_percent,
        "spend_micros": alert.spend_micros,
        "budget_micros": alert.budget_micros,
        "currency": alert.currency,
        "created_at": alert.created_at.isoformat(),
    }


def budget_alert_deliver(*, alert_id: int) -> bool:
    """Send one alert by email and webhook; False if it was already claimed.

    The alert is claimed first (a conditional UPDATE of ``notified_at``), so a retried or
    duplicated task never sends it twice; a failed webhook is recorded, not retried.
    """
    now = timezone.now()
    claimed = BudgetAlert.objects.filter(pk=alert_id, notified_at__isnull=True).update(
        notified_at=now
    )
    if claimed != 1:
        return False
    alert = BudgetAlert.objects.select_related("account__organization").get(pk=alert_id)
    account = alert.account
    organization = account.organization
    recipients = _recipients(account)
    if recipients:
        spend = format_micros(alert.spend_micros)
        budget = format_micros(alert.budget_micros)
        send_mail(
            subject=f"[Tollgate] {organization.name}: {alert.threshold_percent}% of the "
            f"{alert.period_start:%B %Y} budget used",
            message=f"{organization.name} has spent {spend} {alert.currency} of its monthly "
            f"budget of {budget} {alert.currency} for {alert.period_start:%B %Y} "
            f"({alert.threshold_percent}% threshold).\n"
            + (
                "Requests are refused once the budget is spent.\n"
                if account.hard_budget_micros == alert.budget_micros
                else ""
            ),
            from_email=None,
            recipient_list=recipients,
        )
    fields: dict[str, Any] = {"emailed_to": recipients}
    if account.alert_webhook_url:
        fields.update(_webhook_deliver(organization.slug, account.alert_webhook_url, alert))
    BudgetAlert.objects.filter(pk=alert_id).update(**fields)
    return True


def _webhook_deliver(slug: str, url: str, alert: BudgetAlert) -> dict[str, Any]:
    """Post the alert; the outcome tenants see is the HTTP status or a coarse failure,
    never the connection error (which would tell open ports from closed ones)."""
    import httpx  # deferred: only a delivery needs it (see billing.webhooks.webhook_post)

    try:
        response = webhook_post(
            url, alert_payload(alert), timeout=settings.BILLING_WEBHOOK_TIMEOUT_SECONDS
        )
    except WebhookRefused as exc:
        logger.warning("budget webhook for %s refused: %s", slug, exc)
        return {"webhook_error": DELIVERY_REFUSED}
    except httpx.HTTPError as exc:
        logger.warning("budget webhook for %s failed: %s: %s", slug, type(exc).__name__, exc)
        return {"webhook_error": DELIVERY_FAILED}
    return {"webhook_status": response.status_code}


def budget_accounts() -> list[int]:
    """Accounts with a monthly budget: the ones the periodic check looks at."""
    return list(
        BillingAccount.objects.exclude(
            monthly_budget_micros=None, own_budget_micros=None
        ).values_list("pk", flat=True)
    )
