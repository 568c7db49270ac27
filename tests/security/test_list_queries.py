"""Every list page and API list makes the same number of queries whatever the number of
rows: no query per row (N+1). Existing guards in tests/portal cover the keys page, the
channel pages and the admin changelists; this covers every list route at once."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing.models import UsageEvent
from portal import services, tokens
from portal.models import Membership, Organization
from tests.conftest import make_member, make_user

pytestmark = pytest.mark.django_db

# (client kind, url name, kwargs, query string)
LISTS = [
    ("page", "keys", {"slug": "tenant"}, {}),
    ("page", "usage", {"slug": "tenant"}, {}),
    ("page", "members", {"slug": "tenant"}, {}),
    ("page", "org_audit", {"slug": "tenant"}, {}),
    ("page", "org", {"slug": "tenant"}, {}),
    ("page", "tenants", {"slug": "reseller"}, {}),
    ("page", "account_tokens", {}, {}),
    ("page", "operator_orgs", {}, {}),
    ("page", "operator_audit", {}, {}),
    ("page", "channels", {}, {}),
    ("page", "catalog", {}, {}),
    ("page", "models_public", {}, {}),
    ("page", "operator", {}, {}),
    ("api", "api:key-list", {}, {}),
    ("api", "api:token-list", {}, {}),
    ("api", "api:organization-list", {}, {}),
    ("api", "api:organization-members", {"slug": "tenant"}, {}),
    ("api", "api:channel-list", {}, {}),
    ("api", "api:model-list", {}, {}),
    ("api", "api:usage-list", {}, {}),
    ("api", "api:usage-list", {}, {"group_by": "key"}),
    ("api", "api:audit-list", {}, {}),
    ("api", "api:me", {}, {}),
]


def grow(tenant: Organization, reseller: Organization, people: list[Any], n: int) -> None:
    """Add ``n`` more of every kind of row the lists show."""
    for i in range(n):
        tag = uuid.uuid4().hex[:8]
        for user in people:
            key, _ = services.api_key_create(tenant=tenant, name=f"k-{tag}", actor=user)
            tokens.personal_access_token_create(user=user, name=f"t-{tag}", actor=user)
            UsageEvent.objects.create(
                request_id=uuid.uuid4().hex,
                created_at=timezone.now() - timedelta(hours=1 + i),
                tenant=tenant,
                api_key=key,
                model=f"model-{i % 3}",
                prompt_tokens=3,
                completion_tokens=2,
                status_code=200,
                total_latency_ms=5,
            )
        services.membership_add(
            organization=tenant, user=make_user(f"m-{tag}"), role="member", actor=people[0]
        )
        services.organization_create(
            name=f"T {tag}", kind=Organization.Kind.TENANT, parent=reseller, actor="test"
        )
        services.channel_create(
            name=f"c-{tag}",
            base_url="http://127.0.0.1:9/v1",
            secret="s",
            models=[f"sim-{tag}"],
            actor="test",
        )


def count(client: Any, name: str, kwargs: dict[str, str], query: dict[str, str]) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse(name, kwargs=kwargs), query)
    assert response.status_code == 200, (name, response.status_code)
    return len(queries.captured_queries)


@pytest.mark.parametrize("persona", ["operator_user", "tenant_owner"])
def test_list_queries_do_not_grow_with_rows(
    request: pytest.FixtureRequest,
    persona: str,
    tenant_org: Organization,
    reseller_org: Organization,
    reseller_admin: Any,
    tenant_owner: Any,
    operator_user: Any,
) -> None:
    member = make_member("a-member", tenant_org, Membership.Role.MEMBER)
    user = request.getfixturevalue(persona)
    people = [tenant_owner, member, operator_user]
    grow(tenant_org, reseller_org, people, 2)
    page, api = Client(), APIClient()
    page.force_login(user)
    api.force_authenticate(user)
    clients = {"page": page, "api": api}
    usable = [
        entry
        for entry in LISTS
        if persona == "operator_user"
        or (
            not (entry[1] in ("tenants", "api:channel-list") or entry[1].startswith("operator"))
            and entry[1] not in ("channels", "catalog")
        )
    ]
    for kind, name, kwargs, query in usable:  # warm caches (content types, templates)
        count(clients[kind], name, kwargs, query)
    before = {(n, str(q)): count(clients[k], n, kw, q) for k, n, kw, q in usable}
    grow(tenant_org, reseller_org, people, 6)
    after = {(n, str(q)): count(clients[k], n, kw, q) for k, n, kw, q in usable}
    grown = {key: (before[key], after[key]) for key in before if after[key] > before[key]}
    assert not grown, f"queries grow with rows (before, after): {grown}"
