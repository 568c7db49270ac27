"""Every dashboard route against every persona: who gets 200, 403 or 404, and nobody sees
another tenant's data.

The route table below is checked against the URL conf, so a new view without an entry
here fails ``test_every_dashboard_route_is_covered``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from billing.models import Invoice, InvoiceLine, PriceList, UsageEvent
from portal import services
from portal.models import ApiKey, AuditEntry, Channel, Membership, Organization
from tests.conftest import make_member

pytestmark = pytest.mark.django_db

PERSONAS = (
    "anonymous",
    "operator_user",
    "reseller_admin",
    "other_reseller_admin",
    "tenant_owner",
    "tenant_member",
    "tenant_billing",
    "outsider",
)
# Strings that exist only in one tenant's rows: a page showing one to someone who may not
# see that tenant has leaked.
OURS = "ours-marker-7f3a"
THEIRS = "theirs-marker-9c1d"

OK, FORBIDDEN, MISSING, LOGIN = 200, 403, 404, 302
# Who may open each tenant page at all (everyone else on the platform: 404 or 403 below).
_TENANT_VIEW = {"operator_user": OK, "reseller_admin": OK, "tenant_owner": OK}
_OUTSIDERS = {"other_reseller_admin": MISSING, "outsider": MISSING, "anonymous": LOGIN}
_OPERATOR_ONLY = {
    "operator_user": OK,
    "reseller_admin": FORBIDDEN,
    "other_reseller_admin": FORBIDDEN,
    "tenant_owner": FORBIDDEN,
    "tenant_member": FORBIDDEN,
    "tenant_billing": FORBIDDEN,
    "outsider": FORBIDDEN,
    "anonymous": LOGIN,
}


def _tenant_page(member: int, billing: int) -> dict[str, int]:
    return {**_TENANT_VIEW, **_OUTSIDERS, "tenant_member": member, "tenant_billing": billing}


# A reseller's own pages: its admins and operators; its tenants' people cannot see it.
_RESELLER_ONLY = {
    "operator_user": OK,
    "reseller_admin": OK,
    "tenant_owner": MISSING,
    "tenant_member": MISSING,
    "tenant_billing": MISSING,
    **_OUTSIDERS,
}

# name → (args builder key, expected GET status per persona)
ROUTES: dict[str, tuple[str, dict[str, int]]] = {
    "org": ("tenant", _tenant_page(OK, OK)),
    "keys": ("tenant", _tenant_page(OK, FORBIDDEN)),
    "tenant_models": ("tenant", _tenant_page(OK, OK)),
    "usage": ("tenant", _tenant_page(OK, FORBIDDEN)),
    "usage_export": ("tenant", _tenant_page(OK, FORBIDDEN)),
    "quickstart": ("tenant", _tenant_page(OK, FORBIDDEN)),
    "members": ("tenant", _tenant_page(OK, FORBIDDEN)),  # billing: money only (issue 11, 8e)
    "billing": ("tenant", _tenant_page(FORBIDDEN, OK)),
    "budget": ("tenant", _tenant_page(FORBIDDEN, OK)),
    # Terms of sale are set from above: the reseller and operators, never the tenant.
    "terms": (
        "tenant",
        {
            **_TENANT_VIEW,
            **_OUTSIDERS,
            "tenant_owner": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "tenant_billing": FORBIDDEN,
        },
    ),
    # A tenant's limits likewise: its seller sets them; its own people see them on Keys.
    "tenant_limits": (
        "tenant",
        {
            **_TENANT_VIEW,
            **_OUTSIDERS,
            "tenant_owner": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "tenant_billing": FORBIDDEN,
        },
    ),
    "org_audit": ("tenant", _tenant_page(FORBIDDEN, FORBIDDEN)),
    # A reseller's tenant list: its admins and operators; the reseller's tenants' people
    # cannot see the reseller at all.
    "tenants": (
        "reseller",
        {
            "operator_user": OK,
            "reseller_admin": OK,
            "tenant_owner": MISSING,
            "tenant_member": MISSING,
            "tenant_billing": MISSING,
            **_OUTSIDERS,
        },
    ),
    "price_lists": ("reseller", _RESELLER_ONLY),
    # Card payments: the customer's billing people; a seller's Stripe keys: the seller's.
    "payments": ("tenant", _tenant_page(FORBIDDEN, OK)),
    "seller_stripe": ("reseller", _RESELLER_ONLY),
    "operator_stripe": ("none", {**_OPERATOR_ONLY, "operator_user": 302}),
    # An organisation's own single sign-on: its owners, its seller and operators.
    "sso_settings": ("tenant", _tenant_page(FORBIDDEN, FORBIDDEN)),
    "price_list": ("price_list", _RESELLER_ONLY),
    "revenue": ("reseller", _RESELLER_ONLY),
    "codes": ("reseller", _RESELLER_ONLY),
    "invoices_issued": ("reseller", _RESELLER_ONLY),
    "plans": ("reseller", _RESELLER_ONLY),
    # What is left of the tenant's plan windows: every insider sees it.
    "plan": ("tenant", _tenant_page(OK, OK)),
    # An invoice to the tenant: its billing people and the reseller (issuer).
    "invoice_download": ("invoice", {**_tenant_page(FORBIDDEN, OK)}),
    "operator": ("none", _OPERATOR_ONLY),
    "usage_log": ("none", _OPERATOR_ONLY),
    "operator_invoices": ("none", _OPERATOR_ONLY),
    "operator_price_lists": ("none", {**_OPERATOR_ONLY, "operator_user": 302}),
    "operator_codes": ("none", {**_OPERATOR_ONLY, "operator_user": 302}),
    "operator_plans": ("none", {**_OPERATOR_ONLY, "operator_user": 302}),
    "channels": ("none", _OPERATOR_ONLY),
    "channel_create": ("none", _OPERATOR_ONLY),
    "channel_edit": ("channel", _OPERATOR_ONLY),
    "catalog": ("none", _OPERATOR_ONLY),
    "operator_orgs": ("none", _OPERATOR_ONLY),
    "operator_audit": ("none", _OPERATOR_ONLY),
    # Open to every signed-in person; they show only the person's own things.
    # Home redirects each person to their landing page (tested in test_views_accounts).
    "home": ("none", dict.fromkeys(PERSONAS, 302)),
    "account_tokens": ("none", {**dict.fromkeys(PERSONAS, OK), "anonymous": LOGIN}),
    "password_change": ("none", {**dict.fromkeys(PERSONAS, OK), "anonymous": LOGIN}),
    "password_change_done": ("none", {**dict.fromkeys(PERSONAS, OK), "anonymous": LOGIN}),
    # Staff only; the code form opens to any signed-in person and sends them on.
    "two_factor_setup": (
        "none",
        {**dict.fromkeys(PERSONAS, FORBIDDEN), "operator_user": OK, "anonymous": LOGIN},
    ),
    "two_factor_verify": ("none", {**dict.fromkeys(PERSONAS, 302), "anonymous": LOGIN}),
    # Public.
    "models_public": ("none", dict.fromkeys(PERSONAS, OK)),
}
# POST-only actions on another tenant's objects: (args key, persona → status).
ACTIONS: dict[str, tuple[str, dict[str, int]]] = {
    "key_revoke": (
        "key",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_billing": FORBIDDEN,
            "tenant_member": MISSING,
            "anonymous": LOGIN,
        },
    ),
    "channel_status": ("channel", {**_OPERATOR_ONLY, "operator_user": 302}),
    "channel_test": ("channel", {**_OPERATOR_ONLY, "operator_user": 302}),
    "channel_discover": ("channel", _OPERATOR_ONLY),
    "member_role": (
        "membership",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_billing": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    # Deactivating a tenant: its seller's, never a role inside it.
    "tenant_status": (
        "tenant",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_owner": FORBIDDEN,
            "tenant_billing": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "invite": (
        "tenant",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_billing": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "invitation_revoke": (
        "invitation",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_billing": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "member_remove": (
        "membership",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_billing": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "redeem": (
        "tenant",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "topup": (
        "tenant",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_owner": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "tenant_billing": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "invoice_pay": (
        "invoice_pay",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_member": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    "invoice_action": (
        "invoice_issue",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_owner": FORBIDDEN,
            "tenant_member": FORBIDDEN,
            "tenant_billing": FORBIDDEN,
            "anonymous": LOGIN,
        },
    ),
    # Drafting this month's invoices: the issuer's managers and operators only.
    "invoices_draft_now": (
        "reseller",
        {
            "outsider": MISSING,
            "other_reseller_admin": MISSING,
            "tenant_owner": MISSING,
            "tenant_member": MISSING,
            "tenant_billing": MISSING,
            "anonymous": LOGIN,
        },
    ),
    "operator_invoices_draft_now": ("none", {**_OPERATOR_ONLY, "operator_user": 302}),
    "token_revoke": (
        "token",
        {p: MISSING for p in PERSONAS if p not in ("anonymous",)}
        | {"tenant_owner": 302, "anonymous": LOGIN},
    ),
}
# Routes whose access rules are Django's own or that need no scoping.
UNSCOPED = {
    "invitation_accept",  # the mailed token is the credential (test_views_invitations)
    # Single sign-on and Stripe's webhook answer anyone: the provider's signed token, or
    # Stripe's signature, is the credential (tests/portal/test_sso.py, test_payments.py;
    # every role is in tests/security/test_matrix.py).
    "sso_start",
    "sso_callback",
    "sso_login",
    "stripe_webhook",
    "login",
    "logout",
    "password_reset",
    "password_reset_done",
    "password_reset_confirm",
    "password_reset_complete",
}


def _route_names(patterns: list[Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            route = prefix + str(pattern.pattern)
            if route.startswith(("admin/", "api/")):
                continue  # the admin is Django's; the API has test_api_isolation
            yield from _route_names(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern) and pattern.name:
            yield pattern.name, prefix + str(pattern.pattern)


def test_every_dashboard_route_is_covered() -> None:
    names = {name for name, _ in _route_names(get_resolver().url_patterns)}
    missing = names - set(ROUTES) - set(ACTIONS) - UNSCOPED
    assert not missing, f"dashboard routes without an isolation entry: {sorted(missing)}"
    assert not (set(ROUTES) | set(ACTIONS)) - names, "entries for routes that do not exist"


# --- The world ------------------------------------------------------------------------------


def _key(tenant: Organization, user: Any, name: str) -> ApiKey:
    key, _ = services.api_key_create(tenant=tenant, name=name, actor=user)
    return key


def _event(key: ApiKey, model: str) -> UsageEvent:
    return UsageEvent.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=timezone.now() - timedelta(hours=1),
        tenant=key.tenant,
        api_key=key,
        model=model,
        prompt_tokens=11,
        completion_tokens=7,
        status_code=200,
        total_latency_ms=120,
    )


def _invoice(customer: Organization, marker: str) -> Invoice:
    """An issued invoice with one line naming ``marker``."""
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
        unit="token",
        unit_price_micros=1,
        quantity=1,
        requests=1,
        amount_micros=1_000_000,
    )
    return invoice


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
) -> dict[str, Any]:
    """Two tenants with keys, usage, members and audit entries carrying marker strings."""
    ours = _key(tenant_org, tenant_owner, f"key-{OURS}")
    _key(tenant_org, tenant_member, f"member-key-{OURS}")
    theirs = _key(other_tenant_org, outsider, f"key-{THEIRS}")
    _event(ours, f"model-{OURS}")
    _event(theirs, f"model-{THEIRS}")
    make_member(f"user-{THEIRS}", other_tenant_org, Membership.Role.MEMBER)
    make_member(f"user-{OURS}", tenant_org, Membership.Role.MEMBER)
    channel = services.channel_create(
        name="Upstream",
        base_url="http://upstream.test/v1",
        secret="sk-up-secret-1",
        models=["sim-small"],
        actor="test",
    )
    from portal.tokens import personal_access_token_create

    token, _ = personal_access_token_create(user=tenant_owner, name="t", actor=tenant_owner)
    ours_list = PriceList.objects.create(owner=tenant_org.parent, name=f"list-{OURS}")
    PriceList.objects.create(owner=other_reseller_org, name=f"list-{THEIRS}")
    invoice = _invoice(tenant_org, OURS)
    _invoice(other_tenant_org, THEIRS)
    owner_membership = Membership.objects.get(user=tenant_owner, organization=tenant_org)
    invitation = services.invitation_create(
        organization=tenant_org,
        email=f"invitee-{OURS}@example.test",
        role=Membership.Role.MEMBER,
        actor=tenant_owner,
        link=str,
    )
    return {
        "invitation": ["tenant", invitation.pk],
        "tenant": ["tenant"],
        "reseller": ["reseller"],
        "none": [],
        "key": ["tenant", ours.pk],
        "channel": [channel.pk],
        "token": [token.pk],
        "price_list": ["reseller", ours_list.pk],
        "invoice": [invoice.pk, "csv"],
        "invoice_issue": [invoice.pk, "paid"],
        "invoice_pay": ["tenant", invoice.pk],
        "membership": ["tenant", owner_membership.pk],
    }


@pytest.fixture
def personas(
    request: pytest.FixtureRequest, world: dict[str, Any], other_reseller_org: Organization
) -> dict[str, Client]:
    users = {name: request.getfixturevalue(name) for name in PERSONAS if name != "anonymous"}
    clients = {"anonymous": Client()}
    for name, user in users.items():
        clients[name] = Client()
        clients[name].force_login(user)
    return clients


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_get_status_by_persona(
    name: str, personas: dict[str, Client], world: dict[str, Any]
) -> None:
    args_key, expected = ROUTES[name]
    url = reverse(name, args=world[args_key])
    got = {persona: personas[persona].get(url).status_code for persona in PERSONAS}
    assert got == {p: expected[p] for p in PERSONAS}, url


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_no_page_shows_another_tenants_data(
    name: str, personas: dict[str, Client], world: dict[str, Any]
) -> None:
    args_key, _ = ROUTES[name]
    url = reverse(name, args=world[args_key])
    for persona in ("tenant_owner", "tenant_member", "tenant_billing", "reseller_admin"):
        body = _body(personas[persona].get(url))
        assert THEIRS not in body, (persona, url)
    for persona in ("outsider", "other_reseller_admin"):
        body = _body(personas[persona].get(url))
        assert OURS not in body, (persona, url)


def _body(response: Any) -> str:
    raw = b"".join(response.streaming_content) if response.streaming else response.content
    return raw.decode()


def test_outsiders_own_pages_show_only_their_tenant(
    personas: dict[str, Client], world: dict[str, Any]
) -> None:
    for name in ("keys", "usage", "members", "org_audit", "org"):
        body = personas["outsider"].get(reverse(name, args=["other-tenant"])).content.decode()
        assert OURS not in body, name
    keys_page = personas["outsider"].get(reverse("keys", args=["other-tenant"])).content.decode()
    assert f"key-{THEIRS}" in keys_page


@pytest.mark.parametrize("name", sorted(ACTIONS))
def test_post_actions_on_others_objects_are_refused_and_change_nothing(
    name: str, personas: dict[str, Client], world: dict[str, Any]
) -> None:
    args_key, expected = ACTIONS[name]
    url = reverse(name, args=world[args_key])
    before = AuditEntry.objects.count()
    for persona, status in expected.items():
        if status in (OK, 302) and persona != "anonymous":
            continue  # allowed personas are exercised in the feature tests
        response = personas[persona].post(url, {"action": "disable"})
        assert response.status_code == status, (persona, url)
    assert AuditEntry.objects.count() == before
    assert ApiKey.objects.filter(status=ApiKey.Status.REVOKED).count() == 0
    assert Channel.objects.filter(status=Channel.Status.DISABLED).count() == 0


def test_posting_to_read_only_pages_is_refused_to_read_only_roles(
    personas: dict[str, Client], world: dict[str, Any]
) -> None:
    before = AuditEntry.objects.count()
    cases = [
        ("tenant_member", "members", ["tenant"], {"user": "outsider", "role": "member"}),
        ("tenant_billing", "keys", ["tenant"], {"name": "sneaky"}),
        ("tenant_owner", "tenants", ["reseller"], {"name": "Sneaky"}),
        ("outsider", "keys", ["tenant"], {"name": "sneaky"}),
        ("other_reseller_admin", "tenants", ["reseller"], {"name": "Sneaky"}),
        ("tenant_owner", "tenant_limits", ["tenant"], {"rpm_limit": "1000000"}),
        ("tenant_owner", "tenant_status", ["tenant"], {"action": "reactivate"}),
        ("outsider", "tenant_status", ["tenant"], {"action": "deactivate"}),
        ("other_reseller_admin", "tenant_limits", ["tenant"], {"rpm_limit": "1"}),
        ("reseller_admin", "channel_create", [], {"name": "x", "base_url": "http://x.test/v1"}),
    ]
    for persona, name, args, data in cases:
        status = personas[persona].post(reverse(name, args=args), data).status_code
        assert status in (403, 404), (persona, name, status)
    assert AuditEntry.objects.count() == before
