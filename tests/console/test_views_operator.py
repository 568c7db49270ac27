"""Operator pages: channels (create, edit, enable, disable), the catalog's availability,
organisations, the audit log, and the public models page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db.models import F
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from portal import services
from portal.models import AuditEntry, CatalogModel, Channel, Organization
from relay.simulator import build_app
from tests.billing.conftest import generate_month
from tests.conftest import price_models
from tests.console.conftest import api_client_for, client_for
from tests.servers import serve_in_thread

pytestmark = pytest.mark.django_db

SECRET = "sk-upstream-dashboard-9e41"


def test_adding_a_channel_makes_its_models_available(operator: Client) -> None:
    price_models("sim-large", "sim-small")
    CatalogModel.objects.create(public_id="sim-unpriced")
    catalog = operator.get(reverse("catalog")).content.decode()
    assert "no active channel" in catalog

    response = operator.post(
        reverse("channel_create"),
        {
            "name": "Simulator",
            "provider_type": "openai",
            "base_url": "http://127.0.0.1:9100/v1",
            "secret": SECRET,
            "priority": "1",
            "weight": "1",
            "models": "sim-small\nsim-large = large-upstream\nsim-unpriced\n# a comment",
        },
        follow=True,
    )

    html = response.content.decode()
    assert "Channel “Simulator” created and enabled." in html
    assert "large-upstream" in html and SECRET not in html
    channel = Channel.objects.get()
    assert channel.secret == SECRET
    assert {link.upstream_model() for link in channel.served.all()} == {
        "sim-small",
        "large-upstream",
        "sim-unpriced",
    }
    catalog = operator.get(reverse("catalog")).content.decode()
    assert "no active channel" not in catalog and catalog.count("badge ok") == 2
    # Served but priced by no list: operators see why; it is never offered as available.
    assert catalog.count(">unpriced<") == 1
    public = Client().get(reverse("models_public")).content.decode()
    assert public.count(">available<") == 2 and ">unpriced<" not in public


def test_channel_form_errors_are_inline(operator: Client) -> None:
    response = operator.post(
        reverse("channel_create"),
        {
            "name": "",
            "provider_type": "openai",
            "base_url": "ftp://nope",
            "priority": "0",
            "weight": "1",
            "models": "has space",
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert 'id="id_name_error"' in html and 'id="id_models_error"' in html
    assert not Channel.objects.exists()
    response = operator.post(
        reverse("channel_create"),
        {
            "name": "x",
            "provider_type": "openai",
            "base_url": "ftp://nope",
            "priority": "0",
            "weight": "1",
        },
    )
    assert response.status_code == 400
    assert "http:// or https://" in response.content.decode()  # the model's own validator


@pytest.fixture
def channel(db: None) -> Channel:
    return services.channel_create(
        name="Primary",
        base_url="http://u.test/v1",
        secret=SECRET,
        models=["sim-small"],
        actor="test",
    )


def test_editing_keeps_the_secret_unless_a_new_one_is_given(
    operator: Client, channel: Channel
) -> None:
    url = reverse("channel_edit", args=[channel.pk])
    form = operator.get(url).content.decode()
    assert SECRET not in form and "set (hidden)" in form
    data = {
        "name": "Primary",
        "provider_type": "openai",
        "base_url": "http://u2.test/v1",
        "priority": "5",
        "weight": "2",
        "secret": "",
        "models": "sim-xl",
    }
    assert operator.post(url, data).status_code == 302
    channel.refresh_from_db()
    assert (channel.base_url, channel.priority, channel.secret) == ("http://u2.test/v1", 5, SECRET)
    assert channel.served.count() == 2
    operator.post(url, {**data, "secret": "sk-rotated"})
    channel.refresh_from_db()
    assert channel.secret == "sk-rotated"
    actions = list(AuditEntry.objects.values_list("action", flat=True))
    assert "channel.update" in actions and "channel.secret_update" in actions


def test_disable_and_enable_switch_availability(operator: Client, channel: Channel) -> None:
    status_url = reverse("channel_status", args=[channel.pk])
    operator.post(status_url, {"action": "disable"})
    channel.refresh_from_db()
    assert channel.status == "disabled"
    assert "no active channel" in operator.get(reverse("catalog")).content.decode()
    assert "unavailable" in Client().get(reverse("models_public")).content.decode()
    html = operator.get(reverse("channels")).content.decode()
    assert "Enable Primary" in html and "Disabled by an operator" in html
    operator.post(status_url, {"action": "enable"})
    channel.refresh_from_db()
    assert channel.status == "enabled"
    assert [e.action for e in AuditEntry.objects.filter(action__startswith="channel.")][:2] == [
        "channel.enable",
        "channel.disable",
    ]


def test_catalog_form_upserts_models(operator: Client, channel: Channel) -> None:
    edit = operator.get(reverse("catalog"), {"edit": "sim-small"}).content.decode()
    assert 'value="sim-small"' in edit
    response = operator.post(
        reverse("catalog"),
        {
            "public_id": "sim-small",
            "owned_by": "simulator",
            "capabilities": "chat, tools",
            "context_window": "32000",
        },
    )
    assert response.status_code == 302
    model = CatalogModel.objects.get(public_id="sim-small")
    assert (model.owned_by, model.capabilities, model.context_window) == (
        "simulator",
        ["chat", "tools"],
        32000,
    )
    bad = operator.post(reverse("catalog"), {"public_id": "a b", "owned_by": "x"})
    assert bad.status_code == 400


def test_channel_pages_have_bounded_queries(
    operator: Client, channel: Channel, django_assert_max_num_queries: Any
) -> None:
    names = ("channels", "catalog", "operator")
    baseline = {}
    for name in names:
        with django_assert_max_num_queries(15) as one:
            assert operator.get(reverse(name)).status_code == 200
        baseline[name] = len(one.captured_queries)
    for n in range(12):
        services.channel_create(
            name=f"c{n}",
            base_url="http://u.test/v1",
            secret="",
            models=[f"m{n}", "sim-small"],
            actor="test",
        )
    for name in names:
        with django_assert_max_num_queries(baseline[name] + 3):
            assert operator.get(reverse(name)).status_code == 200


def test_operator_creates_resellers_and_tenants(
    operator: Client, platform_org: Organization
) -> None:
    response = operator.post(
        reverse("operator_orgs"),
        {"name": "Resell Co", "kind": "reseller", "parent": platform_org.pk},
        follow=True,
    )
    assert "Invite its first owner below." in response.content.decode()
    reseller = Organization.objects.get(slug="resell-co")
    bad = operator.post(
        reverse("operator_orgs"), {"name": "Bad", "kind": "reseller", "parent": reseller.pk}
    )
    assert bad.status_code == 400
    assert "cannot sit under" in bad.content.decode()


def test_operator_audit_log_lists_every_change(operator: Client, channel: Channel) -> None:
    html = operator.get(reverse("operator_audit")).content.decode()
    assert "channel.create" in html and SECRET not in html


def test_public_models_page_needs_no_login(channel: Channel) -> None:
    response = Client().get(reverse("models_public"))
    assert response.status_code == 200
    assert "sim-small" in response.content.decode()


SIM_KEY = "sk-sim-dashboard-test-3a7"


@pytest.fixture
def simulator() -> Iterator[str]:
    base_url, stop = serve_in_thread(build_app(latency_ms=5))
    yield base_url
    stop()


def test_test_button_reports_result_and_latency(operator: Client, simulator: str) -> None:
    good = services.channel_create(
        name="Sim",
        base_url=f"{simulator}/sim/key={SIM_KEY}/v1",
        secret=SIM_KEY,
        models=["sim-small"],
        actor="test",
    )
    bad = services.channel_create(
        name="Wrong key",
        base_url=f"{simulator}/sim/key={SIM_KEY}/v1",
        secret="sk-wrong",
        models=["sim-small"],
        actor="test",
    )
    ok = operator.post(reverse("channel_test", args=[good.pk]), follow=True).content.decode()
    assert re.search(r"“Sim” answered in \d+ ms\.", ok)
    failed = operator.post(reverse("channel_test", args=[bad.pk]), follow=True).content.decode()
    assert "“Wrong key” failed after" in failed and "HTTP 401" in failed
    good.refresh_from_db()
    assert good.last_check_ok is True and good.last_check_latency_ms is not None
    listing = operator.get(reverse("channels")).content.decode()
    assert 'badge ok">ok</span>' in listing and "HTTP 401" in listing
    # A check a moment ago reads "just now", not "0 minutes ago".
    assert "failed</span> just now" in listing and "0 minutes ago" not in listing
    three_ago = F("last_check_at") - timedelta(minutes=3)
    Channel.objects.filter(pk=bad.pk).update(last_check_at=three_ago)
    assert "failed</span> 3\xa0minutes ago" in operator.get(reverse("channels")).content.decode()
    api = APIClient()
    api.force_login(User.objects.get(username="operator"))
    result = api.post(f"/api/channels/{good.pk}/test/").json()
    assert result["ok"] is True and result["status"] == 200 and result["latency_ms"] >= 0
    assert api.get(f"/api/channels/{bad.pk}/").json()["last_check_error"] == "HTTP 401"


# --- The usage log --------------------------------------------------------------------------


@pytest.fixture
def traffic(market: Any) -> Any:
    """Two tenants' requests over March, through one channel, some failing."""
    generate_month(market, count=90)
    return market


