"""GET /metrics and the JSON logs, against a real relay and simulator on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Histogram, multiprocess
from prometheus_client.parser import text_string_to_metric_families
from pythonjsonlogger.json import JsonFormatter

from billing.pricing import PricePair, Prices
from config.asgi import application
from relay import metrics
from relay.metering import Usage, UsageRecord
from relay.metrics import RequestIdFilter
from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator, chat_body, usage_events
from tests.servers import serve_in_thread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ROOT = Path(__file__).resolve().parents[2]


def scrape(gateway: Gateway) -> Samples:
    response = httpx.get(gateway.url + "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when it is not there yet (a counter never incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def present(samples: Samples, name: str, **labels: str) -> float:
    """A sample that must be there."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} missing from /metrics"
    return samples[key]


def test_requests_latency_tokens_and_spend_are_counted(gateway: Gateway) -> None:
    channel = str(gateway.channel.pk)
    before = scrape(gateway)

    plain = gateway.client.post("/v1/chat/completions", json=chat_body())
    assert plain.status_code == 200
    streamed = gateway.client.post(
        "/v1/chat/completions",
        json=chat_body(stream=True, stream_options={"include_usage": True}),
    )
    assert streamed.status_code == 200
    unknown = gateway.client.post("/v1/chat/completions", json=chat_body(model="no-such-model"))
    assert unknown.status_code == 404  # refused before any model: not a chat completion
    events = usage_events(2)
    assert len(events) == 2

    after = scrape(gateway)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"model": PUBLIC_MODEL, "channel": channel, "status": "200"}
    assert delta("tollgate_requests_total", **ok) == 2
    for stream in ("true", "false"):
        labels = {"model": PUBLIC_MODEL, "stream": stream}
        assert delta("tollgate_request_duration_seconds_count", **labels) == 1
        assert delta("tollgate_request_duration_seconds_bucket", le="+Inf", **labels) == 1
    upstream = {"model": PUBLIC_MODEL, "channel": channel}
    assert delta("tollgate_upstream_latency_seconds_count", **upstream) == 2
    assert delta("tollgate_tokens_total", model=PUBLIC_MODEL, kind="prompt") == sum(
        e.prompt_tokens for e in events
    )
    assert delta("tollgate_tokens_total", model=PUBLIC_MODEL, kind="completion") == sum(
        e.completion_tokens for e in events
    )
    spent = sum(e.cost_retail_micros for e in events)
    assert spent > 0
    currency = events[0].currency
    assert delta("tollgate_spend_micros_total", model=PUBLIC_MODEL, currency=currency) == spent


def test_upstream_errors_are_counted_by_status(gateway: Gateway, sim: Simulator) -> None:
    gateway.channel.base_url = sim.channel_url("fail=400")
    gateway.channel.save()
    time.sleep(0.5)  # the relay polls for changes every 0.2 s in tests
    before = scrape(gateway)
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 400
    after = scrape(gateway)
    labels = {"model": PUBLIC_MODEL, "channel": str(gateway.channel.pk), "status": "400"}
    assert (
        value(after, "tollgate_requests_total", **labels)
        - value(before, "tollgate_requests_total", **labels)
        == 1
    )


def test_limit_rejections_are_counted(gateway: Gateway) -> None:
    secret = gateway.new_key(name="limited", rpm_limit=1)
    headers = {"Authorization": f"Bearer {secret}"}
    before = value(scrape(gateway), "tollgate_limit_rejections_total", limit="requests")
    first = gateway.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
    assert first.status_code == 200
    for _ in range(2):
        refused = gateway.client.post("/v1/chat/completions", json=chat_body(), headers=headers)
        assert refused.status_code == 429
    after = value(scrape(gateway), "tollgate_limit_rejections_total", limit="requests")
    assert after - before == 2


