"""GET /metrics and the JSON logs, against a real relay and simulator on loopback."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pythonjsonlogger.json import JsonFormatter

from config.asgi import application
from relay.metrics import RequestIdFilter
from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator, chat_body, usage_events
from tests.servers import serve_in_thread

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


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
