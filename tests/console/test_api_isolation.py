"""Every operation in the OpenAPI schema, called by people of another tenant and of
another reseller against ``tenant_org``'s objects: 403/404, never its data, no change.

Operations come from the generated schema, so a new endpoint without an entry in
EXPECTED fails ``test_every_operation_is_covered``.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from typing import Any

import pytest
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from billing.models import Invoice, LedgerEntry, PriceList, UsageEvent
from billing.services.plans import plan_create
from portal import services, tokens
from portal.models import ApiKey, AuditEntry, Membership, Organization
from tests.conftest import make_member, make_user

pytestmark = pytest.mark.django_db

OURS = "ours-api-marker-41b2"
LIST = "list"  # 200, with none of tenant_org's data in it

# (method, path template) → what an outsider gets. LIST: 200 without our data.
EXPECTED: dict[tuple[str, str], int | str] = {
    ("get", "/api/audit/"): LIST,
    ("get", "/api/channels/"): 403,
    ("post", "/api/channels/"): 403,
    ("get", "/api/channels/{id}/"): 403,
    ("patch", "/api/channels/{id}/"): 403,
    ("post", "/api/channels/{id}/disable/"): 403,
    ("post", "/api/channels/{id}/enable/"): 403,
    ("post", "/api/channels/{id}/models/"): 403,
    ("post", "/api/channels/{id}/test/"): 403,
    ("get", "/api/keys/"): LIST,
    ("post", "/api/keys/"): 404,
    ("get", "/api/keys/{id}/"): 404,
    ("post", "/api/keys/{id}/revoke/"): 404,
    ("get", "/api/me/"): LIST,
    ("get", "/api/models/"): LIST,  # the catalog is shared, not tenant data
    ("post", "/api/models/"): 403,
    ("get", "/api/models/{public_id}/"): 200,
    ("get", "/api/organizations/"): LIST,
    ("post", "/api/organizations/"): 404,
    ("get", "/api/organizations/{slug}/"): 404,
    ("get", "/api/organizations/{slug}/members/"): 404,
    ("post", "/api/organizations/{slug}/members/"): 404,
    ("patch", "/api/organizations/{slug}/members/{membership_id}/"): 404,
    ("delete", "/api/organizations/{slug}/members/{membership_id}/"): 404,
    ("get", "/api/tokens/"): LIST,
    ("post", "/api/tokens/"): 201,  # their own token, not ours
    ("get", "/api/tokens/{id}/"): 404,
    ("post", "/api/tokens/{id}/revoke/"): 404,
    ("get", "/api/usage/"): LIST,
    ("get", "/api/invoices/"): LIST,
    ("get", "/api/invoices/{id}/"): 404,
    ("get", "/api/invoices/{id}/pdf/"): 404,
    ("get", "/api/invoices/{id}/csv/"): 404,
    ("get", "/api/price-lists/"): LIST,
    ("post", "/api/price-lists/"): 404,
    ("get", "/api/price-lists/{id}/"): 404,
    ("post", "/api/price-lists/{id}/prices/"): 404,
    ("get", "/api/organizations/{slug}/balance/"): 404,
    ("get", "/api/organizations/{slug}/topups/"): 404,
    ("post", "/api/organizations/{slug}/topups/"): 404,
    ("get", "/api/organizations/{slug}/limits/"): 404,
    ("patch", "/api/organizations/{slug}/limits/"): 404,
    ("post", "/api/organizations/{slug}/deactivate/"): 404,
    ("post", "/api/organizations/{slug}/reactivate/"): 404,
    ("get", "/api/organizations/{slug}/prices/"): 404,
    ("get", "/api/organizations/{slug}/invitations/"): 404,
    ("post", "/api/organizations/{slug}/invitations/"): 404,
    ("delete", "/api/organizations/{slug}/invitations/{invitation_id}/"): 404,
    ("post", "/api/channels/{id}/discover/"): 403,
    ("get", "/api/plans/"): LIST,
    ("post", "/api/plans/"): 404,  # a plan for our reseller
    ("get", "/api/organizations/{slug}/plan/"): 404,
    ("post", "/api/organizations/{slug}/plan/"): 404,
    ("delete", "/api/organizations/{slug}/plan/"): 404,
}

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/api/keys/"): {"organization": "tenant", "name": "intruder"},
    ("post", "/api/organizations/"): {"name": "Intruder", "parent": "tenant"},
    ("post", "/api/organizations/{slug}/members/"): {"user": "outsider", "role": "owner"},
    ("post", "/api/channels/"): {"name": "x", "base_url": "http://x.test/v1"},
    ("patch", "/api/channels/{id}/"): {"name": "renamed"},
    ("post", "/api/channels/{id}/models/"): {"models": [{"public_id": "x"}]},
    ("post", "/api/models/"): {"public_id": "intruder-model"},
    ("post", "/api/tokens/"): {"name": "mine"},
    ("post", "/api/price-lists/"): {"owner": "reseller", "name": "intruder"},
    ("post", "/api/price-lists/{id}/prices/"): {
        "model": "sim-small",
        "input_per_mtok": 0,
        "output_per_mtok": 0,
    },
    ("post", "/api/organizations/{slug}/topups/"): {"amount_micros": 1_000_000},
    ("patch", "/api/organizations/{slug}/limits/"): {"rpm_limit": 1},
    ("post", "/api/organizations/{slug}/invitations/"): {"email": "x@example.test"},
    ("post", "/api/plans/"): {"seller": "reseller", "name": "p", "monthly_fee_micros": 1},
    ("post", "/api/organizations/{slug}/plan/"): {"plan": 1},
    ("patch", "/api/organizations/{slug}/members/{membership_id}/"): {"role": "member"},
}


def operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (method, path)
        for path, item in schema["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    )


def test_every_operation_is_covered() -> None:
    assert set(operations()) == set(EXPECTED)


@pytest.fixture
def ours(
    tenant_org: Organization, tenant_owner: Any, tenant_member: Any, operator_user: Any
) -> dict[str, str]:
    key = services.api_key_create(tenant=tenant_org, name=f"key-{OURS}", actor=tenant_owner)[0]
    UsageEvent.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=timezone.now() - timedelta(hours=1),
        tenant=tenant_org,
        api_key=key,
        model=f"model-{OURS}",
        status_code=200,
        total_latency_ms=5,
    )
    channel = services.channel_create(
        name="Upstream",
        base_url="http://u.test/v1",
        secret="sk-up",
        models=["sim-small"],
        actor=operator_user,
    )
    token, _ = tokens.personal_access_token_create(
        user=tenant_owner, name=f"token-{OURS}", actor=tenant_owner
    )
    member = services.membership_add(
        organization=tenant_org,
        user=make_user(f"user-{OURS}"),
        role="member",
        actor=tenant_owner,
    )
    price_list = PriceList.objects.create(owner=tenant_org.parent, name=f"list-{OURS}")
    plan_create(
        seller=tenant_org.parent, name=f"plan-{OURS}", monthly_fee_micros=1, actor=operator_user
    )
    invoice = Invoice.objects.create(
        issuer=tenant_org.parent,
        customer=tenant_org,
        kind=Invoice.Kind.TENANT,
        period_start=date(2026, 1, 1),
        period_end=date(2026, 2, 1),
        currency="USD",
        status=Invoice.Status.ISSUED,
        number=f"INV-{OURS}",
    )
    return {
        "slug": "tenant",
        "public_id": "sim-small",
        "invoice": str(invoice.pk),
        "membership_id": str(member.pk),
        "invitation_id": str(
            services.invitation_create(
                organization=tenant_org,
                email=f"invitee-{OURS}@example.test",
                role=Membership.Role.MEMBER,
                actor=tenant_owner,
                link=str,
            ).pk
        ),
        "price_list": str(price_list.pk),
        "key": str(key.pk),
        "channel": str(channel.pk),
        "token": str(token.pk),
    }


def _url(path: str, values: dict[str, str]) -> str:
    if "{id}" in path:
        kinds = {
            "/keys/": "key",
            "/channels/": "channel",
            "/invoices/": "invoice",
            "/price-lists/": "price_list",
        }
        kind = next((k for part, k in kinds.items() if part in path), "token")
        path = path.replace("{id}", values[kind])
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _snapshot(tenant: Organization) -> tuple[Any, ...]:
    return (
        list(ApiKey.objects.filter(tenant=tenant).values_list("id", "status", "name")),
        list(Membership.objects.filter(organization=tenant).values_list("user_id", "role")),
        Organization.objects.count(),
        AuditEntry.objects.filter(organization=tenant).count(),
        LedgerEntry.objects.count(),
        PriceList.objects.count(),
        list(AuditEntry.objects.values_list("action", flat=True).order_by("id")),
    )


@pytest.mark.parametrize("persona", ["outsider", "other_reseller_admin"])
def test_outsiders_get_404_or_403_and_never_our_data(
    request: pytest.FixtureRequest,
    persona: str,
    ours: dict[str, str],
    tenant_org: Organization,
    other_reseller_org: Organization,
    outsider: Any,
) -> None:
    if persona == "outsider":
        user = outsider
    else:
        user = make_member("other-reseller-admin", other_reseller_org, Membership.Role.ADMIN)
    client = APIClient()
    client.force_login(user)
    before = _snapshot(tenant_org)
    for method, path in operations():
        expected = EXPECTED[(method, path)]
        response = getattr(client, method)(
            _url(path, ours), BODIES.get((method, path), {}), format="json"
        )
        want = 200 if expected == LIST else expected
        assert response.status_code == want, (method, path, response.content[:300])
        assert OURS not in response.content.decode(), (method, path)
    after = _snapshot(tenant_org)
    assert after[:6] == before[:6]
    # The only write that succeeded is the outsider's own token.
    assert after[6][len(before[6]) :] == ["access_token.create"]