def test_breaker_state_of_each_channel(
    gateway: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    relay_settings.RELAY_BREAKER_FAILURES = 1
    relay_settings.RELAY_BREAKER_COOLDOWN = 60
    broken = gateway.add_channel(sim.channel_url("fail=500"), name="broken", priority=10)
    time.sleep(0.5)
    closed = scrape(gateway)
    name = "tollgate_channel_breaker_state"
    assert present(closed, name, channel=str(broken.pk), channel_name="broken") == 0
    assert present(closed, name, channel=str(gateway.channel.pk), channel_name="primary") == 0

    # The broken channel fails once (its breaker opens), the primary answers.
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    deadline = time.monotonic() + 5
    while present(scrape(gateway), name, channel=str(broken.pk), channel_name="broken") != 1:
        assert time.monotonic() < deadline, "the breaker never showed as open"
        time.sleep(0.05)
    assert (
        present(scrape(gateway), name, channel=str(gateway.channel.pk), channel_name="primary") == 0
    )


def test_celery_queue_length_without_a_redis_broker_is_left_out(
    gateway: Gateway, settings: Any
) -> None:
    settings.CELERY_BROKER_URL = "memory://"
    names = {name for name, _ in scrape(gateway)}
    assert "tollgate_celery_queue_length" not in names
    assert "tollgate_requests_total" in names or "tollgate_channel_breaker_state" in names


@pytest.mark.services
def test_celery_queue_length_from_the_redis_broker(gateway: Gateway, settings: Any) -> None:
    import redis

    queue = f"tollgate-test-{uuid.uuid4().hex[:12]}"  # never a queue a worker consumes
    settings.CELERY_BROKER_URL = settings.REDIS_URL
    settings.CELERY_TASK_DEFAULT_QUEUE = queue
    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        client.rpush(queue, b"a", b"b", b"c")
        assert present(scrape(gateway), "tollgate_celery_queue_length", queue=queue) == 3
    finally:
        client.delete(queue)
        client.close()


@pytest.mark.services
def test_usage_records_set_aside_are_counted(gateway: Gateway, settings: Any) -> None:
    import redis

    from relay import shared
    from relay.limits import usage_queue_key

    client = redis.Redis.from_url(settings.REDIS_URL)
    try:
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        usage_events(1)  # the relay's usage drainer runs
        samples = scrape(gateway)
        assert present(samples, "tollgate_usage_dead_letters") == 0
        assert present(samples, "tollgate_usage_queue_length") == 0
        # A record no relay can read (cut short) reaches the queue.
        client.rpush(usage_queue_key(shared.limit_prefix()), b'{"request_id": "cut')
        assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
        deadline = time.monotonic() + 10
        while present(scrape(gateway), "tollgate_usage_dead_letters") != 1:
            assert time.monotonic() < deadline, "the unreadable record was not counted"
            time.sleep(0.05)
        assert len(usage_events(2)) == 2  # the two requests; the cut record set aside
    finally:
        client.close()


def test_metrics_can_be_turned_off(gateway: Gateway, relay_settings: Any) -> None:
    labels = {"model": PUBLIC_MODEL, "channel": str(gateway.channel.pk), "status": "200"}
    before = value(scrape(gateway), "tollgate_requests_total", **labels)
    relay_settings.RELAY_METRICS = False
    assert httpx.get(gateway.url + "/metrics").status_code == 404
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert usage_events(1)  # metering does not depend on the metrics
    relay_settings.RELAY_METRICS = True
    assert value(scrape(gateway), "tollgate_requests_total", **labels) == before
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    assert value(scrape(gateway), "tollgate_requests_total", **labels) == before + 1


def test_metrics_is_served_by_the_lean_app_through_the_asgi_entry_point(
    transactional_db: None,
) -> None:
    base_url, stop = serve_in_thread(application)
    try:
        response = httpx.get(base_url + "/metrics")
        assert response.status_code == 200
        assert "tollgate_requests_total" in response.text or "# HELP" in response.text
        assert httpx.post(base_url + "/metrics").status_code == 405
    finally:
        stop()


def test_access_log_in_json_carries_the_request_id(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="relay.access"):
        response = gateway.client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200
        usage_events(1)
    records = [r for r in caplog.records if r.name == "relay.access"]
    assert len(records) == 1
    formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
    )
    line = json.loads(formatter.format(records[0]))
    assert line["request_id"] == response.headers["x-request-id"]
    assert line["logger"] == "relay.access"
    assert line["status"] == 200
    assert line["model"] == PUBLIC_MODEL
    assert line["channel_id"] == gateway.channel.pk


