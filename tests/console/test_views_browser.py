"""The main journeys in real headless Chromium, against Tollgate served on loopback.

Debian's ``chromium`` (``apt-get install chromium``) is driven by Playwright; nothing is
downloaded by the test tool. Screenshots of each main page land in ``tests/artifacts/``
(ignored by git; CI keeps the folder as an artefact).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib.auth.hashers import make_password
from django.core.asgi import get_asgi_application
from playwright.sync_api import expect

from billing.models import BillingAccount, UsageEvent
from portal.models import ApiKey, CatalogModel, Channel, Invitation, Membership, Organization
from portal.services.invitations import invitation_accept
from relay.app import RelayApp
from relay.metering import usage_writer
from relay.simulator import build_app
from tests.browser import ARTIFACTS, browser_marks
from tests.conftest import make_member, make_user, price_models
from tests.servers import serve_in_thread

PASSWORD = "browser test pass 2026"
SIM_KEY = "sk-sim-browser-5d1"

pytestmark = browser_marks


class Gateway:
    """Django for everything but /v1, which goes to a fresh relay: as config.asgi does."""

    def __init__(self) -> None:
        self.django = get_asgi_application()
        self.relay = RelayApp()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        app = self.relay if path == "/v1" or path.startswith("/v1/") else self.django
        await app(scope, receive, send)


@pytest.fixture
def site(transactional_db: None, settings: Any) -> Iterator[str]:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.RELAY_CACHE_POLL_SECONDS = 0.2
    settings.RELAY_USAGE_FLUSH_SECONDS = 0.05
    gateway = Gateway()
    base_url, stop = serve_in_thread(gateway)
    settings.TOLLGATE_PUBLIC_URL = base_url
    yield base_url
    stop()
    usage_writer.flush()


@pytest.fixture
def simulator() -> Iterator[str]:
    base_url, stop = serve_in_thread(build_app(latency_ms=5))
    yield base_url
    stop()


def with_password(user: Any) -> Any:
    user.password = make_password(PASSWORD)
    user.save()
    return user


def sign_in(browser: Any, site: str, username: str) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 860}, base_url=site)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site)
    page = context.new_page()
    page.goto("/account/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return page


def wait_for_usage(timeout: float = 10.0, **lookup: Any) -> bool:
    """The relay records usage after the response has gone out; wait for the row."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        usage_writer.flush()
        if UsageEvent.objects.filter(**lookup).exists():
            return True
        time.sleep(0.05)
    return False


def shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_operator_adds_a_channel_tests_it_and_sees_the_model_available(
    site: str, simulator: str, browser: Any, operator_user: Any
) -> None:
    with_password(operator_user)
    price_models("sim-small")  # the wholesale list prices it: available once served
    page = sign_in(browser, site, "operator")
    assert page.url.endswith("/operator/")
    shot(page, "operator-overview")

    page.get_by_role("link", name="Channels").click()
    expect(page.get_by_text("No channels yet.")).to_be_visible()
    page.get_by_role("link", name="Add a channel").click()
    page.get_by_label("Name").fill("Simulator")
    page.get_by_label("Base URL").fill(f"{simulator}/sim/key={SIM_KEY}/v1")
    page.get_by_label("Upstream API key").fill(SIM_KEY)
    page.get_by_label("Models served").fill("sim-small")
    shot(page, "operator-channel-form")
    page.get_by_role("button", name="Add channel").click()
    expect(page.get_by_text("Channel “Simulator” created and enabled.")).to_be_visible()

    page.get_by_role("button", name="Test Simulator").click()
    expect(page.get_by_text("“Simulator” answered in")).to_be_visible()
    shot(page, "operator-channels")
    assert Channel.objects.get().last_check_ok is True

    page.get_by_role("link", name="Models", exact=True).first.click()
    row = page.get_by_role("row", name="sim-small")
    assert "available" in row.inner_text() and "unavailable" not in row.inner_text()
    shot(page, "operator-model-catalog")
    page.goto("/models/")
    expect(page.get_by_role("row", name="sim-small").get_by_text("available")).to_be_visible()
    shot(page, "public-models")
    page.goto("/operator/audit/")
    expect(page.get_by_role("row", name="channel.create")).to_be_visible()
    shot(page, "operator-audit-log")
    page.goto("/api/docs/")
    expect(page.get_by_role("heading", name="Tollgate management API")).to_be_visible()
    shot(page, "api-docs")
    page.goto("/account/two-factor/")
    page.get_by_role("button", name="Set up two-factor").click()
    expect(page.locator(".qr svg")).to_be_visible()
    shot(page, "operator-two-factor")


