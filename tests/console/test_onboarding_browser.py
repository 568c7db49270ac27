# ruff: noqa: F811 - the browser fixtures are imported from test_views_browser by name
"""Onboarding in real Chromium, each step as a new person would take it: invitations go
through a real SMTP server on loopback (aiosmtpd) and are opened from the mailed link.

The operator invites a reseller's owner; the reseller creates a tenant and invites its
owner, who signs up through the link, creates a key with limits, sees its prices and its
budget, and sends traffic through the relay to the simulator; the reseller then sees the
revenue and margin of that traffic.
"""

from __future__ import annotations

import email
import re
import socket
import time
from collections.abc import Iterator
from decimal import Decimal
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import httpx
import pytest

from billing.services import model_price_set, price_list_create, rollups_advance
from portal import services
from portal.models import Invitation, Membership, Organization
from tests.console.test_views_browser import (  # noqa: F401  (fixtures, used by name)
    PASSWORD,
    SIM_KEY,
    pytestmark,
    shot,
    sign_in,
    simulator,
    site,
    wait_for_usage,
    with_password,
)

NEW_PASSWORD = "correct horse battery 2026"


class Inbox:
    """What the SMTP server on loopback received, as parsed messages."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=default_policy)
        self.messages.append(message)  # type: ignore[arg-type]
        return "250 Message accepted for delivery"

    def link_for(self, address: str, timeout: float = 10.0) -> str:
        """The invitation link in the latest mail to ``address`` (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in reversed(self.messages):
                if address in str(message["To"]):
                    body = message.get_body(preferencelist=("plain",))
                    assert body is not None
                    match = re.search(r"https?://\S+/invite/[\w-]+/", body.get_content())
                    assert match, body.get_content()
                    return match.group(0)
            time.sleep(0.05)
        raise AssertionError(f"no mail to {address} within {timeout} s")


@pytest.fixture
def inbox(settings: Any) -> Iterator[Inbox]:
    """A real SMTP server on a free loopback port; Django's SMTP backend sends to it."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    handler = Inbox()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", port
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
    settings.DEFAULT_FROM_EMAIL = "Tollgate <tollgate@example.test>"
    yield handler
    controller.stop()


def accept_as_newcomer(browser: Any, site: str, link: str, username: str) -> Any:
    """Open the mailed link in a fresh browser and sign up with a new login."""
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=site)
    page = context.new_page()
    page.goto(link)
    page.get_by_label("Username").fill(username)
    page.get_by_label(re.compile(r"^Password:?$")).fill(NEW_PASSWORD)
    page.get_by_label("Password confirmation").fill(NEW_PASSWORD)
    shot(page, f"invitation-accept-{username}")
    page.get_by_role("button", name="Create login and join").click()
    page.wait_for_load_state()
    return page


def test_the_operator_invites_a_resellers_owner_who_signs_up(
    site: str, browser: Any, inbox: Inbox, operator_user: Any, platform_org: Organization
) -> None:
    with_password(operator_user)
    page = sign_in(browser, site, "operator")
    page.get_by_role("link", name="Organisations").click()
    page.get_by_label(re.compile(r"^Name")).fill("Resell Co")
    page.get_by_label("Kind").select_option("reseller")
    page.get_by_label("Parent").select_option(label=str(platform_org))
    page.get_by_label("Owner's e-mail").fill("founder@resell.test")
    page.get_by_role("button", name="Create").click()
    assert page.get_by_text("invitation sent to founder@resell.test").is_visible()
    assert page.get_by_role("row", name="founder@resell.test").is_visible()  # pending
    shot(page, "operator-invited-reseller")

    (message,) = inbox.messages
    assert message["From"] == "Tollgate <tollgate@example.test>"
    assert "Resell Co" in str(message["Subject"])
    founder = accept_as_newcomer(browser, site, inbox.link_for("founder@resell.test"), "founder")
    assert founder.get_by_text("Welcome to Resell Co.").is_visible()
    assert founder.get_by_role("link", name="Tenants").is_visible()
    membership = Membership.objects.get(user__username="founder")
    assert (membership.organization.slug, membership.role) == ("resell-co", "owner")
    assert Invitation.objects.get().status == "accepted"
    # The link worked once.
    founder.goto(inbox.link_for("founder@resell.test"))
    assert founder.get_by_text("This invitation is not valid").is_visible()


def _market_for(reseller: Organization, simulator: str) -> None:
    """What the operator and the reseller set up beforehand (covered by other browser
    tests): a channel to the simulator, wholesale prices, the reseller's 50 % markup."""
    channel = services.channel_create(
        name="Simulator",
        base_url=f"{simulator}/sim/key={SIM_KEY}/v1",
        secret=SIM_KEY,
        models=["sim-small"],
        actor="test",
    )
    wholesale = price_list_create(
        owner=reseller.parent, name="Wholesale", actor="test", is_default=True
    )
    model_price_set(
        price_list=wholesale,
        model=channel.served.get().model,
        input_per_mtok=1_000_000,
        output_per_mtok=2_000_000,
        actor="test",
    )
    price_list_create(
        owner=reseller, name="Retail", actor="test", is_default=True, markup_percent=Decimal(50)
    )


def test_a_tenant_owner_is_invited_signs_up_uses_a_key_and_the_reseller_sees_the_margin(
    site: str,
    simulator: str,
    browser: Any,
    inbox: Inbox,
    reseller_admin: Any,
    reseller_org: Organization,
) -> None:
    _market_for(reseller_org, simulator)
    with_password(reseller_admin)

    # The reseller creates the tenant and invites its owner in one step.
    reseller = sign_in(browser, site, "reseller-admin")
    reseller.goto("/o/reseller/tenants/")
    reseller.get_by_label(re.compile(r"^Name")).fill("Acme Robotics")
    reseller.get_by_label("Owner's e-mail").fill("boss@acme.test")
    reseller.get_by_role("button", name="Create tenant").click()
    assert reseller.get_by_text(
        "Tenant “Acme Robotics” created; invitation sent to boss@acme.test."
    ).is_visible()
    # Terms: postpaid with a monthly budget (a new tenant is otherwise prepaid at zero).
    reseller.goto("/o/acme-robotics/billing/terms/")
    reseller.get_by_label("Billing mode").select_option("postpaid")
    reseller.get_by_label("Monthly budget").fill("20")
    reseller.get_by_role("button", name="Save terms").click()
    assert reseller.get_by_text("Terms of Acme Robotics saved.").is_visible()

    # The owner accepts through the mailed link, with a new login.
    owner = accept_as_newcomer(browser, site, inbox.link_for("boss@acme.test"), "acme-boss")
    assert owner.get_by_text("Welcome to Acme Robotics.").is_visible()

    # Their prices, then a key with limits and a spend cap.
    owner.get_by_role("link", name="API keys").click()
    owner.get_by_role("link", name="Models and your prices").click()
    price = owner.get_by_test_id("price-sim-small").inner_text()
    assert "input 1.50 · cached 1.50 · output 3.00 USD" in price, price
    shot(owner, "tenant-your-prices")
    owner.get_by_role("link", name="API keys").click()
    owner.get_by_label(re.compile(r"^Name")).fill("production")
    owner.get_by_label("Requests per minute").fill("60")
    owner.get_by_label("Tokens per minute").fill("100000")
    owner.get_by_label("Spend cap per period").fill("5")
    owner.get_by_role("button", name="Create key").click()
    secret = owner.get_by_label("API key secret").input_value()
    assert secret.startswith("sk-tg-")

    reply = httpx.post(
        f"{site}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "sim-small", "messages": [{"role": "user", "content": "hello"}]},
        timeout=20,
    )
    assert reply.status_code == 200, reply.text
    assert wait_for_usage(api_key__name="production", status_code=200)

    owner.goto("/o/acme-robotics/keys/")
    row = owner.get_by_role("row", name="production").inner_text()
    assert "60 requests/min" in row and "100000 tokens/min" in row
    assert "left of 5.00 per month" in row
    budget = owner.get_by_test_id("budget-remaining").inner_text()
    assert "left of this month's budget of 20.00 USD" in budget
    assert owner.locator("progress#budget-progress").count() == 1
    shot(owner, "tenant-keys-with-limits")

    # The reseller sees the revenue and margin of that request (after the rollup job).
    rollups_advance()
    reseller.goto("/o/reseller/")
    reseller.get_by_role("link", name="Revenue").click()
    assert reseller.locator("figure.chart svg rect").count() >= 1
    tenant_row = reseller.get_by_role("row", name="Acme Robotics").first.inner_text()
    revenue, wholesale, margin = (Decimal(cell) for cell in re.findall(r"\d+\.\d+", tenant_row)[:3])
    assert revenue > wholesale > 0 and margin == revenue - wholesale
    shot(reseller, "reseller-revenue-margin")
