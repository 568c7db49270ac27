"""The authorisation matrix: every route of the URL conf (dashboard, management API, Django
admin) against every role, with the expected outcome written out below.

Roles: operator (staff), reseller admin, tenant owner / admin / member / billing, two
outsiders (the owner of another tenant under another reseller, and the admin of that other
reseller) and anonymous. The route list comes from ``get_resolver()``; a route without an
entry here fails ``test_every_route_is_in_the_matrix``, so a new view must be added.

Beyond status codes: outsiders never see the tenant's data, no response anywhere carries a
key, token, channel secret or TOTP seed (nor a key digest), a member cannot make anyone
owner, an admin cannot demote or remove an owner, an admin cannot read another person's
token (not even an operator can), a read-only token cannot write, and a refused write
changes nothing (keys, members, channels, tokens, price lists and prices, accounts,
balances, invoices, redemption codes, TOTP devices).

Card payments: a customer's billing people pay (top-up, invoice link); a seller's
managers connect its Stripe account, whose keys never show; Stripe's webhook refuses any
body it did not sign, whoever sends it. Single sign-on: an organisation's provider is
its owners' (and its seller's) to set; its client secret never shows.

Money: a tenant's terms and top-ups are set from above it (its reseller, operators), never
by its own people, who cannot lift their reseller's budget or hard stop either (only add a
lower budget of their own); price lists, codes, revenue and invoices issued are a reseller's own
pages, which its tenants' people cannot even see; an invoice is its customer's billing
people's (once issued) and its issuer's. Plans are their seller's to define; a tenant's
billing people (and its seller) subscribe it; every insider sees what is left.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pytest
from django.contrib import admin
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone
from django_otp.plugins.otp_totp.models import TOTPDevice
from rest_framework.test import APIClient

from billing import services as billing
from billing.models import (
    BillingAccount,
    Invoice,
    InvoiceLine,
    LedgerEntry,
    ModelPrice,
    Payment,
    Plan,
    PriceList,
    RedemptionCode,
    StripeAccount,
    StripeEvent,
    Subscription,
    UsageEvent,
)
from portal import services, tokens
from portal.models import (
    ApiKey,
    AuditEntry,
    Channel,
    Invitation,
    Membership,
    Organization,
    SsoProvider,
)
from portal.models import PersonalAccessToken as Token
from portal.services.sso import sso_provider_save
from tests.conftest import make_member, make_user

pytestmark = pytest.mark.django_db

ROLES = (
    "anonymous",
    "operator",
    "reseller_admin",
    "other_reseller_admin",
    "tenant_owner",
    "tenant_admin",
    "tenant_member",
    "tenant_billing",
    "outsider",
)
TENANT_PEOPLE = ("tenant_owner", "tenant_admin", "tenant_member", "tenant_billing")
OUTSIDERS = ("other_reseller_admin", "outsider")
OURS = "ours-matrix-51c7"  # only in tenant_org's rows
THEIRS = "theirs-matrix-0b3e"  # only in other_tenant_org's rows
CHANNEL_SECRET = "sk-upstream-matrix-SECRET-93f1"
STRIPE_KEY = "sk_test_matrix_SECRET_4be2"
STRIPE_WEBHOOK_SECRET = "whsec_matrix_SECRET_77a0"
SSO_CLIENT_SECRET = "sso-client-matrix-SECRET-c30e"


def row(default: int, **by_role: int) -> dict[str, int]:
    """Expected status for every role: ``default`` unless named."""
    unknown = set(by_role) - set(ROLES)
    assert not unknown, unknown
    return {role: by_role.get(role, default) for role in ROLES}


SIGNED_IN = 200
LOGIN = 302  # the dashboard's login_required redirect

# --- The dashboard --------------------------------------------------------------------------
# Who may open a tenant page: operators, the tenant's reseller and its own people.
TENANT_INSIDERS = {"operator": 200, "reseller_admin": 200, "tenant_owner": 200, "tenant_admin": 200}
OUT = {"other_reseller_admin": 404, "outsider": 404, "anonymous": LOGIN}


def tenant_page(member: int, billing: int) -> dict[str, int]:
    return row(200, **OUT, tenant_member=member, tenant_billing=billing)


OPERATOR_ONLY = row(403, operator=200, anonymous=LOGIN)
OPERATOR_ONLY_POST = row(403, operator=302, anonymous=LOGIN)
POST_ONLY = row(405, anonymous=LOGIN)  # a GET of a POST-only action, before any lookup
# What a seller sets for a customer (terms, top-ups): never a role inside the customer.
SELLER_ONLY = row(403, **OUT, operator=200, reseller_admin=200)
SELLER_ONLY_POST = row(403, **OUT, operator=302, reseller_admin=302)
# A reseller's own pages: its admins and operators; its tenants' people cannot see it.
RESELLER_PAGE = row(404, operator=200, reseller_admin=200, anonymous=LOGIN)
RESELLER_PAGE_POST = row(404, operator=302, reseller_admin=302, anonymous=LOGIN)
# Changing another member of the tenant: its managers, the reseller and operators.
MANAGE_POST = row(302, **OUT, tenant_member=403, tenant_billing=403)

# name → (arguments, {method: expected by role})
DASHBOARD: dict[str, tuple[str, dict[str, dict[str, int]]]] = {
    "home": ("none", {"GET": row(302)}),
    "models_public": ("none", {"GET": row(200)}),
    "login": ("none", {"GET": row(302, anonymous=200)}),  # signed in: sent on
    "logout": ("none", {"GET": row(405)}),
    "password_change": ("none", {"GET": row(200, anonymous=LOGIN)}),
    "password_change_done": ("none", {"GET": row(200, anonymous=LOGIN)}),
    "password_reset": ("none", {"GET": row(200)}),
    "password_reset_done": ("none", {"GET": row(200)}),
    "password_reset_confirm": ("reset", {"GET": row(200)}),
    "password_reset_complete": ("none", {"GET": row(200)}),
    "account_tokens": ("none", {"GET": row(200, anonymous=LOGIN)}),
    # Only the token's own user may revoke it; to anyone else it does not exist.
    "token_revoke": (
        "owner_token",
        {"GET": row(405, anonymous=LOGIN), "POST": row(404, tenant_owner=302, anonymous=LOGIN)},
    ),
    "org": ("tenant", {"GET": tenant_page(200, 200)}),
    "keys": ("tenant", {"GET": tenant_page(200, 403)}),
    # The catalog with the tenant's own prices: anyone in the tenant, its reseller, operators.
    "tenant_models": ("tenant", {"GET": tenant_page(200, 200)}),
    # The owner's key: a member sees only their own keys, so it does not exist for them.
    "key_revoke": (
        "owner_key",
        {
            "GET": row(405, anonymous=LOGIN),
            "POST": row(302, **OUT, tenant_member=404, tenant_billing=403),
        },
    ),
    "usage": ("tenant", {"GET": tenant_page(200, 403)}),
    "usage_export": ("tenant", {"GET": tenant_page(200, 403)}),
    "quickstart": ("tenant", {"GET": tenant_page(200, 403)}),
    # Billing people see money, not who works here (issue 11, finding 8e).
    "members": ("tenant", {"GET": tenant_page(200, 403)}),
    # A fresh plain member for every role that may change or remove one (see args_for).
    "member_role": ("new_membership", {"GET": POST_ONLY, "POST": MANAGE_POST}),
    "member_remove": ("new_membership", {"GET": POST_ONLY, "POST": MANAGE_POST}),
    # Invitations by e-mail: the tenant's managers, its reseller and operators.
    "invite": ("tenant", {"GET": POST_ONLY, "POST": MANAGE_POST}),
    "invitation_revoke": ("invitation", {"GET": POST_ONLY, "POST": MANAGE_POST}),
    # The mailed link: the token is the credential; anyone holding it sees the offer.
    "invitation_accept": ("invite_token", {"GET": row(200)}),
    "billing": ("tenant", {"GET": tenant_page(403, 200)}),
    # Each role redeems a code of its own (see redemption_code): anyone with billing rights.
    "redeem": ("tenant", {"GET": POST_ONLY, "POST": row(302, **OUT, tenant_member=403)}),
    # Billing people see the budget; changing it takes MANAGE.
    "budget": ("tenant", {"GET": tenant_page(403, 200), "POST": MANAGE_POST}),
    "terms": ("tenant", {"GET": SELLER_ONLY, "POST": SELLER_ONLY_POST}),
    "tenant_limits": ("tenant", {"GET": SELLER_ONLY, "POST": SELLER_ONLY_POST}),
    "tenant_status": ("tenant", {"GET": POST_ONLY, "POST": SELLER_ONLY_POST}),
    "topup": ("tenant", {"GET": POST_ONLY, "POST": SELLER_ONLY_POST}),
    "price_lists": ("reseller", {"GET": RESELLER_PAGE, "POST": RESELLER_PAGE_POST}),
    "price_list": ("price_list", {"GET": RESELLER_PAGE, "POST": RESELLER_PAGE_POST}),
    # Plans: a seller's page; a tenant's plan page shows every insider what is left, and
    # subscribing (it costs the month's fee) takes billing rights.
    "plans": ("reseller", {"GET": RESELLER_PAGE, "POST": RESELLER_PAGE_POST}),
    "plan": ("tenant", {"GET": tenant_page(200, 200), "POST": row(302, **OUT, tenant_member=403)}),
    "operator_plans": ("none", {"GET": OPERATOR_ONLY_POST}),
    "revenue": ("reseller", {"GET": RESELLER_PAGE}),
    # A new code is shown once on a page of its own (200), not behind a redirect.
    "codes": ("reseller", {"GET": RESELLER_PAGE, "POST": RESELLER_PAGE}),
    "invoices_issued": ("reseller", {"GET": RESELLER_PAGE}),
    # Drafting this month's invoices now: the issuer's managers and operators.
    "invoices_draft_now": ("reseller", {"GET": POST_ONLY, "POST": RESELLER_PAGE_POST}),
    # The tenant's issued invoice: its billing people (owner, admin, billing) and its issuer.
    "invoice_download": ("invoice_csv", {"GET": tenant_page(403, 200)}),
    # Issue / paid / void: the issuer's managers only, never the customer.
    "invoice_action": (
        "invoice_paid",
        {"GET": POST_ONLY, "POST": row(403, **OUT, operator=302, reseller_admin=302)},
    ),
    "org_audit": ("tenant", {"GET": tenant_page(403, 403)}),
    # Card payments: the customer's billing people. The world's reseller takes no cards, so
    # an allowed top-up is refused (400, nothing written) and a payment link sends back.
    "payments": (
        "tenant",
        {"GET": tenant_page(403, 200), "POST": row(400, **OUT, tenant_member=403)},
    ),
    "invoice_pay": ("invoice_pay", {"GET": POST_ONLY, "POST": row(302, **OUT, tenant_member=403)}),
    # A seller's Stripe keys: its managers and operators; the webhook answers Stripe alone
    # (no session needed, and an unsigned body is refused whoever sends it).
    "seller_stripe": ("reseller", {"GET": RESELLER_PAGE, "POST": RESELLER_PAGE_POST}),
    "operator_stripe": ("none", {"GET": OPERATOR_ONLY_POST}),
    "stripe_webhook": ("stripe_webhook", {"GET": row(405), "POST": row(400)}),
    # Single sign-on: choosing a provider is public; a callback without a code fails back to
    # sign-in; the world's provider is unreachable (discard port), so its start page too.
    "sso_start": ("none", {"GET": row(200)}),
    "sso_callback": ("none", {"GET": row(302)}),
    "sso_login": ("sso_key", {"GET": row(302)}),
    # An organisation's provider: its owners, its seller and operators.
    "sso_settings": (
        "tenant",
        {
            "GET": row(403, **OUT, operator=200, reseller_admin=200, tenant_owner=200),
            "POST": row(403, **OUT, operator=302, reseller_admin=302, tenant_owner=302),
        },
    ),
    # A reseller's tenant list; the people of its tenants cannot see the reseller at all.
    "tenants": (
        "reseller",
        {"GET": row(404, operator=200, reseller_admin=200, anonymous=LOGIN)},
    ),
    "operator": ("none", {"GET": OPERATOR_ONLY}),
    "channels": ("none", {"GET": OPERATOR_ONLY}),
    "channel_create": ("none", {"GET": OPERATOR_ONLY}),
    "channel_edit": ("channel", {"GET": OPERATOR_ONLY}),
    "channel_status": ("channel", {"POST": OPERATOR_ONLY_POST}),
    "channel_test": ("channel", {"POST": OPERATOR_ONLY_POST}),
    "channel_discover": ("channel", {"POST": OPERATOR_ONLY}),
    "catalog": ("none", {"GET": OPERATOR_ONLY}),
    "operator_orgs": ("none", {"GET": OPERATOR_ONLY}),
    "operator_audit": ("none", {"GET": OPERATOR_ONLY}),
    "usage_log": ("none", {"GET": OPERATOR_ONLY}),
    "operator_invoices": ("none", {"GET": OPERATOR_ONLY}),
    "operator_invoices_draft_now": ("none", {"GET": POST_ONLY, "POST": OPERATOR_ONLY_POST}),
    # Shortcuts to the platform organisation's own pages.
    "operator_price_lists": ("none", {"GET": OPERATOR_ONLY_POST}),
    "operator_codes": ("none", {"GET": OPERATOR_ONLY_POST}),
    # Staff two-factor: enrolment is staff-only; the code form sends anyone without an
    # enrolled device on (a refused "start" must create no device).
    "two_factor_setup": ("none", {"GET": OPERATOR_ONLY, "POST": OPERATOR_ONLY}),
    "two_factor_verify": ("none", {"GET": row(302)}),
}

# --- The management API ---------------------------------------------------------------------
ANON = 401  # no credentials: a 401 with WWW-Authenticate
API_ANY = row(200, anonymous=ANON)
API_OPERATOR = row(403, operator=200, anonymous=ANON)
API_TENANT = row(200, other_reseller_admin=404, outsider=404, anonymous=ANON)
NOT_ALLOWED = row(405, anonymous=ANON)
# Writes with a read-write token of each role (denied ones must change nothing).
OPERATOR_WRITE = row(403, operator=200, anonymous=ANON)
OUTSIDERS_404 = dict.fromkeys(OUTSIDERS, 404)
# Balance, ledger and the tenant's invoices: billing rights (not a plain member's).
API_TENANT_BILLING = row(200, tenant_member=403, **OUTSIDERS_404, anonymous=ANON)
# A reseller's price lists: the tenant's people cannot see the reseller at all.
API_RESELLER = row(404, operator=200, reseller_admin=200, anonymous=ANON)

API: dict[str, tuple[str, dict[str, dict[str, int]]]] = {
    "api:api-root": ("none", {"GET": API_ANY}),
    "api:schema": ("none", {"GET": row(200)}),
    # The schema and its reference page are public, as a provider's API docs are: no data.
    "api:docs": ("none", {"GET": row(200)}),
    "api:me": ("none", {"GET": API_ANY, "PATCH": NOT_ALLOWED, "PUT": NOT_ALLOWED}),
    "api:organization-list": (
        "none",
        {"GET": API_ANY, "POST": row(404, operator=201, reseller_admin=201, anonymous=ANON)},
    ),
    "api:organization-detail": (
        "tenant_slug",
        {"GET": API_TENANT, "PATCH": row(405, anonymous=ANON), "DELETE": row(405, anonymous=ANON)},
    ),
    "api:organization-members": (
        "tenant_slug",
        {
            # Names and e-mails: not for billing people (issue 11, finding 8e).
            "GET": row(200, tenant_billing=403, **OUTSIDERS_404, anonymous=ANON),
            "POST": row(
                201,
                tenant_member=403,
                tenant_billing=403,
                **dict.fromkeys(OUTSIDERS, 404),
                anonymous=ANON,
            ),
        },
    ),
    # Another member of the tenant, fresh for every role allowed to change or remove one.
    "api:organization-change-member": (
        "new_membership",
        {
            "PATCH": row(
                200, tenant_member=403, tenant_billing=403, **OUTSIDERS_404, anonymous=ANON
            ),
            "DELETE": row(
                204, tenant_member=403, tenant_billing=403, **OUTSIDERS_404, anonymous=ANON
            ),
        },
    ),
    # Invitations: managers of the organisation only (addresses are people's data).
    "api:invitations": (
        "tenant_slug",
        {
            "GET": row(200, tenant_member=403, tenant_billing=403, **OUTSIDERS_404, anonymous=ANON),
            "POST": row(
                201, tenant_member=403, tenant_billing=403, **OUTSIDERS_404, anonymous=ANON
            ),
        },
    ),
    "api:invitation-detail": (
        "invitation",
        {
            "DELETE": row(
                204, tenant_member=403, tenant_billing=403, **OUTSIDERS_404, anonymous=ANON
            )
        },
    ),
    "api:tenant-prices": ("tenant_slug", {"GET": row(200, **OUTSIDERS_404, anonymous=ANON)}),
    "api:balance": ("tenant_slug", {"GET": API_TENANT_BILLING}),
    # A tenant's limits: every insider reads what is enforced; only its seller sets them.
    "api:organization-limits": (
        "tenant_slug",
        {
            "GET": row(200, **OUTSIDERS_404, anonymous=ANON),
            "PATCH": row(403, operator=200, reseller_admin=200, **OUTSIDERS_404, anonymous=ANON),
        },
    ),
    # Deactivating a tenant (its keys refused) is its seller's, never its own people's.
    "api:organization-deactivate": (
        "tenant_slug",
        {"POST": row(403, operator=200, reseller_admin=200, **OUTSIDERS_404, anonymous=ANON)},
    ),
    "api:organization-reactivate": (
        "tenant_slug",
        {"POST": row(403, operator=200, reseller_admin=200, **OUTSIDERS_404, anonymous=ANON)},
    ),
    # Top-ups are read with billing rights and made by the seller only.
    "api:topups": (
        "tenant_slug",
        {
            "GET": API_TENANT_BILLING,
            "POST": row(403, operator=201, reseller_admin=201, **OUTSIDERS_404, anonymous=ANON),
        },
    ),
    # Lists are filtered to what the caller manages (checked for foreign rows below).
    "api:price-list-list": (
        "none",
        {"GET": API_ANY, "POST": row(404, operator=201, reseller_admin=201, anonymous=ANON)},
    ),
    "api:price-list-detail": ("price_list_pk", {"GET": API_RESELLER}),
    "api:price-list-prices": (
        "price_list_pk",
        {"POST": row(404, operator=201, reseller_admin=201, anonymous=ANON)},
    ),
    "api:invoice-list": ("none", {"GET": API_ANY}),
    # Plans: listed for whoever sells or may buy them (foreign rows checked below).
    "api:plan-list": (
        "none",
        {"GET": API_ANY, "POST": row(404, operator=201, reseller_admin=201, anonymous=ANON)},
    ),
    "api:subscription": (
        "tenant_slug",
        {
            "GET": API_TENANT,
            "POST": row(201, tenant_member=403, **OUTSIDERS_404, anonymous=ANON),
            "DELETE": row(204, tenant_member=403, **OUTSIDERS_404, anonymous=ANON),
        },
    ),
    "api:invoice-detail": ("invoice_pk", {"GET": API_TENANT_BILLING}),
    "api:invoice-pdf": ("invoice_pk", {"GET": API_TENANT_BILLING}),
    "api:invoice-csv": ("invoice_pk", {"GET": API_TENANT_BILLING}),
    "api:key-list": (
        "none",
        {
            "GET": API_ANY,
            "POST": row(201, tenant_billing=403, **dict.fromkeys(OUTSIDERS, 404), anonymous=ANON),
        },
    ),
    "api:key-detail": (
        "owner_key_pk",
        {
            "GET": row(
                200,
                tenant_member=404,
                tenant_billing=403,
                **dict.fromkeys(OUTSIDERS, 404),
                anonymous=ANON,
            ),
            "PATCH": row(405, anonymous=ANON),
            "DELETE": row(405, anonymous=ANON),
        },
    ),
    "api:key-revoke": (
        "owner_key_pk",
        {
            "GET": NOT_ALLOWED,
            "POST": row(
                200,
                tenant_member=404,
                tenant_billing=403,
                **dict.fromkeys(OUTSIDERS, 404),
                anonymous=ANON,
            ),
        },
    ),
    # Tokens: each person's own. Nobody, operators included, reads another's token; and a
    # token cannot mint or revoke tokens (a leaked one must not outlive its revocation).
    "api:token-list": ("none", {"GET": API_ANY, "POST": row(403, anonymous=ANON)}),
    "api:token-detail": (
        "owner_token_pk",
        # (a token may not delete: refused before the method is even considered)
        {"GET": row(404, tenant_owner=200, anonymous=ANON), "DELETE": row(403, anonymous=ANON)},
    ),
    "api:token-revoke": (
        "owner_token_pk",
        {"GET": NOT_ALLOWED, "POST": row(403, anonymous=ANON)},
    ),
    "api:channel-list": (
        "none",
        {"GET": API_OPERATOR, "POST": row(403, operator=201, anonymous=ANON)},
    ),
    "api:channel-detail": ("channel_pk", {"GET": API_OPERATOR, "PATCH": OPERATOR_WRITE}),
    "api:channel-enable": (
        "channel_pk",
        {"GET": row(403, operator=405, anonymous=ANON), "POST": OPERATOR_WRITE},
    ),
    "api:channel-disable": ("channel_pk", {"POST": OPERATOR_WRITE}),
    "api:channel-add-models": ("channel_pk", {"POST": OPERATOR_WRITE}),
    "api:channel-check": ("channel_pk", {"POST": OPERATOR_WRITE}),
    "api:channel-discover": ("channel_pk", {"POST": OPERATOR_WRITE}),
    "api:model-list": ("none", {"GET": API_ANY, "POST": row(403, operator=201, anonymous=ANON)}),
    "api:model-detail": (
        "model_id",
        {"GET": API_ANY, "PATCH": row(403, operator=405, anonymous=ANON)},
    ),
    "api:usage-list": ("none", {"GET": API_ANY}),
    "api:audit-list": ("none", {"GET": API_ANY}),
}

# --- The Django admin -----------------------------------------------------------------------
# Staff only: anyone else is sent to the admin's sign-in page. Kinds of admin URL below; an
# admin URL of another kind (a custom admin view) fails the coverage test until added.
ADMIN_LOGIN = 302
ADMIN: dict[str, dict[str, int]] = {
    "index": row(ADMIN_LOGIN, operator=200),
    "app_list": row(ADMIN_LOGIN, operator=200),
    "login": row(200, operator=302),  # a signed-in operator is sent on to the index
    "logout": row(ADMIN_LOGIN, operator=405),  # sign-out is a POST
    "password_change": row(ADMIN_LOGIN, operator=200),
    "password_change_done": row(ADMIN_LOGIN, operator=200),
    "user_password": row(ADMIN_LOGIN, operator=200),  # set a user's password
    "jsi18n": row(ADMIN_LOGIN, operator=200),
    "autocomplete": row(ADMIN_LOGIN, operator=403),  # without its parameters
    "view_on_site": row(ADMIN_LOGIN, operator=404),  # no such object
    "catch_all": row(ADMIN_LOGIN, operator=404),
    "changelist": row(ADMIN_LOGIN, operator=200),
    "add": row(ADMIN_LOGIN, operator=200),
    # Object pages of an existing row (200), or of a model with no row yet (302 to the list).
    "change": row(ADMIN_LOGIN, operator=200),
    "history": row(ADMIN_LOGIN, operator=200),
    "delete": row(ADMIN_LOGIN, operator=200),
    "object_redirect": row(ADMIN_LOGIN, operator=302),  # /admin/app/model/<pk>/ → .../change/
    # django-otp's TOTP device pages showing a device's seed (its setup page and QR code):
    # refused even to operators (OTP_ADMIN_HIDE_SENSITIVE_DATA), as another person's token is.
    "totp_secret": row(ADMIN_LOGIN, operator=403),
}
TOTP_SECRET_ROUTES = ("admin:otp_totp_totpdevice_config", "admin:otp_totp_totpdevice_qrcode")
# Models whose admin refuses adding or deleting by hand (their rows come from the system).
ADMIN_READ_ONLY = {"add": 403, "delete": 403}


# --- Enumerating the URL conf ---------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    name: str  # "namespace:name", or for unnamed admin routes the admin kind
    pattern: str
    area: str  # dashboard, api, admin


def routes() -> Iterator[Route]:
    def walk(patterns: list[Any], prefix: str, namespace: str) -> Iterator[Route]:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                inner = namespace + (f"{pattern.namespace}:" if pattern.namespace else "")
                yield from walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
            elif isinstance(pattern, URLPattern):
                full = prefix + str(pattern.pattern)
                area = (
                    "admin"
                    if full.startswith("admin/")
                    else ("api" if full.startswith("api/") else "dashboard")
                )
                yield Route(namespace + (pattern.name or ""), full, area)

    yield from walk(get_resolver().url_patterns, "", "")


ADMIN_MODEL_NAME = re.compile(
    r"^admin:([a-z0-9_]+?)_([a-z0-9]+)_(changelist|add|history|delete|change)$"
)


def admin_kind(route: Route) -> str | None:
    if route.name == "admin:auth_user_password_change":
        return "user_password"
    if route.name in TOTP_SECRET_ROUTES:
        return "totp_secret"
    match = ADMIN_MODEL_NAME.match(route.name)
    if match:
        return match.group(3)
    if route.name == "admin:" and route.pattern.endswith("<path:object_id>/"):
        return "object_redirect"
    if route.name == "admin:" and "(?P<url>.*)" in route.pattern:
        return "catch_all"
    name = route.name.removeprefix("admin:")
    return name if name in ADMIN else None


def test_every_route_is_in_the_matrix() -> None:
    missing, seen = [], set()
    for route in routes():
        if route.area == "admin":
            if admin_kind(route) is None:
                missing.append(f"{route.name or '?'} {route.pattern}")
            continue
        table = API if route.area == "api" else DASHBOARD
        seen.add(route.name)
        if route.name not in table:
            missing.append(f"{route.name or '?'} {route.pattern}")
    assert not missing, "routes missing from the authorisation matrix:\n" + "\n".join(missing)
    assert not (set(DASHBOARD) | set(API)) - seen, "matrix entries for routes that do not exist"


def test_every_api_operation_of_the_schema_is_in_the_matrix() -> None:
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    by_path = {}
    for route in routes():
        if route.area == "api" and route.name in API:
            path = "/" + re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", route.pattern)
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)  # path() converters
            by_path[path.replace("^", "").replace("$", "")] = route.name
    for path, item in schema["paths"].items():
        name = by_path.get(path.replace("{id}", "{pk}"))
        assert name is not None, path
        for method in item:
            if method in ("get", "post", "put", "patch", "delete"):
                assert method.upper() in API[name][1], (method, path)


# --- The world ------------------------------------------------------------------------------


@pytest.fixture
def world(
    operator_user: Any,
    reseller_admin: Any,
    tenant_owner: Any,
    tenant_member: Any,
    outsider: Any,
    tenant_org: Organization,
    other_tenant_org: Organization,
    other_reseller_org: Organization,
    reseller_org: Organization,
) -> dict[str, Any]:
    people = {
        "operator": operator_user,
        "reseller_admin": reseller_admin,
        "other_reseller_admin": make_member(
            "other-reseller-admin", other_reseller_org, Membership.Role.ADMIN
        ),
        "tenant_owner": tenant_owner,
        "tenant_admin": make_member("tenant-admin", tenant_org, Membership.Role.ADMIN),
        "tenant_member": tenant_member,
        "tenant_billing": make_member("tenant-billing", tenant_org, Membership.Role.BILLING),
        "outsider": outsider,
    }
    owner_key, owner_secret = services.api_key_create(
        tenant=tenant_org, name=f"key-{OURS}", actor=tenant_owner
    )
    _, member_secret = services.api_key_create(
        tenant=tenant_org, name=f"member-key-{OURS}", actor=tenant_member
    )
    theirs, their_secret = services.api_key_create(
        tenant=other_tenant_org, name=f"key-{THEIRS}", actor=outsider
    )
    for key in (owner_key, theirs):
        UsageEvent.objects.create(
            request_id=uuid.uuid4().hex,
            created_at=timezone.now() - timedelta(hours=1),
            tenant=key.tenant,
            api_key=key,
            model=f"model-{OURS if key == owner_key else THEIRS}",
            prompt_tokens=5,
            completion_tokens=3,
            status_code=200,
            total_latency_ms=10,
        )
    plain_member = make_member(f"user-{OURS}", tenant_org, Membership.Role.MEMBER)
    plain_member_id = Membership.objects.get(user=plain_member).pk
    make_member(f"user-{THEIRS}", other_tenant_org, Membership.Role.MEMBER)
    # Money: each reseller's price list, an issued invoice to each tenant, and an
    # operator's enrolment begun (an unconfirmed device, so no code is asked for yet).
    ours_list = PriceList.objects.create(owner=reseller_org, name=f"list-{OURS}", is_default=True)
    PriceList.objects.create(owner=other_reseller_org, name=f"list-{THEIRS}", is_default=True)
    invoice = _issued_invoice(tenant_org, OURS)
    plan = billing.plan_create(
        seller=reseller_org, name=f"plan-{OURS}", monthly_fee_micros=1, actor="test"
    )
    billing.plan_create(
        seller=other_reseller_org, name=f"plan-{THEIRS}", monthly_fee_micros=1, actor="test"
    )
    _issued_invoice(other_tenant_org, THEIRS)
    # The other reseller takes cards: its Stripe keys must never show anywhere.
    stripe_account = StripeAccount(seller=other_reseller_org)
    stripe_account.secret_key = STRIPE_KEY
    stripe_account.webhook_secret = STRIPE_WEBHOOK_SECRET
    stripe_account.save()
    sso_provider_save(
        organization=other_tenant_org,
        issuer="http://127.0.0.1:9",  # the discard port: nothing answers
        client_id="matrix-client",
        client_secret=SSO_CLIENT_SECRET,
        allowed_domains=["other.test"],
        role_claim="groups",
        role_map={"staff": "member"},
        enabled=True,
        actor="test",
    )
    totp_device = TOTPDevice.objects.create(
        user=operator_user, name="matrix pending", confirmed=False
    )
    # (Its link's holder sees the address it was sent to, whoever they are: no marker.)
    invite_tokens: list[str] = []
    invitation = services.invitation_create(
        organization=tenant_org,
        email="invitee@example.test",
        role=Membership.Role.MEMBER,
        actor=tenant_owner,
        link=lambda token: invite_tokens.append(token) or f"http://testserver/invite/{token}/",
    )
    services.invitation_create(
        organization=other_tenant_org,
        email=f"invitee-{THEIRS}@example.test",
        role=Membership.Role.MEMBER,
        actor=outsider,
        link=str,
    )
    channel = services.channel_create(
        name="Upstream",
        base_url="http://127.0.0.1:9/v1",  # the discard port: a test fails at once
        secret=CHANNEL_SECRET,
        models=["sim-small"],
        actor=operator_user,
    )
    # Every person gets a read-write token for the API; the owner also a read-only one.
    api_tokens = {}
    for role, user in people.items():
        token, secret = tokens.personal_access_token_create(
            user=user, name=f"rw-{role}", scope=Token.Scope.READ_WRITE, actor=user
        )
        api_tokens[role] = secret
        if role == "tenant_owner":
            owner_token = token
    _, read_only = tokens.personal_access_token_create(
        user=operator_user, name="ro", scope=Token.Scope.READ, actor=operator_user
    )
    secrets = [owner_secret, member_secret, their_secret, CHANNEL_SECRET, read_only]
    secrets += [STRIPE_KEY, STRIPE_WEBHOOK_SECRET, SSO_CLIENT_SECRET]
    secrets.append(totp_device.key)  # the seed, as hex: never shown back after enrolment
    _, code_text = billing.redemption_code_create(
        issuer=reseller_org, amount_micros=2_000_000, currency="USD", actor=reseller_admin
    )
    secrets.append(code_text)  # shown once, when issued
    secrets += list(api_tokens.values())
    digests = list(ApiKey.objects.values_list("digest", flat=True))
    digests += list(Token.objects.values_list("digest", flat=True))
    digests += list(RedemptionCode.objects.values_list("digest", flat=True))
    digests += list(Invitation.objects.values_list("digest", flat=True))
    return {
        "people": people,
        "tokens": api_tokens,
        "read_only_token": read_only,
        "secrets": secrets,
        "digests": digests,
        "args": {
            "none": {},
            "tenant": {"slug": "tenant"},
            "reseller": {"slug": reseller_org.slug},
            "owner_key": {"slug": "tenant", "key_id": owner_key.pk},
            "owner_token": {"token_id": owner_token.pk},
            "channel": {"channel_id": channel.pk},
            "reset": {"uidb64": "MQ", "token": "set-password"},
            "tenant_slug": {"slug": "tenant"},
            "owner_key_pk": {"pk": owner_key.pk},
            "owner_token_pk": {"pk": owner_token.pk},
            "channel_pk": {"pk": channel.pk},
            "model_id": {"public_id": "sim-small"},
            "new_membership": {"slug": "tenant", "membership_id": plain_member_id},
            "price_list": {"slug": "reseller", "list_id": ours_list.pk},
            "invoice_csv": {"invoice_id": invoice.pk, "fmt": "csv"},
            "invoice_paid": {"invoice_id": invoice.pk, "action": "paid"},
            "invoice_pay": {"slug": "tenant", "invoice_id": invoice.pk},
            "stripe_webhook": {"account_id": stripe_account.public_id},
            "sso_key": {"key": "other-tenant"},
            "price_list_pk": {"pk": ours_list.pk},
            "invoice_pk": {"pk": invoice.pk},
            "invitation": {"slug": "tenant", "invitation_id": invitation.pk},
            "invite_token": {"token": invite_tokens[0]},
        },
        "plan": plan,
        "reseller": reseller_org,
        "tenant": tenant_org,
        "totp_device": totp_device,
    }


def _issued_invoice(customer: Organization, marker: str) -> Invoice:
    """An issued invoice from the customer's reseller, naming ``marker`` in its number and
    its one line (so a list or document showing it to the wrong person is caught)."""
    invoice = Invoice.objects.create(
        issuer=customer.parent,
        customer=customer,
        kind=Invoice.Kind.TENANT,
        period_start=date(2026, 1, 1),
        period_end=date(2026, 2, 1),
        currency="USD",
        status=Invoice.Status.ISSUED,
        number=f"INV-{marker}",
        subtotal_micros=1_000_000,
        total_micros=1_000_000,
    )
    InvoiceLine.objects.create(
        invoice=invoice,
        position=1,
        model=f"model-{marker}",
        dimension="input",
        unit="mtok",
        unit_price_micros=1,
        quantity=1,
        requests=1,
        amount_micros=1_000_000,
    )
    return invoice


def args_for(world: dict[str, Any], kind: str, *, fresh: bool = False) -> dict[str, Any]:
    """URL arguments of ``kind``; with ``fresh``, a membership route gets a new plain
    member of the tenant, so that each allowed role has someone of its own to remove."""
    if fresh and kind == "new_membership":
        user = make_member(f"fresh-{uuid.uuid4().hex[:8]}", world["tenant"], Membership.Role.MEMBER)
        membership = Membership.objects.get(user=user)
        return {"slug": "tenant", "membership_id": membership.pk}
    return world["args"][kind]


def dashboard_client(world: dict[str, Any], role: str) -> Client:
    client = Client()
    if role != "anonymous":
        client.force_login(world["people"][role])
    return client


def api_client(world: dict[str, Any], role: str, *, token: str | None = None) -> APIClient:
    client = APIClient()
    secret = token or (world["tokens"].get(role) if role != "anonymous" else None)
    if secret:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


def assert_no_secret(world: dict[str, Any], body: str, where: str) -> None:
    for secret in world["secrets"] + world["digests"]:
        assert secret not in body, f"a secret or digest leaked in {where}"


def assert_no_foreign_data(role: str, body: str, where: str) -> None:
    if role in OUTSIDERS:
        assert OURS not in body, f"{role} saw tenant data in {where}"
    elif role in TENANT_PEOPLE or role == "reseller_admin":
        assert THEIRS not in body, f"{role} saw another tenant's data in {where}"


# --- GET: every route x every role ----------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, (_, m) in DASHBOARD.items() if "GET" in m))
def test_dashboard_get(name: str, world: dict[str, Any]) -> None:
    args, methods = DASHBOARD[name]
    url = reverse(name, kwargs=world["args"][args])
    got = {}
    for role in ROLES:
        response = dashboard_client(world, role).get(url)
        got[role] = response.status_code
        raw = b"".join(response.streaming_content) if response.streaming else response.content
        body = raw.decode(errors="replace")
        assert_no_secret(world, body, f"GET {url} as {role}")
        assert_no_foreign_data(role, body, f"GET {url}")
    assert got == methods["GET"], url


@pytest.mark.parametrize("name", sorted(n for n, (_, m) in API.items() if "GET" in m))
def test_api_get(name: str, world: dict[str, Any]) -> None:
    args, methods = API[name]
    url = reverse(name, kwargs=world["args"][args])
    got = {}
    for role in ROLES:
        response = api_client(world, role).get(url)
        got[role] = response.status_code
        body = response.content.decode(errors="replace")
        assert_no_secret(world, body, f"GET {url} as {role}")
        assert_no_foreign_data(role, body, f"GET {url}")
        if role == "tenant_member" and name == "api:key-list":
            assert f'"key-{OURS}"' not in body  # the owner's key: not a member's business
    assert got == methods["GET"], url


def _admin_urls(world: dict[str, Any]) -> list[tuple[str, str, dict[str, int]]]:
    """(kind, url, expected) for every admin route, with real objects where there are."""
    out = []
    registry = {(m._meta.app_label, m._meta.model_name): m for m in admin.site._registry}
    for route in routes():
        if route.area != "admin":
            continue
        kind = admin_kind(route)
        assert kind is not None, route
        expected = dict(ADMIN[kind])
        match = ADMIN_MODEL_NAME.match(route.name)
        if kind == "user_password":
            url = reverse(route.name, args=[world["people"]["tenant_owner"].pk])
        elif kind == "totp_secret":
            url = reverse(route.name, kwargs={"pk": world["totp_device"].pk})
        elif match or kind == "object_redirect":
            if match:
                app, model_name = match.group(1), match.group(2)
            else:
                app, model_name = route.pattern.split("/")[1:3]
            model = registry[(app, model_name)]
            model_admin = admin.site._registry[model]
            obj = model.objects.order_by("pk").first()
            if kind in ("change", "history", "delete", "object_redirect"):
                if obj is None:
                    expected["operator"] = 302
                    pk = "1"
                else:
                    pk = str(obj.pk)
                if kind == "object_redirect":
                    url = f"/admin/{app}/{model_name}/{pk}/"
                else:
                    url = reverse(route.name, args=[pk])
            else:
                url = reverse(route.name)
            request = type("R", (), {"user": world["people"]["operator"]})()
            if kind == "add" and not model_admin.has_add_permission(request):
                expected["operator"] = ADMIN_READ_ONLY["add"]
            if kind == "delete" and not model_admin.has_delete_permission(request, obj):
                expected["operator"] = ADMIN_READ_ONLY["delete"]
        elif kind == "app_list":
            url = reverse(route.name, kwargs={"app_label": "portal"})
        elif kind == "view_on_site":
            url = reverse(route.name, args=["999999", "999999"])
        elif kind == "catch_all":
            url = "/admin/no-such-page/"
        else:
            url = reverse(route.name)
        out.append((kind, url, expected))
    return out


def test_admin_every_route(world: dict[str, Any]) -> None:
    clients = {role: dashboard_client(world, role) for role in ROLES}
    mismatches = []
    for kind, url, expected in _admin_urls(world):
        for role in ROLES:
            response = clients[role].get(url)
            if response.status_code != expected[role]:
                mismatches.append(f"{role} GET {url} ({kind}): {response.status_code}")
            elif response.status_code == ADMIN_LOGIN and role != "operator":
                assert response.headers["Location"].startswith("/admin/"), url
            assert_no_secret(world, response.content.decode(errors="replace"), url)
    assert not mismatches, "\n".join(mismatches[:30])


# --- Writes: every unsafe method x every role -----------------------------------------------


def snapshot() -> tuple[Any, ...]:
    return (
        list(ApiKey.objects.order_by("pk").values_list("pk", "status", "name")),
        list(Membership.objects.order_by("pk").values_list("pk", "user_id", "role")),
        list(Organization.objects.order_by("pk").values_list("pk", "slug")),
        list(Channel.objects.order_by("pk").values_list("pk", "name", "status", "priority")),
        list(Token.objects.order_by("pk").values_list("pk", "revoked_at")),
        list(Channel.objects.order_by("pk").values_list("served_models")),
        AuditEntry.objects.count(),
        list(PriceList.objects.order_by("pk").values_list("pk", "name", "markup_percent")),
        ModelPrice.objects.count(),
        list(
            BillingAccount.objects.order_by("pk").values_list(
                "pk", "mode", "price_list_id", "credit_limit_micros", "monthly_budget_micros"
            )
        ),
        LedgerEntry.objects.count(),
        list(Invoice.objects.order_by("pk").values_list("pk", "status")),
        list(RedemptionCode.objects.order_by("pk").values_list("pk", "redeemed_at")),
        list(TOTPDevice.objects.order_by("pk").values_list("pk", "key", "confirmed")),
        list(StripeAccount.objects.order_by("pk").values_list("pk", "secret_key_ciphertext")),
        Payment.objects.count(),
        StripeEvent.objects.count(),
        list(Invitation.objects.order_by("pk").values_list("pk", "revoked_at", "accepted_at")),
        list(SsoProvider.objects.order_by("pk").values_list("pk", "client_id", "issuer")),
        list(Plan.objects.order_by("pk").values_list("pk", "is_active")),
        list(Subscription.objects.order_by("pk").values_list("pk", "status")),
    )


def body_for(name: str, role: str, world: dict[str, Any]) -> dict[str, Any]:
    unique = f"{role.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    return {
        "api:organization-list": {"name": f"Org {unique}", "parent": "reseller"},
        "api:organization-members": {"email": f"{unique}@example.test", "role": "member"},
        "api:key-list": {"organization": "tenant", "name": f"k-{unique}"},
        "api:invitations": {"email": f"{unique}@example.test", "role": "member"},
        "invite": {"email": f"{unique}@example.test", "role": "member"},
        "api:token-list": {"name": f"t-{unique}"},
        "api:channel-list": {
            "name": f"c-{unique}",
            "base_url": "http://127.0.0.1:9/v1",
            "secret": "sk-new-channel",
        },
        "api:channel-detail": {"priority": 7},
        "api:channel-add-models": {"models": [{"public_id": f"m-{unique}"}]},
        "api:model-list": {"public_id": f"m-{unique}"},
        "api:me": {"is_staff": True, "is_superuser": True},
        "api:organization-detail": {"name": "renamed"},
        "api:key-detail": {"name": "renamed"},
        "api:model-detail": {"owned_by": "me"},
        "channel_status": {"action": "disable"},
        "channel_test": {},
        "channel_discover": {},
        "api:organization-change-member": {"role": "billing"},
        "api:topups": {"amount_micros": 1_000_000, "memo": f"paid {unique}"},
        "api:price-list-list": {"owner": "reseller", "name": f"list-{unique}"},
        "api:price-list-prices": {"model": "sim-small", "input_per_mtok": 1, "output_per_mtok": 2},
        "member_role": {"role": "billing"},
        "budget": {"monthly_budget": "10", "alert_thresholds": "50, 100"},
        "terms": {"mode": "prepaid", "monthly_budget": "25"},
        "tenant_limits": {"rpm_limit": "100"},
        "tenant_status": {"action": "reactivate"},
        "api:organization-limits": {"rpm_limit": 100},
        "topup": {"amount": "5", "memo": f"paid {unique}"},
        "price_lists": {"name": f"list-{unique}"},
        "price_list": {
            "action": "price",
            "model": "sim-small",
            "input_per_mtok": "1",
            "output_per_mtok": "2",
        },
        "codes": {"amount": "1", "memo": unique},
        "plans": {"action": "create", "name": f"plan-{unique}", "monthly_fee": "5"},
        "plan": {"action": "subscribe", "plan": world["plan"].pk},
        "api:plan-list": {"seller": "reseller", "name": f"plan-{unique}", "monthly_fee_micros": 1},
        "api:subscription": {"plan": world["plan"].pk},
        "two_factor_setup": {"action": "start"},
        "payments": {"action": "topup", "amount": "5"},
        "seller_stripe": {
            "action": "connect",
            "secret_key": "sk_test_new",
            "webhook_secret": "whsec_new",
        },
        "stripe_webhook": {"type": "checkout.session.completed"},
        "sso_settings": {
            "issuer": "http://127.0.0.1:9",
            "client_id": f"client-{unique}",
            "client_secret": "sso-new-secret",
            "allowed_domains": "tenant.test",
            "role_claim": "groups",
            "role_map": "devs = member",
            "enabled": "on",
        },
    }.get(name, {})


def redemption_code(world: dict[str, Any]) -> str:
    """A valid code of the tenant's reseller, for one redemption."""
    _, text = billing.redemption_code_create(
        issuer=world["reseller"],
        amount_micros=1_000_000,
        currency=BillingAccount(organization=world["tenant"]).currency,
        actor="test",
    )
    return text


