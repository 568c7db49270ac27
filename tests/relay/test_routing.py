"""Channel choice, failover, breakers and health checks, against simulator channels."""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from typing import Any

import pytest

from portal.models import AuditEntry, CatalogModel, Channel, ChannelModel
from relay import health
from relay.routing import attempt_order
from relay.snapshot import Route
from relay.tasks import channels_health_check
from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events


def _route(channel_id: int, priority: int, weight: int) -> Route:
    return Route(
        channel_id, f"c{channel_id}", "http://x/v1/chat/completions", "s", "m", priority, weight
    )


def test_attempt_order_follows_priority_then_weight() -> None:
    routes = [_route(1, 5, 1), _route(2, 5, 3), _route(3, 9, 1), _route(4, 0, 1)]
    rng = random.Random(7)
    firsts: Counter[int] = Counter()
    for _ in range(20_000):
        order = attempt_order(routes, rng)
        assert order[0].channel_id == 3  # the only top-priority channel
        assert order[-1].channel_id == 4
        assert sorted(r.channel_id for r in order) == [1, 2, 3, 4]  # each exactly once
        firsts[order[1].channel_id] += 1
    share = firsts[2] / 20_000
    assert 0.73 < share < 0.77  # weight 3 of 4


def _settle(gateway: Gateway) -> None:
    gateway.caught_up()


def test_weighted_selection_over_real_requests(gateway: Gateway, sim: Simulator) -> None:
    gateway.channel.base_url = sim.channel_url("tokens=2")
    gateway.channel.weight = 1
    gateway.channel.save()
    heavy = gateway.add_channel(sim.channel_url("tokens=3"), name="heavy", weight=3)
    _settle(gateway)
    for n in range(240):
        # Each request its own conversation: cache affinity keeps one conversation on one
        # channel, and the weights hold across conversations.
        body = chat_body(user=f"conversation-{n}")
        assert gateway.client.post("/v1/chat/completions", json=body).status_code == 200
    counts = Counter(e.channel_id for e in usage_events(240))
    assert counts[gateway.channel.pk] + counts[heavy.pk] == 240
    # Expected 180 of 240 on the heavy channel; 5 standard deviations is about ±34.
    assert 146 < counts[heavy.pk] < 214


def _refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"  # nothing listens there any more