def test_reseller_creates_a_tenant_with_a_price_list_and_a_top_up(
    site: str, browser: Any, reseller_admin: Any, reseller_org: Organization
) -> None:
    CatalogModel.objects.create(public_id="sim-small")
    with_password(reseller_admin)
    acme_owner = make_user("acme-owner")
    page = sign_in(browser, site, "reseller-admin")
    assert page.url.endswith("/o/reseller/tenants/")
    page.get_by_label("Name").fill("Acme Robotics")
    page.get_by_role("button", name="Create tenant").click()
    expect(page.get_by_text("Tenant “Acme Robotics” created.")).to_be_visible()
    # People join by invitation only; following the mailed link is test_onboarding_browser's.
    page.get_by_label("E-mail address").fill("acme-owner@example.test")
    page.get_by_label("Role").select_option("owner")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_text("Invitation sent to acme-owner@example.test.")).to_be_visible()
    shot(page, "tenant-members")
    invitation_accept(
        invitation=Invitation.objects.get(email="acme-owner@example.test"),
        user=acme_owner,
    )
    assert Membership.objects.get(user__username="acme-owner").organization.parent == reseller_org

    page.goto("/o/reseller/price-lists/")
    expect(page.get_by_text("No price lists yet.")).to_be_visible()
    page.get_by_label("Name").fill("Standard")
    page.get_by_label("Markup over wholesale (%)").fill("20")
    page.get_by_label("Default list").check()
    page.get_by_role("button", name="Create price list").click()
    expect(page.get_by_text("Price list “Standard” created.")).to_be_visible()
    page.get_by_label("Model").select_option("sim-small")
    page.get_by_label(re.compile(r"^Input per 1M tokens")).fill("0.6")
    page.get_by_label(re.compile(r"^Output per 1M tokens")).fill("2.4")
    page.get_by_role("button", name="Set price").click()
    expect(page.get_by_text("Price of sim-small set.")).to_be_visible()
    shot(page, "reseller-price-list")

    page.goto("/o/reseller/tenants/")
    page.get_by_role("link", name="Terms and top-up of Acme Robotics").click()
    page.get_by_label("Price list").select_option(label="Standard (USD)")
    page.get_by_label("Billing mode").select_option("prepaid")
    page.get_by_label("Monthly budget").fill("100")
    page.get_by_role("button", name="Save terms").click()
    expect(page.get_by_text("Terms of Acme Robotics saved.")).to_be_visible()
    page.get_by_label("Amount").fill("50")
    page.get_by_label("Memo").fill("bank transfer 0042")
    page.get_by_role("button", name="Add to balance").click()
    expect(page.get_by_text("50.00 USD added to the balance of Acme Robotics.")).to_be_visible()
    assert page.get_by_test_id("balance").inner_text() == "50.00 USD"
    shot(page, "reseller-terms")
    account = BillingAccount.objects.get(organization__slug="acme-robotics")
    assert (account.mode, account.price_list.name) == ("prepaid", "Standard")

    page.goto("/o/reseller/tenants/")
    page.get_by_role("link", name="Limits of Acme Robotics").click()
    page.get_by_label("Requests per minute").fill("60")
    page.get_by_label("Concurrent requests").fill("4")
    page.get_by_role("button", name="Save limits").click()
    expect(page.get_by_text("Limits of Acme Robotics saved.")).to_be_visible()
    assert page.get_by_test_id("enforced").all_inner_texts() == ["60", "none", "4", "none"]
    shot(page, "reseller-limits")

    page.goto("/o/reseller/tenants/")
    row = page.get_by_role("row", name="Acme Robotics")
    assert "prepaid" in row.inner_text() and "Standard" in row.inner_text()
    assert "50.00 USD" in row.inner_text()
    shot(page, "reseller-tenants")