WRITES = sorted(
    (area, name, method)
    for area, table in (("dashboard", DASHBOARD), ("api", API))
    for name, (_, methods) in table.items()
    for method in methods
    if method != "GET"
)


@pytest.mark.parametrize(("area", "name", "method"), WRITES)
def test_writes_by_role(area: str, name: str, method: str, world: dict[str, Any]) -> None:
    """Refused roles first (each must leave everything unchanged), then the allowed ones."""
    args, methods = (API if area == "api" else DASHBOARD)[name]
    expected = methods[method]
    order = sorted(ROLES, key=lambda r: expected[r] < 400)  # refusals first
    got = {}
    for role in order:
        # Whatever a request needs is made before the snapshot: the request alone must
        # change nothing when refused.
        url = reverse(name, kwargs=args_for(world, args, fresh=True))
        data = body_for(name, role, world)
        if name == "redeem":
            data["code"] = redemption_code(world)
        before = snapshot()
        if area == "api":
            client: Any = api_client(world, role)
            response = client.generic(
                method, url, data=_json(data), content_type="application/json"
            )
        else:
            response = dashboard_client(world, role).generic(
                method, url, data=_form(data), content_type="application/x-www-form-urlencoded"
            )
        got[role] = response.status_code
        assert_no_secret(world, response.content.decode(errors="replace"), f"{method} {url}")
        if response.status_code >= 400:
            assert snapshot() == before, f"{role}'s refused {method} {url} changed something"
    assert got == expected, f"{method} {url}"


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data)


