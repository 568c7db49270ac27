"""/api/usage/ (aggregated from UsageEvent, filtered, paginated) and /api/audit/."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from billing.models import UsageEvent
from portal import services
from portal.models import ApiKey, AuditEntry, Organization
from tests.console.conftest import api_client_for as client_for

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)


def event(key: ApiKey, model: str, *, days_ago: int = 0, status: int = 200, **extra: Any) -> None:
    UsageEvent.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=NOW - timedelta(days=days_ago, minutes=5),
        tenant=key.tenant,
        api_key=key,
        model=model,
        prompt_tokens=extra.pop("prompt", 10),
        completion_tokens=extra.pop("completion", 5),
        status_code=status,
        total_latency_ms=extra.pop("latency", 100),
        **extra,
    )


@pytest.fixture(autouse=True)
def frozen() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def keys(
    tenant_org: Organization,
    other_tenant_org: Organization,
    tenant_owner: Any,
    tenant_member: Any,
    outsider: Any,
) -> dict[str, ApiKey]:
    made = {
        "owner": services.api_key_create(tenant=tenant_org, name="o", actor=tenant_owner)[0],
        "member": services.api_key_create(tenant=tenant_org, name="m", actor=tenant_member)[0],
        "other": services.api_key_create(tenant=other_tenant_org, name="x", actor=outsider)[0],
    }
    event(made["owner"], "sim-small", prompt=100, completion=50)
    event(made["owner"], "sim-small", days_ago=1, status=502, prompt=0, completion=0)
    event(made["owner"], "sim-large", days_ago=1, latency=300)
    event(made["member"], "sim-small", prompt=7, completion=3)
    event(made["owner"], "sim-small", days_ago=40)  # outside the default period
    event(made["other"], "secret-model", prompt=999)
    return made


def rows(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.content
    return response.json()["results"]


def test_default_groups_by_day_and_model_over_30_days(tenant_owner: Any, keys: Any) -> None:
    got = rows(client_for(tenant_owner).get("/api/usage/"))
    assert got == [
        {
            "day": "2026-03-15",
            "model": "sim-small",
            "requests": 2,
            "prompt_tokens": 107,
            "completion_tokens": 53,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 160,
            "errors": 0,
            "avg_latency_ms": 100,
            "spend_micros": 0,
        },
        {
            "day": "2026-03-14",
            "model": "sim-large",
            "requests": 1,
            "prompt_tokens": 10,
            "completion_tokens": 5,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 15,
            "errors": 0,
            "avg_latency_ms": 300,
            "spend_micros": 0,
        },
        {
            "day": "2026-03-14",
            "model": "sim-small",
            "requests": 1,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cached_tokens": 0,
            "reasoning_tokens": 0,
            "total_tokens": 0,
            "errors": 1,
            "avg_latency_ms": 100,
            "spend_micros": 0,
        },
    ]


def test_filters_by_period_key_and_model(tenant_owner: Any, keys: dict[str, ApiKey]) -> None:
    client = client_for(tenant_owner)
    assert [
        r["requests"] for r in rows(client.get("/api/usage/?group_by=model&model=sim-large"))
    ] == [1]
    by_key = rows(client.get(f"/api/usage/?group_by=key&key={keys['member'].pk}"))
    assert by_key == [{**by_key[0], "key": keys["member"].pk, "requests": 1}]
    old = rows(client.get("/api/usage/?group_by=model&start=2026-01-01&end=2026-02-28"))
    assert [(r["model"], r["requests"]) for r in old] == [("sim-small", 1)]
    one_day = rows(client.get("/api/usage/?group_by=day&start=2026-03-14&end=2026-03-14"))
    assert [(r["day"], r["requests"]) for r in one_day] == [("2026-03-14", 2)]


def test_a_start_after_the_default_end_is_an_empty_period(tenant_owner: Any, keys: Any) -> None:
    response = client_for(tenant_owner).get("/api/usage/?group_by=day&start=2099-01-01")
    assert response.status_code == 200
    assert rows(response) == []


def test_members_see_only_their_own_keys_usage(tenant_member: Any, keys: Any) -> None:
    got = rows(client_for(tenant_member).get("/api/usage/?group_by=organization"))
    assert got == [{**got[0], "organization": "tenant", "requests": 1, "prompt_tokens": 7}]


@pytest.mark.parametrize(
    ("persona", "expected"),
    [
        ("operator_user", {"tenant": 4, "other-tenant": 1}),
        ("reseller_admin", {"tenant": 4}),
        ("tenant_owner", {"tenant": 4}),
        ("outsider", {"other-tenant": 1}),
    ],
)
def test_usage_is_scoped_per_persona(
    request: pytest.FixtureRequest, keys: Any, persona: str, expected: dict[str, int]
) -> None:
    client = client_for(request.getfixturevalue(persona))
    got = rows(client.get("/api/usage/?group_by=organization"))
    assert {r["organization"]: r["requests"] for r in got} == expected
    # Filtering on someone else's tenant or key yields nothing, not their data.
    other = "other-tenant" if "tenant" in expected else "tenant"
    if other not in expected:
        assert rows(client.get(f"/api/usage/?organization={other}")) == []
        key = keys["other"] if other == "other-tenant" else keys["owner"]
        assert rows(client.get(f"/api/usage/?key={key.pk}")) == []


def test_billing_role_sees_no_usage(tenant_org: Organization, keys: Any) -> None:
    from portal.models import Membership
    from tests.conftest import make_member

    billing = make_member("billing", tenant_org, Membership.Role.BILLING)
    assert rows(client_for(billing).get("/api/usage/")) == []


def test_bad_parameters_are_400(tenant_owner: Any, keys: Any) -> None:
    client = client_for(tenant_owner)
    assert client.get("/api/usage/?group_by=secret").status_code == 400
    assert client.get("/api/usage/?group_by=").status_code == 400
    assert client.get("/api/usage/?start=yesterday").status_code == 400
    assert client.get("/api/usage/?start=2026-03-10&end=2026-03-01").status_code == 400
    assert client.get("/api/usage/?key=abc").status_code == 400
    # Found by the schema fuzzer: an id beyond 64 bits overflowed SQLite's driver (a 500).
    assert client.get(f"/api/usage/?key={2**70}").status_code == 400


def test_usage_is_paginated(tenant_owner: Any, keys: Any) -> None:
    page = client_for(tenant_owner).get("/api/usage/?page_size=2").json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]


def test_usage_query_count_does_not_grow_with_events(
    tenant_owner: Any, keys: dict[str, ApiKey], django_assert_max_num_queries: Any
) -> None:
    client = client_for(tenant_owner)
    with django_assert_max_num_queries(10) as one:
        client.get("/api/usage/?group_by=day,model,key")
    for n in range(60):
        event(keys["owner"], f"m{n % 7}", days_ago=n % 20)
    with django_assert_max_num_queries(len(one.captured_queries)):
        client.get("/api/usage/?group_by=day,model,key")


# --- Audit ----------------------------------------------------------------------------------


@pytest.fixture
def audited(keys: Any, tenant_owner: Any) -> None:
    services.api_key_revoke(api_key=keys["owner"], actor=tenant_owner)
    services.channel_create(
        name="c", base_url="http://u.test/v1", secret="s", models=["m"], actor="test"
    )


@pytest.mark.parametrize(
    ("persona", "expected_orgs"),
    [
        ("operator_user", {"tenant", "other-tenant", None}),
        ("reseller_admin", {"tenant"}),
        ("tenant_owner", {"tenant"}),
        ("outsider", {"other-tenant"}),
        ("tenant_member", set()),
    ],
)
def test_audit_log_is_scoped(
    request: pytest.FixtureRequest, audited: None, persona: str, expected_orgs: set[Any]
) -> None:
    got = rows(client_for(request.getfixturevalue(persona)).get("/api/audit/?page_size=500"))
    assert {r["organization"] for r in got} == expected_orgs
    if got:
        assert got[0]["created_at"] >= got[-1]["created_at"]


def test_audit_filters(tenant_owner: Any, audited: None) -> None:
    got = rows(client_for(tenant_owner).get("/api/audit/?action=api_key.revoke"))
    assert [r["action"] for r in got] == ["api_key.revoke"]
    assert got[0]["actor"] == "tenant-owner"
    assert AuditEntry.objects.count() > len(got)


def test_filters_and_groups_by_surface(tenant_owner: Any, keys: dict[str, ApiKey]) -> None:
    event(keys["owner"], "sim-small", surface="responses", prompt=20, completion=4)
    event(keys["owner"], "sim-small", surface="messages", prompt=30, completion=6)
    event(keys["other"], "sim-small", surface="messages", prompt=999)  # another tenant's
    client = client_for(tenant_owner)
    messages = rows(client.get("/api/usage/?group_by=model&surface=messages"))
    assert [(r["model"], r["requests"], r["prompt_tokens"]) for r in messages] == [
        ("sim-small", 1, 30)
    ]
    grouped = rows(client.get("/api/usage/?group_by=surface"))
    assert {r["surface"]: r["requests"] for r in grouped} == {
        "chat": 4,
        "responses": 1,
        "messages": 1,
    }
    assert client.get("/api/usage/?surface=telepathy").status_code == 400
