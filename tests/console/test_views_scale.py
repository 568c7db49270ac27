"""Dashboard and API list pages stay fast with 100,000 usage events and 1,000 keys.

Seeding takes a while, so this runs only with TOLLGATE_SCALE_TEST=1 (CI sets it in a job
of its own); the query-count guards in the other test modules run every time.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from billing import services as billing
from billing.models import UsageEvent
from billing.services.common import account_for
from portal.models import ApiKey, Organization

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(
        os.environ.get("TOLLGATE_SCALE_TEST") != "1", reason="set TOLLGATE_SCALE_TEST=1"
    ),
]

EVENTS = 100_000
KEYS = 1_000
# Generous for a shared CI machine; locally each page takes a fraction of this.
BUDGET_SECONDS = 2.0


@pytest.fixture
def seeded(tenant_org: Organization, tenant_owner: Any) -> list[ApiKey]:
    keys = []
    for n in range(KEYS):
        key = ApiKey(tenant=tenant_org, name=f"key-{n}", created_by=tenant_owner)
        key.prefix, key.digest = f"sk-tg-{n:06d}", f"{n:064x}"
        keys.append(key)
    keys = ApiKey.objects.bulk_create(keys)
    now = timezone.now()
    models = [f"model-{m}" for m in range(12)]
    batch: list[UsageEvent] = []
    for n in range(EVENTS):
        batch.append(
            UsageEvent(
                request_id=f"req-{n}",
                created_at=now - timedelta(minutes=n * 1.3),  # ~90 days of traffic
                tenant=tenant_org,
                api_key=keys[n % KEYS],
                model=models[n % len(models)],
                prompt_tokens=100 + n % 50,
                completion_tokens=20 + n % 30,
                status_code=200 if n % 40 else 502,
                total_latency_ms=100 + n % 400,
            )
        )
        if len(batch) == 5_000:
            UsageEvent.objects.bulk_create(batch)
            batch = []
    return keys


def timed(fetch: Any) -> tuple[int, float]:
    started = time.perf_counter()
    status = fetch()
    return status, time.perf_counter() - started


def test_pages_and_endpoints_stay_fast(
    seeded: list[ApiKey], tenant_owner: Any, operator_user: Any, reseller_admin: Any
) -> None:
    owner, operator, reseller, api = Client(), Client(), Client(), APIClient()
    owner.force_login(tenant_owner)
    operator.force_login(operator_user)
    reseller.force_login(reseller_admin)
    api.force_login(tenant_owner)
    billing.account_topup(account=account_for(seeded[0].tenant), amount_micros=10, actor="t")
    checks = {
        "keys page": lambda: owner.get(reverse("keys", args=["tenant"])).status_code,
        "usage page": lambda: owner.get(reverse("usage", args=["tenant"])).status_code,
        "usage page, 90 days": lambda: (
            owner.get(reverse("usage", args=["tenant"]), {"days": "90"}).status_code
        ),
        "usage page, one key": lambda: (
            owner.get(reverse("usage", args=["tenant"]), {"key": seeded[3].pk}).status_code
        ),
        "tenant overview": lambda: owner.get(reverse("org", args=["tenant"])).status_code,
        "operator overview": lambda: operator.get(reverse("operator")).status_code,
        "operator usage log": lambda: operator.get(reverse("usage_log")).status_code,
        "usage log, last page": lambda: (
            operator.get(reverse("usage_log"), {"page": "2000"}).status_code
        ),
        "usage log, errors of one tenant": lambda: (
            operator.get(reverse("usage_log"), {"tenant": "tenant", "status": "error"}).status_code
        ),
        "usage log, one key prefix": lambda: (
            operator.get(reverse("usage_log"), {"key": "sk-tg-000003"}).status_code
        ),
        "tenant billing": lambda: owner.get(reverse("billing", args=["tenant"])).status_code,
        "tenant budget": lambda: owner.get(reverse("budget", args=["tenant"])).status_code,
        "reseller tenants": lambda: reseller.get(reverse("tenants", args=["reseller"])).status_code,
        "reseller terms": lambda: reseller.get(reverse("terms", args=["tenant"])).status_code,
        "reseller revenue": lambda: reseller.get(reverse("revenue", args=["reseller"])).status_code,
        "operator invoices": lambda: operator.get(reverse("operator_invoices")).status_code,
        "api keys": lambda: api.get("/api/keys/").status_code,
        "api usage by day and model": lambda: api.get("/api/usage/").status_code,
        "api usage by key, 90 days": lambda: (
            api.get(
                "/api/usage/",
                {"group_by": "key", "start": str(timezone.now().date() - timedelta(89))},
            ).status_code
        ),
    }
    owner.get(reverse("models_public"))  # warm up: template loading is not what we measure
    results = {name: timed(fetch) for name, fetch in checks.items()}
    print("\n" + "\n".join(f"{n:32} {s} {t * 1000:7.0f} ms" for n, (s, t) in results.items()))
    assert {name: status for name, (status, _) in results.items()} == dict.fromkeys(checks, 200)
    slow = {name: round(t, 2) for name, (_, t) in results.items() if t > BUDGET_SECONDS}
    assert not slow, slow