def _form(data: dict[str, Any]) -> str:
    from urllib.parse import urlencode

    return urlencode(data)


# --- Escalation -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["tenant_member", "tenant_billing", "tenant_admin"])
@pytest.mark.parametrize("via", ["api", "dashboard"])
def test_no_one_below_owner_can_make_an_owner(role: str, via: str, world: dict[str, Any]) -> None:
    user = world["people"][role]
    before = snapshot()
    for target in (user.username, make_user(f"mate-{role}-{via}").username):
        if via == "api":
            response = api_client(world, role).post(
                reverse("api:organization-members", kwargs={"slug": "tenant"}),
                {"user": target, "role": "owner"},
                format="json",
            )
        else:
            response = dashboard_client(world, role).post(
                reverse("members", kwargs={"slug": "tenant"}), {"user": target, "role": "owner"}
            )
        assert response.status_code == 403, (role, via, target)
    assert snapshot()[:2] == before[:2]
    assert not Membership.objects.filter(user=user, role=Membership.Role.OWNER).exists()


@pytest.mark.parametrize("role", TENANT_PEOPLE)
def test_a_tenant_cannot_lift_its_resellers_cap(role: str, world: dict[str, Any]) -> None:
    """The reseller's budget, hard stop and credit terms are out of the tenant's reach: its
    people may only add a lower budget of their own, and the relay applies the lower."""
    from billing.pricing import account_spending_limit

    cap = 100_000_000
    terms = {
        "mode": "postpaid",
        "credit_limit_micros": 50_000_000,
        "monthly_budget_micros": cap,
        "budget_hard_stop": True,
    }
    account = BillingAccount.objects.filter(organization=world["tenant"]).first()
    if account is None:
        account = billing.billing_account_create(
            organization=world["tenant"], actor=world["people"]["reseller_admin"], **terms
        )
    else:
        billing.billing_account_update(
            account=account, actor=world["people"]["reseller_admin"], **terms
        )
    client = dashboard_client(world, role)
    budget_url = reverse("budget", kwargs={"slug": "tenant"})
    attempts = [
        # Yesterday's form fields, the seller's own, and a budget of its own above the cap.
        (budget_url, {"monthly_budget": "", "budget_hard_stop": "", "alert_thresholds": "50"}),
        (budget_url, {"own_budget": "1000", "own_budget_hard_stop": "", "alert_thresholds": ""}),
        (
            reverse("terms", kwargs={"slug": "tenant"}),
            {"mode": "postpaid", "credit_limit": "", "monthly_budget": "", "budget_hard_stop": ""},
        ),
    ]
    for url, data in attempts:
        response = client.post(url, data)
        assert response.status_code in (302, 400, 403), (role, url, response.status_code)
    account.refresh_from_db()
    assert {name: getattr(account, name) for name in terms} == terms, role
    assert account.own_budget_micros is None or account.own_budget_micros <= cap
    assert account.hard_budget_micros == cap
    limit = account_spending_limit(world["tenant"].pk)  # what the relay holds requests to
    assert limit.hard_stop and limit.budget_remaining_micros <= cap
    assert limit.available_micros is not None and limit.available_micros <= 50_000_000