def test_an_invoice_is_issued_then_downloaded(
    site: str,
    browser: Any,
    market: Any,
    reseller_admin: Any,
    tenant_owner: Any,
    operator_user: Any,
) -> None:
    from billing.services import invoice_generate, rollup_recompute
    from tests.billing.conftest import MARCH, generate_month

    generate_month(market, count=120)
    rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
    draft = invoice_generate(customer=market.tenant, period=MARCH)
    assert draft is not None
    for user in (reseller_admin, tenant_owner, operator_user):
        with_password(user)

    reseller = sign_in(browser, site, "reseller-admin")
    reseller.get_by_role("link", name="Revenue").click()
    reseller.get_by_role("textbox", name="Month").fill("2026-03")
    reseller.get_by_role("button", name="Show").click()
    expect(reseller.get_by_role("row", name="Tenant").first).to_be_visible()
    shot(reseller, "reseller-revenue")
    reseller.get_by_role("link", name="Invoices").click()
    reseller.get_by_role("button", name="Issue invoice to Tenant for 2026-03").click()
    expect(reseller.get_by_text("Invoice RESELLER-2026-000001 issued.")).to_be_visible()
    shot(reseller, "reseller-invoices")

    owner = sign_in(browser, site, "tenant-owner")
    owner.get_by_role("link", name="Billing").click()
    row = owner.get_by_role("row", name="RESELLER-2026-000001")
    assert "issued" in row.inner_text()
    shot(owner, "tenant-billing")
    with owner.expect_download() as pdf_download:
        owner.get_by_role("link", name="PDF of invoice RESELLER-2026-000001 2026-03").click()
    pdf = Path(pdf_download.value.path())
    assert pdf_download.value.suggested_filename == "invoice-RESELLER-2026-000001.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    with owner.expect_download() as csv_download:
        owner.get_by_role("link", name="CSV of invoice RESELLER-2026-000001 2026-03").click()
    lines = Path(csv_download.value.path()).read_text().splitlines()
    draft.refresh_from_db()
    assert lines[-1].startswith("total,RESELLER-2026-000001,2026-03,USD")
    assert lines[-1].endswith(f",{draft.total_micros}")
    owner.get_by_role("link", name="Budget").click()
    owner.get_by_label("Monthly budget").fill("25")
    owner.get_by_role("button", name="Save budget").click()
    expect(owner.get_by_text("Budget and alerts saved.")).to_be_visible()
    shot(owner, "tenant-budget")

    operator = sign_in(browser, site, "operator")
    operator.get_by_role("link", name="Usage log").click()
    operator.get_by_label("Tenant").select_option("tenant")
    operator.get_by_label("Status").fill("ok")
    operator.get_by_role("button", name="Apply").click()
    assert operator.locator("tr[data-request]").count() > 0
    shot(operator, "operator-usage-log")
    operator.get_by_role("link", name="Invoices").click()
    expect(operator.get_by_role("row", name="RESELLER-2026-000001")).to_be_visible()
    shot(operator, "operator-invoices")