def _log(operator: Client, **filters: Any) -> tuple[int, str]:
    response = operator.get(reverse("usage_log"), filters)
    return response.status_code, response.content.decode()


def _rows(html: str) -> int:
    return html.count("<tr data-request=")


def test_usage_log_filters_narrow_the_rows(operator: Client, traffic: Any) -> None:
    from billing.models import UsageEvent

    status, html = _log(operator)
    assert status == 200 and "Page 1 of 2" in html  # 90 events, 50 a page
    tenant = traffic.tenant
    key = traffic.keys[tenant.pk][1]
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"tenant": "tenant"}, UsageEvent.objects.filter(tenant=tenant)),
        ({"key": key.prefix}, UsageEvent.objects.filter(api_key=key)),
        ({"model": "model-b"}, UsageEvent.objects.filter(model="model-b")),
        ({"status": "error"}, UsageEvent.objects.filter(status_code__gte=400)),
        (
            {"channel": traffic.channel.pk, "status": "ok"},
            UsageEvent.objects.filter(channel=traffic.channel, status_code__lt=400),
        ),
        (
            {"start": "2026-03-10T00:00", "end": "2026-03-12T00:00"},
            UsageEvent.objects.filter(
                created_at__gte=datetime(2026, 3, 10, tzinfo=UTC),
                created_at__lt=datetime(2026, 3, 12, tzinfo=UTC),
            ),
        ),
    ]
    for filters, expected in cases:
        count = expected.count()
        assert 0 < count <= 50, filters
        status, html = _log(operator, **filters)
        assert status == 200 and _rows(html) == count, filters
    status, html = _log(operator, status="teapot", start="2026-03-12T00:00", end="2026-03-01T00:00")
    assert status == 400
    assert "Give ok, error or a three-digit status code." in html
    assert "The end comes after the start." in html