@pytest.mark.parametrize("via", ["api", "dashboard"])
def test_an_admin_cannot_demote_or_remove_an_owner(via: str, world: dict[str, Any]) -> None:
    """Owners are out of an admin's reach: neither their role nor their membership."""
    owner = Membership.objects.get(user=world["people"]["tenant_owner"], role="owner")
    # A second owner, so that "the last owner stays" cannot be what refuses.
    make_member("second-owner", world["tenant"], Membership.Role.OWNER)
    kwargs = {"slug": "tenant", "membership_id": owner.pk}
    before = snapshot()
    if via == "api":
        client: Any = api_client(world, "tenant_admin")
        url = reverse("api:organization-change-member", kwargs=kwargs)
        changed = client.patch(url, {"role": "member"}, format="json")
        removed = client.delete(url)
    else:
        client = dashboard_client(world, "tenant_admin")
        changed = client.post(reverse("member_role", kwargs=kwargs), {"role": "member"})
        removed = client.post(reverse("member_remove", kwargs=kwargs))
    assert (changed.status_code, removed.status_code) == (403, 403)
    assert snapshot() == before


@pytest.mark.parametrize("via", ["api", "dashboard"])
def test_a_member_of_another_tenant_is_not_found_through_ones_own(
    via: str, world: dict[str, Any]
) -> None:
    """The tenant's owner names their own tenant but another tenant's membership: 404."""
    theirs = Membership.objects.get(user__username=f"user-{THEIRS}")
    kwargs = {"slug": "tenant", "membership_id": theirs.pk}
    before = snapshot()
    if via == "api":
        client: Any = api_client(world, "tenant_owner")
        url = reverse("api:organization-change-member", kwargs=kwargs)
        statuses = (
            client.patch(url, {"role": "billing"}, format="json").status_code,
            client.delete(url).status_code,
        )
    else:
        client = dashboard_client(world, "tenant_owner")
        statuses = (
            client.post(reverse("member_role", kwargs=kwargs), {"role": "billing"}).status_code,
            client.post(reverse("member_remove", kwargs=kwargs)).status_code,
        )
    assert statuses == (404, 404)
    assert snapshot() == before


