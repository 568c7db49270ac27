"""Budget webhooks cannot be aimed at the platform's own network (issue 11, finding 5).

The finding: a tenant owner set the alert webhook to loopback and private addresses and
read ``webhook 204`` or ``Connection refused`` on the budget page, a port scanner. Now such
a destination is refused when it is set and again when the alert is sent (after DNS
resolution, connecting to the address checked), and the page shows a coarse outcome.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError
from django.urls import reverse

from billing.models import BillingAccount, BudgetAlert
from billing.services import budget_alert_deliver, budget_check
from billing.webhooks import DELIVERY_FAILED, DELIVERY_REFUSED, is_public_address
from tests.billing.conftest import EventFactory, Market
from tests.billing.test_budgets import WebhookReceiver, spend
from tests.console.conftest import client_for
from tests.servers import serve_in_thread

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)

INTERNAL_HOSTS = [
    "127.0.0.1",
    "127.9.9.9",
    "localhost",
    "api.localhost",
    "2130706433",  # 127.0.0.1 written as one number, resolved by the system
    "10.0.0.7",
    "172.16.3.4",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "100.64.0.1",  # shared address space (CGNAT)
    "0.0.0.0",  # noqa: S104 - an address to refuse, not one to bind
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "255.255.255.255",
    "[::1]",
    "[::]",
    "[fe80::1]",
    "[fc00::1]",
    "[ff02::1]",
    "[::ffff:127.0.0.1]",  # IPv4-mapped
    "[::ffff:10.0.0.1]",
    "[2002:7f00:1::]",  # 6to4 around 127.0.0.1
    "[64:ff9b::a00:1]",  # NAT64 around 10.0.0.1
]


@pytest.fixture
def receiver() -> Iterator[tuple[str, WebhookReceiver]]:
    app = WebhookReceiver()
    url, stop = serve_in_thread(app)
    yield url, app
    stop()


@pytest.fixture
def account(market: Market) -> BillingAccount:
    from billing.services import billing_account_create

    return billing_account_create(
        organization=market.tenant,
        monthly_budget_micros=100_000,
        alert_thresholds=[50],
        alert_emails=["finance@example.test"],
        actor="test",
    )


def _alert(account: BillingAccount, event: EventFactory) -> BudgetAlert:
    with time_machine.travel(NOW, tick=False):
        spend(event, 54_000)
        (alert,) = budget_check(account=account)
    return alert


def _force_url(account: BillingAccount, url: str) -> None:
    """Store a URL without the input check, as a row from before it existed would be."""
    BillingAccount.objects.filter(pk=account.pk).update(alert_webhook_url=url)
    account.refresh_from_db()


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_an_owner_cannot_set_an_internal_webhook(
    market: Market, tenant_owner: Any, host: str
) -> None:
    response = client_for(tenant_owner).post(
        reverse("budget", args=["tenant"]),
        {
            "monthly_budget": "1",
            "alert_thresholds": "50",
            "alert_webhook_url": f"http://{host}:8/x",
        },
    )
    assert response.status_code == 400, host
    if host != "2130706433":  # that one the URL field itself already refuses
        assert "public address" in response.content.decode()
    assert not BillingAccount.objects.filter(organization=market.tenant).exists()


@pytest.mark.parametrize("host", INTERNAL_HOSTS)
def test_the_service_refuses_an_internal_webhook(account: BillingAccount, host: str) -> None:
    """The rule lives in the service, so the API and the admin cannot bypass the form."""
    from billing.services import billing_account_update

    with pytest.raises(ValidationError) as refused:
        billing_account_update(account=account, alert_webhook_url=f"https://{host}/x", actor="t")
    assert "alert_webhook_url" in refused.value.message_dict
    account.refresh_from_db()
    assert account.alert_webhook_url == ""


def test_the_reproduction_a_loopback_port_scan_reads_nothing(
    account: BillingAccount,
    event: EventFactory,
    tenant_owner: Any,
    receiver: tuple[str, WebhookReceiver],
) -> None:
    """The attack as found: a loopback receiver answering 204, and a closed port."""
    url, app = receiver
    page = reverse("budget", args=["tenant"])
    owner = client_for(tenant_owner)
    form = {"monthly_budget": "0.1", "alert_thresholds": "50", "alert_webhook_url": f"{url}/"}
    assert owner.post(page, form).status_code == 400  # refused on input

    # Suppose the URL got in anyway (set before the check existed): the send refuses it.
    _force_url(account, f"{url}/open")
    alert = _alert(account, event)
    assert budget_alert_deliver(alert_id=alert.pk) is True
    alert.refresh_from_db()
    assert app.received == []
    assert (alert.webhook_status, alert.webhook_error) == (None, DELIVERY_REFUSED)
    html = owner.get(page).content.decode()
    assert "webhook destination not allowed" in html
    assert "204" not in html and "Connect" not in html


def test_a_name_that_resolves_inside_is_refused_at_send_time(
    account: BillingAccount,
    event: EventFactory,
    receiver: tuple[str, WebhookReceiver],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """DNS rebinding: public when set, loopback when sent. There is no DNS server to
    rebind here, so the system resolver is replaced for this one name."""
    url, app = receiver
    port = int(url.rsplit(":", 1)[1])
    answers = iter(["93.184.215.14", "127.0.0.1", "127.0.0.1"])
    real = socket.getaddrinfo

    def resolver(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.example.test":
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    from billing.services import billing_account_update

    billing_account_update(
        account=account, alert_webhook_url=f"http://rebind.example.test:{port}/h", actor="t"
    )
    alert = _alert(account, event)
    budget_alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert app.received == []
    assert alert.webhook_error == DELIVERY_REFUSED


def test_the_post_goes_to_the_address_checked_with_the_name_as_host(
    account: BillingAccount,
    event: EventFactory,
    receiver: tuple[str, WebhookReceiver],
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    """The name is resolved once; the connection uses that address, the Host header the
    name (allowed here since the receiver is on loopback)."""
    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True
    url, app = receiver
    port = int(url.rsplit(":", 1)[1])
    calls: list[str] = []
    real = socket.getaddrinfo

    def resolver(host: str, *args: Any, **kwargs: Any) -> Any:
        if host != "hooks.tenant.test":
            return real(host, *args, **kwargs)
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    _force_url(account, f"http://hooks.tenant.test:{port}/budget?x=1")
    alert = _alert(account, event)
    budget_alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert alert.webhook_status == 204
    assert calls == ["hooks.tenant.test"]  # resolved once, by the check
    (received,) = app.received
    assert received["path"] == "/budget"
    assert received["host"] == f"hooks.tenant.test:{port}"


def test_operators_may_allow_internal_destinations(
    account: BillingAccount,
    event: EventFactory,
    receiver: tuple[str, WebhookReceiver],
    tenant_owner: Any,
    settings: Any,
) -> None:
    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True
    url, app = receiver
    from billing.services import billing_account_update

    billing_account_update(account=account, alert_webhook_url=f"{url}/hooks", actor="t")
    alert = _alert(account, event)
    budget_alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert alert.webhook_status == 204 and len(app.received) == 1
    html = client_for(tenant_owner).get(reverse("budget", args=["tenant"])).content.decode()
    assert "webhook HTTP 204" in html


def test_a_failed_delivery_shows_no_connection_error(
    account: BillingAccount, event: EventFactory, tenant_owner: Any, settings: Any
) -> None:
    settings.BILLING_WEBHOOK_ALLOW_PRIVATE = True
    with socket.socket() as closed:  # a port bound, never listened on: connection refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        _force_url(account, f"http://127.0.0.1:{port}/closed")
        alert = _alert(account, event)
        budget_alert_deliver(alert_id=alert.pk)
    alert.refresh_from_db()
    assert (alert.webhook_status, alert.webhook_error) == (None, DELIVERY_FAILED)
    html = client_for(tenant_owner).get(reverse("budget", args=["tenant"])).content.decode()
    assert "webhook not delivered" in html
    assert "refused" not in html.lower() and "ConnectError" not in html


def test_an_old_raw_error_is_not_shown(
    account: BillingAccount, event: EventFactory, tenant_owner: Any
) -> None:
    alert = _alert(account, event)
    BudgetAlert.objects.filter(pk=alert.pk).update(
        webhook_error="ConnectError: [Errno 111] Connection refused"
    )
    html = client_for(tenant_owner).get(reverse("budget", args=["tenant"])).content.decode()
    assert "webhook not delivered" in html and "Errno" not in html


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("93.184.215.14", True),
        ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", True),
        ("8.8.8.8", True),
        *[
            (h.strip("[]"), False)
            for h in INTERNAL_HOSTS
            if (h[0] in "0123456789[" and "." in h) or ":" in h
        ],
        ("192.0.2.1", False),  # documentation
        ("198.18.0.1", False),  # benchmarking
        ("::ffff:8.8.8.8", True),
    ],
)
def test_is_public_address(address: str, public: bool) -> None:
    assert is_public_address(ipaddress.ip_address(address)) is public