def test_usage_log_keeps_filters_across_pages(operator: Client, traffic: Any) -> None:
    from billing.models import UsageEvent

    assert UsageEvent.objects.filter(status_code__lt=400).count() > 50
    _, html = _log(operator, status="ok")
    assert "Page 1 of 2" in html and "?status=ok&amp;page=2" in html


def test_usage_log_query_count_does_not_grow_with_rows(
    operator: Client, traffic: Any, django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(12):
        assert operator.get(reverse("usage_log"), {"status": "ok"}).status_code == 200


def test_overview_shows_platform_revenue(operator: Client, market: Any) -> None:
    from django.utils import timezone

    from billing.money import format_micros
    from tests.billing.conftest import record_event

    html = operator.get(reverse("operator")).content.decode()
    assert "revenue: no priced usage" in html
    events = [
        record_event(
            tenant=tenant,
            api_key=market.keys[tenant.pk][0],
            model="model-b",
            created_at=timezone.now() - timedelta(days=1),
            prompt_tokens=40_000,
            completion_tokens=9_000,
        )
        for tenant in (market.tenant, market.direct_tenant)
    ]
    wholesale = sum(e.cost_wholesale_micros for e in events)
    retail = sum(e.cost_retail_micros for e in events)
    assert retail > wholesale > 0
    html = operator.get(reverse("operator")).content.decode()
    assert f"{format_micros(wholesale)} USD" in html and f"{format_micros(retail)} USD" in html
    assert "Platform revenue per day (USD)" in html


def test_revenue_chart_shows_a_day_of_fractions_of_a_cent(operator: Client, market: Any) -> None:
    """A day's revenue of 0.0018 USD is a bar, not "No requests" beside non-zero cards."""
    from django.utils import timezone

    from tests.billing.conftest import record_event

    tiny = record_event(
        tenant=market.tenant,
        api_key=market.keys[market.tenant.pk][0],
        model="model-a",
        created_at=timezone.now() - timedelta(hours=1),
        prompt_tokens=12_000,
        completion_tokens=0,
    )
    assert 0 < tiny.cost_wholesale_micros < 5_000  # under half a cent
    html = operator.get(reverse("operator")).content.decode()
    chart = html.split("Platform revenue per day (USD)", 1)[1].split("</figure>")[0]
    assert "No " not in chart and "<rect" in chart
    assert f"Revenue {tiny.cost_wholesale_micros / 1_000_000:.6f}".rstrip("0") in chart


def test_discover_models_offers_those_not_served_yet(operator: Client, operator_user: Any) -> None:
    base_url, stop = serve_in_thread(build_app())
    try:
        channel = services.channel_create(
            name="Sim",
            base_url=f"{base_url}/v1",
            secret=SECRET,
            models=["sim-small"],
            actor="test",
        )
        edit = reverse("channel_edit", args=[channel.pk])
        assert "Discover models" in operator.get(edit).content.decode()
        response = operator.post(reverse("channel_discover", args=[channel.pk]))
        html = response.content.decode()
        assert response.status_code == 200
        assert "The provider lists 2 models; 1 not served yet" in html
        assert re.search(r'<textarea name="models"[^>]*>\s*sim-large</textarea>', html)
        assert f'action="{edit}"' in html  # saving goes to the edit view, not back here
        assert channel.served.count() == 1  # nothing saved until the operator saves
        body = api_client_for(operator_user).post(f"/api/channels/{channel.pk}/discover/").json()
        assert body["ok"] and body["models"] == ["sim-large", "sim-small"]
        assert body["new"] == ["sim-large"]
    finally:
        stop()


def test_discover_models_of_a_bedrock_channel(
    operator: Client, operator_user: Any, outsider: Any
) -> None:
    """A native provider's listing reaches the form and the API the same way: Bedrock's
    control plane, SigV4-signed with the channel's key and checked by the simulator."""
    app = build_app()
    app.native.trust_aws("AKIADASHBOARD0001", "dashboard/secret+0123456789", "us-east-1")
    base_url, stop = serve_in_thread(app)
    try:
        channel = services.channel_create(
            name="Bedrock",
            provider_type="bedrock",
            base_url=base_url,
            secret='{"access_key_id": "AKIADASHBOARD0001", '
            '"secret_access_key": "dashboard/secret+0123456789"}',
            provider_settings={"region": "us-east-1"},
            models=["amazon.nova-micro-v1:0"],
            actor="test",
        )
        html = operator.post(reverse("channel_discover", args=[channel.pk])).content.decode()
        assert "The provider lists 4 models; 3 not served yet" in html
        offered = ["us.amazon.nova-micro-v1:0", "us.anthropic.claude-sim-v1:0"]
        assert re.search(
            r'<textarea name="models"[^>]*>\s*arn:aws:bedrock:[^<]*\n' + offered[0], html
        )
        assert "dashboard/secret" not in html
        api = api_client_for(operator_user).post(f"/api/channels/{channel.pk}/discover/")
        assert api.json()["new"][1:] == offered
        requests = len(app.requests)
        refused = client_for(outsider).post(reverse("channel_discover", args=[channel.pk]))
        assert refused.status_code in (403, 404) and len(app.requests) == requests
    finally:
        stop()


def test_channels_show_breaker_error_rate_and_failovers(
    operator: Client, market: Any, settings: Any
) -> None:
    """Breaker state from the relays' shared state; error rate and failovers from the
    last day's usage events."""
    import uuid as uuid_module

    from asgiref.sync import async_to_sync
    from django.utils import timezone

    from billing.models import UsageEvent
    from relay import shared
    from tests.billing.conftest import record_event

    flaky = market.channel
    spare = Channel.objects.create(name="spare", base_url="http://127.0.0.1:9/v1")
    now = timezone.now()
    for status, attempts, channel in (
        (200, [{"channel": flaky.pk, "status": 502}, {"channel": spare.pk, "status": 200}], spare),
        (200, [{"channel": flaky.pk, "status": 200}], flaky),
        (502, [{"channel": flaky.pk, "status": 502}], flaky),
    ):
        event = record_event(
            tenant=market.tenant,
            api_key=market.keys[market.tenant.pk][0],
            model="model-a",
            created_at=now,
            prompt_tokens=10,
            completion_tokens=1,
            status_code=status,
            channel=channel,
        )
        UsageEvent.objects.filter(pk=event.pk).update(attempts=attempts)

    async def trip() -> None:
        try:
            for _ in range(settings.RELAY_BREAKER_FAILURES):
                await shared.breakers().failure(flaky.pk, uuid_module.uuid4().hex)
        finally:
            await shared.close()

    async_to_sync(trip)()
    html = operator.get(reverse("channels")).content.decode()
    flaky_cell = html.split(f'data-testid="breaker-{flaky.pk}"', 1)[1].split("</td>", 1)[0]
    assert flaky_cell.startswith(">breaker open<")
    assert "2 requests, 50.0 % errors, 1 failover (24 h)" in flaky_cell
    spare_cell = html.split(f'data-testid="breaker-{spare.pk}"', 1)[1].split("</td>", 1)[0]
    assert spare_cell.startswith(">breaker closed<")
    assert "1 request, 0.0 % errors, 0 failovers (24 h)" in spare_cell
    overview = operator.get(reverse("operator")).content.decode()
    assert f'data-testid="breaker-{flaky.pk}">breaker open<' in overview