def test_other_log_records_get_the_request_id_of_the_request_being_served(
    gateway: Gateway, sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    # A stream the upstream breaks is logged by the relay while serving the request.
    gateway.channel.base_url = sim.channel_url("reset_after=2")
    gateway.channel.save()
    time.sleep(0.5)
    caplog.handler.addFilter(RequestIdFilter())
    with caplog.at_level(logging.INFO, logger="relay.forward"):
        response = gateway.client.post("/v1/chat/completions", json=chat_body(stream=True))
        response.read()
    broke = [r for r in caplog.records if r.name == "relay.forward"]
    assert broke, "the broken stream was not logged"
    assert broke[0].request_id == response.headers["x-request-id"]  # type: ignore[attr-defined]
    assert RequestIdFilter().filter(logging.makeLogRecord({}))  # outside a request: ""


# --- counting between folds --------------------------------------------------------------

# Latencies on and around the buckets' bounds (ms), and one beyond the last.
FOLD_LATENCIES_MS = (0, 4, 5, 6, 10, 25, 26, 250, 999, 1000, 1001, 300_000, 300_001)


def counted_record(model: str, latency_ms: int, upstream_ms: int | None) -> UsageRecord:
    prices = Prices(input=150_000, cached_input=75_000, output=600_000, request_fee=7,
                    currency="USD")  # fmt: skip
    return UsageRecord(
        request_id="req_fold",
        created_at=datetime.now(UTC),
        tenant_id=1,
        api_key_id=1,
        model=model,
        surface="responses",
        stream=True,
        status_code=200,
        total_latency_ms=latency_ms,
        channel_id=3,
        upstream_latency_ms=upstream_ms,
        usage=Usage(prompt_tokens=25, completion_tokens=latency_ms % 7 + 1),
        price=PricePair(retail=prices, wholesale=prices, reseller_id=None),
    )


def fold_records(model: str) -> list[UsageRecord]:
    """One record per latency; every other one without an upstream latency."""
    return [
        counted_record(model, ms, ms // 2 if index % 2 else None)
        for index, ms in enumerate(FOLD_LATENCIES_MS)
    ]


def count_records(model: str) -> list[UsageRecord]:
    records = fold_records(model)
    for record in records:
        metrics.observe_record(record)
    return records


def registry_samples(registry: CollectorRegistry, model: str) -> Samples:
    """The samples of one model's label sets (a fresh model per test keeps tests apart)."""
    found: Samples = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.labels.get("model") == model or sample.name.startswith(
                "tollgate_surface_requests"
            ):
                found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def expected_samples(model: str, records: list[UsageRecord]) -> Samples:
    """The same records observed one by one on prometheus-client's own metrics."""
    registry = CollectorRegistry()
    latency = Histogram(
        "tollgate_request_duration_seconds", "", ("model", "stream"),
        buckets=metrics.LATENCY_BUCKETS, registry=registry,
    )  # fmt: skip
    upstream = Histogram(
        "tollgate_upstream_latency_seconds", "", ("model", "channel"),
        buckets=metrics.LATENCY_BUCKETS, registry=registry,
    )  # fmt: skip
    for record in records:
        latency.labels(model, "true").observe(record.total_latency_ms / 1000)
        if record.upstream_latency_ms is not None:
            upstream.labels(model, "3").observe(record.upstream_latency_ms / 1000)
    return {
        key: sample
        for key, sample in registry_samples(registry, model).items()
        if not key[0].endswith("_created")
    }


def assert_histograms_match(got: Samples, expected: Samples, before: Samples) -> None:
    assert expected
    for key, expected_value in expected.items():
        delta = got.get(key, 0.0) - before.get(key, 0.0)
        if key[0].endswith("_sum"):
            assert delta == pytest.approx(expected_value), key
        else:
            assert delta == expected_value, key


def test_counts_wait_for_the_fold_and_are_exact_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FOLD_SECONDS", 60.0)
    model = f"fold-{uuid.uuid4().hex[:8]}"
    requests = {"model": model, "channel": "3", "status": "200"}
    surface = {"surface": "responses", "status": "200"}
    surface_name = "tollgate_surface_requests_total"
    # The surface's label set is shared with every other test of this process: what they
    # counted and left unfolded goes in before the baseline is read.
    metrics.flush()
    surface_before = value(registry_samples(metrics.REGISTRY, model), surface_name, **surface)

    async def count_then_fold() -> tuple[list[UsageRecord], Samples]:
        try:
            records = count_records(model)
            return records, registry_samples(metrics.REGISTRY, model)
        finally:
            metrics.flush()

    records, between = asyncio.run(count_then_fold())
    assert value(between, "tollgate_requests_total", **requests) == 0  # not folded yet
    after = registry_samples(metrics.REGISTRY, model)
    count = len(FOLD_LATENCIES_MS)
    assert value(after, "tollgate_requests_total", **requests) == count
    assert value(after, surface_name, **surface) - surface_before == count
    assert value(after, "tollgate_tokens_total", model=model, kind="prompt") == 25 * count
    assert value(after, "tollgate_tokens_total", model=model, kind="completion") == sum(
        r.usage.completion_tokens for r in records if r.usage
    )
    assert value(after, "tollgate_spend_micros_total", model=model, currency="USD") == sum(
        r.known_cost() or 0 for r in records
    )
    assert_histograms_match(after, expected_samples(model, records), {})


def test_counts_fold_on_the_timer_without_a_scrape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics, "FOLD_SECONDS", 0.05)
    model = f"timer-{uuid.uuid4().hex[:8]}"
    requests = {"model": model, "channel": "3", "status": "200"}

    def counted() -> float:
        samples = registry_samples(metrics.REGISTRY, model)
        return value(samples, "tollgate_requests_total", **requests)

    async def count_and_wait() -> tuple[float, float]:
        count_records(model)
        between = counted()
        await asyncio.sleep(0.3)
        return between, counted()

    assert asyncio.run(count_and_wait()) == (0, len(FOLD_LATENCIES_MS))


def test_a_scrape_right_after_requests_sees_them(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "FOLD_SECONDS", 60.0)  # only the scrape's own fold counts
    labels = {"model": PUBLIC_MODEL, "channel": str(gateway.channel.pk), "status": "200"}
    before = value(scrape(gateway), "tollgate_requests_total", **labels)
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
    streamed = gateway.client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert streamed.status_code == 200
    assert value(scrape(gateway), "tollgate_requests_total", **labels) == before + 2


COUNT_IN_A_WORKER = """
import asyncio, os, sys
import django
django.setup()
from prometheus_client import CollectorRegistry, multiprocess
from relay import metrics
from tests.relay import test_metrics

def requests_counted():
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return test_metrics.value(
        test_metrics.registry_samples(registry, sys.argv[1]), "tollgate_requests_total",
        model=sys.argv[1], channel="3", status="200",
    )

async def main():
    assert metrics.MULTIPROCESS
    before = requests_counted()  # the workers before this one
    test_metrics.count_records(sys.argv[1])
    assert requests_counted() == before, "counted before the fold"
    await asyncio.sleep(metrics.FOLD_SECONDS + 0.5)
    assert requests_counted() == before + len(test_metrics.FOLD_LATENCIES_MS)
    test_metrics.count_records(sys.argv[1])

asyncio.run(main())
metrics.flush()  # what the app's shutdown does
"""


def test_workers_in_multiprocess_mode_sum_exactly(tmp_path: Path) -> None:
    model = f"workers-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }
    for _ in range(2):  # two workers, one after the other, each with its own files
        done = subprocess.run(  # noqa: S603 - this interpreter, our own script
            [sys.executable, "-c", COUNT_IN_A_WORKER, model],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(tmp_path))
    got = registry_samples(registry, model)
    per_worker = len(FOLD_LATENCIES_MS) * 2
    requests = {"model": model, "channel": "3", "status": "200"}
    assert value(got, "tollgate_requests_total", **requests) == 2 * per_worker
    surface = {"surface": "responses", "status": "200"}
    assert value(got, "tollgate_surface_requests_total", **surface) == 2 * per_worker
    records = fold_records(model) * 4
    assert value(got, "tollgate_tokens_total", model=model, kind="completion") == sum(
        r.usage.completion_tokens for r in records if r.usage
    )
    assert value(got, "tollgate_spend_micros_total", model=model, currency="USD") == sum(
        r.known_cost() or 0 for r in records
    )
    assert_histograms_match(got, expected_samples(model, records), {})


def test_a_loop_that_stopped_with_a_fold_pending_does_not_hold_back_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A relay's loop can stop without the app's shutdown (tests do it): counts made later
    on another loop are still folded by their own timer, without a scrape."""
    monkeypatch.setattr(metrics, "FOLD_SECONDS", 0.05)
    model = f"stale-{uuid.uuid4().hex[:8]}"
    labels = {"model": model, "channel": "3", "status": "200"}

    async def count_and_leave() -> None:
        count_records(model)  # schedules a fold on this loop, which ends at once

    asyncio.run(count_and_leave())
    first = value(registry_samples(metrics.REGISTRY, model), "tollgate_requests_total", **labels)

    async def count_and_wait() -> float:
        count_records(model)
        await asyncio.sleep(0.5)  # several fold intervals, on a loop that runs
        return value(registry_samples(metrics.REGISTRY, model), "tollgate_requests_total", **labels)

    assert first == 0  # its loop ended before the timer fired
    assert asyncio.run(count_and_wait()) == 2 * len(FOLD_LATENCIES_MS)