def test_failover_past_500_429_timeout_and_refused_connection(
    gateway: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    relay_settings.RELAY_MAX_ATTEMPTS = 5
    gateway.channel.priority = 0
    gateway.channel.save()
    bad = [
        gateway.add_channel(sim.channel_url("fail=500"), name="five-hundred", priority=40),
        gateway.add_channel(sim.channel_url("fail=429"), name="rate-limited", priority=30),
        gateway.add_channel(_refused_url(), name="refused", priority=20),
    ]
    hanging = gateway.add_channel(sim.channel_url("hang"), name="hanging", priority=10)
    hanging.first_byte_timeout = 0.5
    hanging.save()
    _settle(gateway)

    response = gateway.client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    (event,) = usage_events(1)
    tried = [a["channel"] for a in event.attempts]
    assert tried == [bad[0].pk, bad[1].pk, bad[2].pk, hanging.pk, gateway.channel.pk]
    assert [a.get("status") for a in event.attempts[:2]] == [500, 429]
    assert event.attempts[2]["error"] == "ConnectError"
    assert event.attempts[3]["error"] == "timeout"
    assert event.channel_id == gateway.channel.pk
    assert event.status_code == 200


def test_a_request_error_is_not_retried(gateway: Gateway, sim: Simulator) -> None:
    gateway.add_channel(sim.channel_url("fail=400"), name="strict", priority=10)
    _settle(gateway)
    sim.client.delete("/_sim/requests")

    response = gateway.client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 400
    seen = sim.requests()
    assert len(seen) == 1 and "fail=400" in seen[0]["path"]


def test_breaker_opens_after_repeated_failures_and_closes_after_a_probe(
    gateway: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 3
    relay_settings.RELAY_BREAKER_COOLDOWN = 1.0
    flaky = gateway.add_channel(sim.channel_url("fail_first=3"), name="flaky", priority=10)
    _settle(gateway)

    for _ in range(3):
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    # Failures are counted off the client's path: the third one opens the breaker a moment
    # after its request was answered.
    deadline = time.monotonic() + 5
    while (health.breaker_states() or {}).get(flaky.pk) != "open":
        assert time.monotonic() < deadline, "three failures did not open the breaker"
        time.sleep(0.01)
    for _ in range(5):
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    events = usage_events(8)
    on_flaky = [e for e in events if any(a["channel"] == flaky.pk for a in e.attempts)]
    assert len(on_flaky) == 3, "the open breaker should have kept traffic off the channel"
    assert all(e.channel_id == gateway.channel.pk for e in events)

    time.sleep(1.3)  # cool-down over: the next request probes the channel, which now works
    for _ in range(3):
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    latest = usage_events(11)[-3:]
    assert [e.channel_id for e in latest] == [flaky.pk] * 3


def test_refused_credentials_suspend_the_channel_and_the_health_check_resumes_it(
    gateway: Gateway, sim: Simulator
) -> None:
    locked = gateway.add_channel(
        sim.channel_url("fail_first=1", "fail=401"), name="locked", priority=10
    )
    _settle(gateway)

    response = gateway.client.post("/v1/chat/completions", json=chat_body())

    assert response.status_code == 200  # served by the primary channel meanwhile
    deadline = time.monotonic() + 5
    while Channel.objects.get(pk=locked.pk).status != Channel.Status.SUSPENDED:
        assert time.monotonic() < deadline, "the channel was not suspended"
        time.sleep(0.05)
    locked.refresh_from_db()
    assert "401" in locked.status_reason
    assert AuditEntry.objects.filter(action="channel.suspend", target_id=str(locked.pk)).exists()

    # The provider recovered (fail_first used up): the scheduled check brings it back.
    # (Celery runs tasks eagerly here; CI also runs them on a real worker elsewhere.)
    results = channels_health_check.apply().get()

    assert results[locked.pk] is True
    locked.refresh_from_db()
    assert locked.status == Channel.Status.ENABLED
    assert locked.last_check_ok is True
    assert locked.last_check_latency_ms is not None
    _settle(gateway)
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert usage_events(2)[-1].channel_id == locked.pk


def test_health_check_records_a_failing_channel(gateway: Gateway, sim: Simulator) -> None:
    broken = gateway.add_channel(sim.channel_url("fail=503"), name="broken")

    result = health.channel_check(broken)

    assert not result.ok and result.status == 503
    broken.refresh_from_db()
    assert broken.last_check_ok is False
    assert broken.last_check_error == "HTTP 503"
    assert broken.status == Channel.Status.ENABLED  # only refused credentials suspend


@pytest.mark.parametrize("level", ["key", "tenant", "key-overrides-tenant", "none"])
def test_channel_groups_restrict_keys(gateway: Gateway, sim: Simulator, level: str) -> None:
    premium = gateway.add_channel(sim.channel_url("tokens=4"), name="premium", priority=10)
    premium.group = "premium"
    premium.save()
    gateway.api_key.channel_groups = {"key": ["default"], "key-overrides-tenant": ["premium"]}.get(
        level, []
    )
    gateway.api_key.save()
    gateway.tenant.channel_groups = ["default"] if "tenant" in level else []
    gateway.tenant.save()
    restricted = level in ("key", "tenant")
    _settle(gateway)

    for _ in range(3):
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    used = {e.channel_id for e in usage_events(3)}
    assert used == ({gateway.channel.pk} if restricted else {premium.pk})


@pytest.mark.parametrize("named_by", ["nobody", "tenant", "key"])
def test_a_dedicated_channel_serves_only_keys_that_name_its_group(
    gateway: Gateway, sim: Simulator, named_by: str
) -> None:
    """A tenant given channels of its own (``dedicated``) keeps them: a tenant or key with
    no channel groups, allowed every group, never reaches them, nor sees the models only
    they serve."""
    dedicated = gateway.add_channel(sim.channel_url("tokens=4"), name="acme", priority=10)
    dedicated.group, dedicated.dedicated = "acme-only", True
    dedicated.save()
    own = CatalogModel.objects.create(public_id="acme-model", owned_by="tollgate")
    gateway.price(own)
    ChannelModel.objects.create(channel=dedicated, model=own, upstream_name="sim-upstream")
    if named_by == "tenant":
        gateway.tenant.channel_groups = ["acme-only", "default"]
        gateway.tenant.save()
    elif named_by == "key":
        gateway.api_key.channel_groups = ["acme-only"]
        gateway.api_key.save()
    _settle(gateway)
    entitled = named_by != "nobody"

    for _ in range(3):
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    used = {e.channel_id for e in usage_events(3)}
    assert used == ({dedicated.pk} if entitled else {gateway.channel.pk})
    listed = {m["id"] for m in gateway.client.get("/v1/models").json()["data"]}
    assert ("acme-model" in listed) is entitled
    asked = gateway.client.post("/v1/chat/completions", json=chat_body(model="acme-model"))
    retrieved = gateway.client.get("/v1/models/acme-model")
    if entitled:
        assert (asked.status_code, retrieved.status_code) == (200, 200), asked.text
    else:  # to this key the model is not there at all
        assert (asked.status_code, retrieved.status_code) == (404, 404)
        assert asked.json()["error"]["code"] == "model_not_found"


def test_an_operator_limits_a_tenant_to_a_channel_group_from_the_admin(
    gateway: Gateway, sim: Simulator, client: Any, operator_user: Any
) -> None:
    """What the admin's tenant form saves reaches every relay: its keys use that group's
    channels only, and its own requests-per-minute limit holds."""
    dedicated = gateway.add_channel(sim.channel_url("tokens=4"), name="dedicated", priority=10)
    dedicated.group = "acme-only"
    dedicated.save()
    _settle(gateway)
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert usage_events(1)[0].channel_id == dedicated.pk  # the higher priority, for now
    client.force_login(operator_user)
    tenant = gateway.tenant

    response = client.post(
        f"/admin/portal/organization/{tenant.pk}/change/",
        {
            "name": tenant.name,
            "slug": tenant.slug,
            "is_active": "on",
            "channel_groups": "default",
            "rpm_limit": "3",
            "memberships-TOTAL_FORMS": 0,
            "memberships-INITIAL_FORMS": 0,
        },
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert (tenant.channel_groups, tenant.rpm_limit) == (["default"], 3)
    entry = AuditEntry.objects.filter(action="organization.update").latest("pk")
    assert entry.data["changed"]["channel_groups"] == ["default"]
    _settle(gateway)
    statuses = [
        gateway.client.post("/v1/chat/completions", json=chat_body()).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]
    served = [e for e in usage_events(4)[1:] if e.status_code == 200]
    assert [e.channel_id for e in served] == [gateway.channel.pk] * 3


def test_an_operator_tests_channels_on_demand_from_the_admin(
    gateway: Gateway, sim: Simulator, client: Any, operator_user: Any
) -> None:
    broken = gateway.add_channel(sim.channel_url("fail=500"), name="broken")
    client.force_login(operator_user)

    response = client.post(
        "/admin/portal/channel/",
        {"action": "test_selected", "_selected_action": [gateway.channel.pk, broken.pk]},
        follow=True,
    )

    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    assert any(m.startswith("primary: OK in") for m in shown), shown
    assert any(m.startswith("broken: failed") and "HTTP 500" in m for m in shown), shown
    gateway.channel.refresh_from_db()
    assert gateway.channel.last_check_ok is True


def test_a_channel_total_timeout_cuts_a_stream_that_runs_too_long(
    gateway: Gateway, sim: Simulator
) -> None:
    gateway.channel.base_url = sim.channel_url("tps=4", "tokens=40")  # ten seconds of tokens
    gateway.channel.total_timeout = 1.0
    gateway.channel.save()
    _settle(gateway)

    started = time.monotonic()
    with gateway.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]

    assert time.monotonic() - started < 5
    assert response.status_code == 200
    assert '"upstream_timeout"' in lines[-1]
    (event,) = usage_events(1)
    assert not event.completed
    assert event.error_code == "upstream_timeout"
    assert 0 < event.completion_tokens < 40