def test_tenant_owner_creates_copies_and_uses_a_key_then_sees_the_request(
    site: str, simulator: str, browser: Any, tenant_owner: Any, tenant_org: Organization
) -> None:
    from decimal import Decimal

    from billing.services import billing_account_create, model_price_set, price_list_create
    from portal import services

    channel = services.channel_create(
        name="Simulator",
        base_url=f"{simulator}/sim/key={SIM_KEY}/v1",
        secret=SIM_KEY,
        models=["sim-small"],
        actor="test",
    )
    # The relay serves nothing without a price: wholesale, and the reseller's markup on it.
    wholesale = price_list_create(
        owner=tenant_org.parent.parent, name="Wholesale", actor="test", is_default=True
    )
    model_price_set(
        price_list=wholesale,
        model=channel.served.get().model,
        input_per_mtok=1_000_000,
        output_per_mtok=2_000_000,
        actor="test",
    )
    price_list_create(
        owner=tenant_org.parent,
        name="Retail",
        actor="test",
        is_default=True,
        markup_percent=Decimal(20),
    )
    # Explicit terms: a new tenant is prepaid with nothing to spend until given some.
    billing_account_create(organization=tenant_org, mode="postpaid", actor="test")
    with_password(tenant_owner)
    page = sign_in(browser, site, "tenant-owner")
    assert page.url.endswith("/o/tenant/keys/")
    expect(page.get_by_text("No keys yet.")).to_be_visible()
    shot(page, "tenant-keys-empty")

    page.get_by_label("Name").fill("production")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("API key secret").input_value()
    assert secret.startswith("sk-tg-")
    page.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "tenant-key-created")
    assert ApiKey.objects.get().matches(secret)

    reply = httpx.post(
        f"{site}/v1/chat/completions",
        headers={"Authorization": f"Bearer {secret}"},
        json={"model": "sim-small", "messages": [{"role": "user", "content": "hello"}]},
        timeout=20,
    )
    assert reply.status_code == 200, reply.text
    assert wait_for_usage(api_key__name="production", status_code=200)

    page.get_by_role("link", name="Usage").click()
    log = page.get_by_role("row", name="production")
    assert "sim-small" in log.inner_text() and "200" in log.inner_text()
    assert page.locator("figure.chart svg rect").count() >= 1
    shot(page, "tenant-usage")
    page.get_by_role("link", name="Quick start").click()
    assert page.get_by_label("Base URL").input_value() == f"{site}/v1"
    page.get_by_role("tab", name="curl").click()
    expect(page.get_by_text("/chat/completions")).to_be_visible()
    shot(page, "tenant-quickstart")
    page.get_by_role("link", name="API keys").click()
    shot(page, "tenant-keys")


def test_pages_fit_a_phone_screen(
    site: str, browser: Any, tenant_member: Any, tenant_org: Organization
) -> None:
    with_password(tenant_member)
    make_member("colleague", tenant_org, Membership.Role.OWNER)
    context = browser.new_context(viewport={"width": 390, "height": 844}, base_url=site)
    page = context.new_page()
    page.goto("/account/login/")
    page.get_by_label("Username").fill("tenant-member")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    for path in ("/o/tenant/keys/", "/o/tenant/usage/", "/o/tenant/members/"):
        page.goto(path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, (path, overflow)
    shot(page, "phone-members")


def test_channel_form_shows_the_fields_of_the_chosen_provider(
    site: str, browser: Any, operator_user: Any
) -> None:
    with_password(operator_user)
    page = sign_in(browser, site, "operator")
    page.goto("/operator/channels/new/")
    expect(page.get_by_label("Upstream API key")).to_be_visible()
    assert not page.get_by_label("Secret access key").is_visible()
    page.get_by_label("Provider type").select_option("bedrock")
    expect(page.get_by_label("Access key id")).to_be_visible()
    expect(page.get_by_label("Secret access key")).to_be_visible()
    expect(page.get_by_label("Region")).to_be_visible()
    assert not page.get_by_label("Upstream API key").is_visible()
    assert not page.get_by_label("Service-account JSON key").is_visible()
    page.get_by_label("Provider type").select_option("vertex")
    expect(page.get_by_label("Service-account JSON key")).to_be_visible()
    assert not page.get_by_label("Region").is_visible()
    page.get_by_label("Provider type").select_option("azure")
    expect(page.get_by_label("Deployments")).to_be_visible()
    expect(page.get_by_label("Upstream API key")).to_be_visible()
    shot(page, "operator-channel-form-azure")