def test_a_read_only_token_cannot_write_anything(world: dict[str, Any]) -> None:
    """The operator's read-only token: every write of the API is a 403 and changes nothing."""
    client = api_client(world, "operator", token=world["read_only_token"])
    before = snapshot()
    for _, name, method in (w for w in WRITES if w[0] == "api"):
        args, _ = API[name]
        url = reverse(name, kwargs=world["args"][args])
        response = client.generic(
            method, url, data=_json(body_for(name, "ro", world)), content_type="application/json"
        )
        assert response.status_code in (403, 405), (method, url, response.status_code)
        assert response.status_code == 403 or API[name][1][method]["operator"] == 405
    assert snapshot() == before
    assert client.get(reverse("api:key-list")).status_code == 200  # reading still works


def test_no_one_reads_anyone_elses_token(world: dict[str, Any]) -> None:
    """The known bug class of similar gateways: an admin reading a root user's token. Here
    an operator cannot even see that another person's token exists, and no token listing
    or detail ever carries a secret or digest."""
    operator_token = Token.objects.get(user=world["people"]["operator"], name="rw-operator")
    for role in ROLES:
        client = api_client(world, role)
        if role != "operator":
            detail = client.get(reverse("api:token-detail", kwargs={"pk": operator_token.pk}))
            assert detail.status_code in (401, 404), role
        listing = client.get(reverse("api:token-list"))
        body = listing.content.decode()
        assert_no_secret(world, body, f"token list as {role}")
        if role != "anonymous":
            names = {t["name"] for t in listing.json()["results"]}
            mine = set(
                Token.objects.filter(user=world["people"][role]).values_list("name", flat=True)
            )
            assert names == mine, role
    # A user object's flags cannot be changed through the API by anyone.
    for role in ROLES:
        api_client(world, role).patch(reverse("api:me"), {"is_staff": True}, format="json")
    assert (
        not world["people"]["tenant_admin"]
        .__class__.objects.filter(is_staff=True)
        .exclude(pk=world["people"]["operator"].pk)
        .exists()
    )
