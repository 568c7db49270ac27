"""The usage page: totals, inline SVG charts by day, by-model table, request log, filters."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageEvent
from console.views.charts import compact, nice_ceiling, stacked_bars
from portal import services
from portal.models import ApiKey, Organization
from tests.console.conftest import api_client_for, client_for

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 5, 20, 15, 0, tzinfo=UTC)
USAGE_URL = reverse("usage", args=["tenant"])


def event(key: ApiKey, model: str, *, days_ago: int = 0, status: int = 200, **extra: Any) -> None:
    UsageEvent.objects.create(
        request_id=uuid.uuid4().hex,
        created_at=NOW - timedelta(days=days_ago, minutes=1),
        tenant=key.tenant,
        api_key=key,
        model=model,
        prompt_tokens=extra.pop("prompt", 100),
        completion_tokens=extra.pop("completion", 40),
        status_code=status,
        total_latency_ms=extra.pop("latency", 250),
        **extra,
    )


@pytest.fixture(autouse=True)
def frozen() -> Any:
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def keys(tenant_org: Organization, tenant_owner: Any, tenant_member: Any) -> dict[str, ApiKey]:
    return {
        "owner": services.api_key_create(tenant=tenant_org, name="backend", actor=tenant_owner)[0],
        "member": services.api_key_create(tenant=tenant_org, name="laptop", actor=tenant_member)[0],
    }


def test_empty_usage_points_to_the_next_step(tenant_owner: Any, tenant_org: Organization) -> None:
    html = client_for(tenant_owner).get(USAGE_URL).content.decode()
    assert "No requests in this period." in html and "Create an API key" in html


def test_usage_page_shows_totals_charts_models_and_requests(
    tenant_owner: Any, keys: dict[str, ApiKey]
) -> None:
    event(keys["owner"], "sim-small")
    event(keys["owner"], "sim-small", days_ago=2, status=502, prompt=0, completion=0)
    event(keys["member"], "sim-large", days_ago=3, prompt=1000, completion=500, stream=True)
    event(keys["owner"], "sim-old", days_ago=45)

    html = client_for(tenant_owner).get(USAGE_URL).content.decode()

    assert html.count("<svg") == 2 and 'role="img"' in html
    assert "Tokens per day" in html and "Requests per day" in html
    # One tooltip per bar; the day with the stream has its tokens in it.
    assert "May 17: Prompt 1,000, Completion 500 tokens" in html
    assert "May 18: Succeeded 0, Failed 1 requests" in html
    assert re.search(r"<div class=\"value\">3</div><div class=\"label\">requests", html)
    assert "sim-large" in html and "sim-small" in html
    assert "sim-old" not in html  # older than the 30-day default
    assert "badge err" in html and "502" in html and ">stream<" in html


def test_filters_narrow_the_page(tenant_owner: Any, keys: dict[str, ApiKey]) -> None:
    event(keys["owner"], "sim-small")
    event(keys["member"], "sim-large")
    event(keys["owner"], "sim-old", days_ago=60)
    client = client_for(tenant_owner)

    by_key = client.get(USAGE_URL, {"key": keys["member"].pk}).content.decode()
    assert "sim-large" in by_key and ">sim-small<" not in by_key
    longer = client.get(USAGE_URL, {"days": "90"}).content.decode()
    assert "sim-old" in longer
    # Unknown values are ignored rather than failing.
    assert client.get(USAGE_URL, {"days": "9999", "key": "x"}).status_code == 200


def test_members_see_their_own_keys_usage_only(tenant_member: Any, keys: dict[str, ApiKey]) -> None:
    event(keys["owner"], "owners-model")
    event(keys["member"], "members-model")
    html = client_for(tenant_member).get(USAGE_URL).content.decode()
    assert "members-model" in html and "owners-model" not in html
    assert "backend" not in html  # nor the owner's key in the filter


def test_usage_page_query_count_is_bounded(
    tenant_owner: Any, keys: dict[str, ApiKey], django_assert_max_num_queries: Any
) -> None:
    client = client_for(tenant_owner)
    event(keys["owner"], "m")
    with django_assert_max_num_queries(20) as one:
        client.get(USAGE_URL)
    for n in range(120):
        event(keys["owner" if n % 2 else "member"], f"m{n % 9}", days_ago=n % 30)
    with django_assert_max_num_queries(len(one.captured_queries)):
        client.get(USAGE_URL)


def test_operator_overview_charts_platform_traffic(
    operator_user: Any, keys: dict[str, ApiKey]
) -> None:
    event(keys["owner"], "sim-small")
    event(keys["owner"], "sim-small", status=500)
    html = client_for(operator_user).get(reverse("operator")).content.decode()
    assert "Platform overview" in html and html.count("<svg") == 2
    assert "50.0%" in html  # error rate
    assert "No channels yet." in html


def test_tenant_overview_summarises_the_month(tenant_owner: Any, keys: dict[str, ApiKey]) -> None:
    event(keys["owner"], "sim-small")
    html = client_for(tenant_owner).get(reverse("org", args=["tenant"])).content.decode()
    assert "requests, 30 days" in html and "active API keys" in html


# --- The chart geometry ---------------------------------------------------------------------


def test_nice_ceiling_and_compact_labels() -> None:
    assert [nice_ceiling(v) for v in (0, 1, 3, 7, 11, 999, 1001)] == [1, 1, 5, 10, 20, 1000, 2000]
    assert [compact(v) for v in (0, 950, 12_300, 4_000_000)] == ["0", "950", "12.3k", "4M"]
    # Small amounts of money: fractional scales, plain decimals.
    assert [nice_ceiling(v) for v in (0.000048, 0.3, 0.06)] == [0.00005, 0.5, 0.1]
    assert [compact(v) for v in (0.0000125, 0.25)] == ["0.000013", "0.25"]


def test_stacked_bars_stay_inside_the_plot() -> None:
    chart = stacked_bars(
        "t", ["a", "b", "c"], [("x", "series-a", [5, 0, 10]), ("y", "series-b", [5, 0, 0])]
    )
    assert not chart.empty and len(chart.bars) == 3
    tallest = chart.bars[0]
    top = min(s.y for s in tallest.segments)
    assert top >= 0 and abs(sum(s.height for s in tallest.segments) - (chart.baseline - top)) < 0.1
    assert chart.ticks[-1].label == "10"
    assert stacked_bars("t", ["a"], [("x", "series-a", [0])]).empty


def test_usage_shows_spend_by_day_and_model(market: Any, tenant_owner: Any) -> None:
    from billing.money import format_micros
    from billing.services.common import account_for
    from tests.billing.conftest import record_event

    account_for(market.tenant)
    events = [
        record_event(
            tenant=market.tenant,
            api_key=market.keys[market.tenant.pk][0],
            model=model,
            created_at=timezone.now() - timedelta(days=2),
            prompt_tokens=30_000,
            completion_tokens=4_000,
        )
        for model in ("model-a", "model-b")
    ]
    html = client_for(tenant_owner).get(reverse("usage", args=["tenant"])).content.decode()
    total = sum(e.cost_retail_micros for e in events)
    assert total > 0
    assert f"{format_micros(total)} USD" in html
    assert "Spend per day (USD)" in html
    for e in events:
        assert f'<td class="num">{format_micros(e.cost_retail_micros)}</td>' in html
    api = api_client_for(tenant_owner).get("/api/usage/", {"group_by": "model"}).json()
    assert {r["model"]: r["spend_micros"] for r in api["results"]} == {
        e.model: e.cost_retail_micros for e in events
    }


def test_usage_page_filters_by_surface(tenant_owner: Any, keys: dict[str, ApiKey]) -> None:
    event(keys["owner"], "chat-model")
    event(keys["owner"], "messages-model", surface="messages")
    client = client_for(tenant_owner)
    html = client.get(USAGE_URL, {"surface": "messages"}).content.decode()
    assert "messages-model" in html and "chat-model" not in html
    assert '<span class="badge muted">messages</span>' in html
    everything = client.get(USAGE_URL).content.decode()
    assert "messages-model" in everything and "chat-model" in everything


def test_usage_exports_as_csv_scoped_to_the_persons_keys(
    market: Any, tenant_owner: Any, tenant_member: Any
) -> None:
    import csv
    import io

    from django.utils import timezone

    from portal import services
    from tests.billing.conftest import record_event

    member_key, _ = services.api_key_create(tenant=market.tenant, name="mine", actor=tenant_member)
    owner_key = market.keys[market.tenant.pk][0]
    for key, tokens in ((owner_key, 1000), (member_key, 2000)):
        record_event(
            tenant=market.tenant,
            api_key=key,
            model="model-a",
            created_at=timezone.now(),
            prompt_tokens=tokens,
            completion_tokens=10,
        )
    url = reverse("usage_export", args=["tenant"])
    page = client_for(tenant_owner).get(reverse("usage", args=["tenant"])).content.decode()
    assert url in page
    response = client_for(tenant_owner).get(url)
    assert response.streaming and response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert sorted(r["api_key"] for r in rows) == ["mine", owner_key.name]
    first = next(r for r in rows if r["api_key"] == "mine")
    assert first["prompt_tokens"] == "2000" and first["currency"] == "USD"
    assert "wholesale" not in ",".join(rows[0].keys())
    # A member exports only the requests of their own keys.
    member_rows = list(
        csv.DictReader(
            io.StringIO(b"".join(client_for(tenant_member).get(url).streaming_content).decode())
        )
    )
    assert [r["api_key"] for r in member_rows] == ["mine"]
