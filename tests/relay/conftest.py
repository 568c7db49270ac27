"""Fixtures for relay tests: the simulator and a relay served over real HTTP on loopback."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.conf import settings

from billing.models import BillingAccount, PriceList, TenantDefaults
from billing.services import (
    account_topup,
    billing_account_create,
    model_price_set,
    price_list_create,
)
from portal import crypto
from portal.models import ApiKey, CatalogModel, Channel, ChannelModel, Organization
from relay.app import RelayApp
from relay.metering import usage_writer
from relay.simulator import build_app
from tests.servers import RelayProcess, database_url, serve_in_thread

UPSTREAM_SECRET = "sk-upstream-test-5f2c9a"  # the simulator refuses any other


@pytest.fixture(scope="session")
def simulator() -> Iterator[str]:
    """Base URL (no /v1) of one simulator process shared by the session."""
    base_url, stop = serve_in_thread(build_app())
    yield base_url
    stop()


@pytest.fixture
def sim(simulator: str) -> Iterator[Simulator]:
    client = httpx.Client(base_url=simulator, timeout=10)
    client.delete("/_sim/requests")
    yield Simulator(simulator, client)
    client.close()


@dataclasses.dataclass
class Simulator:
    base_url: str
    client: httpx.Client

    def channel_url(self, *options: str) -> str:
        opts = ",".join((f"key={UPSTREAM_SECRET}", *options))
        return f"{self.base_url}/sim/{opts}/v1"

    def requests(self) -> list[dict[str, Any]]:
        return self.client.get("/_sim/requests").json()["data"]

    def stats(self) -> dict[str, Any]:
        return self.client.get("/_sim/stats").json()


@dataclasses.dataclass
class Gateway:
    """A tenant with a key, a public model served by one simulator channel, and a client."""

    url: str
    secret: str
    api_key: ApiKey
    tenant: Organization
    model: CatalogModel
    channel: Channel
    client: httpx.Client
    price_list: PriceList
    relay_app: RelayApp | None = None

    def caught_up(self) -> None:
        """Wait until the relay serving ``url`` has taken in every committed change."""
        assert self.relay_app is not None
        caught_up(self.relay_app)

    def add_channel(
        self, url: str, *, name: str, priority: int = 0, weight: int = 1, model: str = ""
    ) -> Channel:
        channel = Channel(name=name, base_url=url, priority=priority, weight=weight)
        channel.secret = UPSTREAM_SECRET
        channel.save()
        ChannelModel.objects.create(
            channel=channel,
            model=CatalogModel.objects.get(public_id=model) if model else self.model,
            upstream_name="sim-upstream",
        )
        return channel

    def price(self, model: CatalogModel) -> None:
        """Put ``model`` on the platform's wholesale list, which prices this tenant."""
        model_price_set(
            price_list=self.price_list,
            model=model,
            input_per_mtok=INPUT_PRICE,
            output_per_mtok=OUTPUT_PRICE,
            actor="test",
        )

    def new_key(self, **fields: Any) -> str:
        secret = crypto.generate_api_key()
        key = ApiKey(tenant=self.tenant, name=fields.pop("name", "another"), **fields)
        key.set_secret(secret)
        key.save()
        return secret


PUBLIC_MODEL = "tollgate-chat"
# Micro-units per million tokens: $2.50 in, $10 out.
INPUT_PRICE = 2_500_000
OUTPUT_PRICE = 10_000_000
UPSTREAM_MODEL = "sim-upstream"


@pytest.fixture
def relay_settings(settings: Any) -> Any:
    """Settings the relay reads; tests change them before the relay starts."""
    settings.RELAY_CACHE_POLL_SECONDS = 0.2
    settings.RELAY_USAGE_FLUSH_SECONDS = 0.05
    return settings


@pytest.fixture
def relay_app(transactional_db: None, relay_settings: Any) -> RelayApp:
    """The relay application the ``relay_url`` server runs, for tests that look inside."""
    return RelayApp()


@pytest.fixture
def relay_url(relay_app: RelayApp) -> Iterator[str]:
    """A fresh relay (own caches, own loop and pool) served on a free loopback port."""
    base_url, stop = serve_in_thread(relay_app)
    yield base_url
    stop()
    usage_writer.flush()


@pytest.fixture
def relay_process(gateway: Gateway) -> Iterator[str]:
    """A second relay, in its own process, on the test database and this run's Redis
    namespace: what two relay processes share is tested against the gateway's."""
    relay = RelayProcess(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
            "RELAY_CACHE_POLL_SECONDS": "0.2",
        }
    )
    yield relay.url
    relay.stop()


@pytest.fixture
def gateway(
    relay_app: RelayApp, relay_url: str, sim: Simulator, platform_org: Organization
) -> Iterator[Gateway]:
    platform = platform_org
    # Explicit terms: the platform's tenants start postpaid without a limit (new tenants are
    # prepaid with nothing to spend otherwise); money tests set the tenant's own terms.
    TenantDefaults.objects.create(seller=platform, mode="postpaid")
    tenant = Organization.objects.create(name="Acme", slug="acme", kind="tenant", parent=platform)
    model = CatalogModel.objects.create(public_id=PUBLIC_MODEL, owned_by="tollgate")
    channel = Channel(name="primary", base_url=sim.channel_url())
    channel.secret = UPSTREAM_SECRET
    channel.save()
    ChannelModel.objects.create(channel=channel, model=model, upstream_name=UPSTREAM_MODEL)
    secret = crypto.generate_api_key()
    api_key = ApiKey(tenant=tenant, name="test")
    api_key.set_secret(secret)
    api_key.save()
    client = httpx.Client(
        base_url=relay_url, headers={"Authorization": f"Bearer {secret}"}, timeout=20
    )
    wholesale = price_list_create(owner=platform, name="Wholesale", actor="test", is_default=True)
    gateway = Gateway(
        relay_url, secret, api_key, tenant, model, channel, client, wholesale, relay_app
    )
    gateway.price(model)
    yield gateway
    client.close()


def messages_stream_events(words: list[str]) -> list[dict[str, Any]]:
    """One text answer (``words``) as the events of Anthropic's Messages stream: 9 prompt
    tokens in ``message_start``, an output token per word in ``message_delta``."""
    message: dict[str, Any] = {
        "id": "msg_t",
        "type": "message",
        "role": "assistant",
        "model": UPSTREAM_MODEL,
        "content": [],
        "stop_reason": None,
        "usage": {"input_tokens": 9, "output_tokens": 1},
    }
    return [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
            for w in words
        ),
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": len(words)},
        },
        {"type": "message_stop"},
    ]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": PUBLIC_MODEL,
        "messages": [{"role": "user", "content": "Say hello to the gateway"}],
        **extra,
    }


def sse_chunks(response: httpx.Response) -> tuple[list[dict[str, Any]], bool]:
    """The JSON chunks of an SSE response and whether it ended with [DONE]."""
    import json

    chunks: list[dict[str, Any]] = []
    done = False
    for line in response.iter_lines():
        if not line.startswith("data: "):
            continue
        data = line[len("data: ") :]
        if data == "[DONE]":
            done = True
        else:
            chunks.append(json.loads(data))
    return chunks, done


def caught_up(relay_app: RelayApp, timeout: float = 10.0) -> None:
    """Wait until the in-test relay has taken in every committed change to keys, prices
    and channels: its caches are at the current generation, or it has read nothing yet
    (then its first request loads everything fresh)."""
    import time

    from portal import invalidation

    deadline = time.monotonic() + timeout
    cache = relay_app.cache
    while cache.polled and cache.generation != invalidation.current_generation():
        assert time.monotonic() < deadline, "the relay never saw the latest change"
        time.sleep(0.01)


def burst(
    urls: tuple[str, ...], path: str, secret: str, body: dict[str, Any], count: int, workers: int
) -> tuple[list[int], set[str]]:
    """``count`` copies of one request at once, spread over ``urls`` (relay processes):
    every answer's status, and the request ids of those served. The money tests send K
    worst cases' worth of balance 5K requests this way."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def call(index: int) -> tuple[int, str]:
        response = httpx.post(
            urls[index % len(urls)] + path,
            json=body,
            headers={"Authorization": f"Bearer {secret}"},
            timeout=60,
        )
        return response.status_code, response.headers.get("x-request-id", "")

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(call, range(count)))
    return [status for status, _ in results], {rid for status, rid in results if status == 200}


def price_model(gateway: Gateway, *, input_per_mtok: int = INPUT_PRICE, **extra: int) -> None:
    """The gateway model's text prices on its list, with ``extra`` dimensions (prices per
    image in micro-units, per-token prices per million)."""
    from billing.services import model_price_set

    model_price_set(
        price_list=gateway.price_list,
        model=gateway.model,
        input_per_mtok=input_per_mtok,
        output_per_mtok=OUTPUT_PRICE,
        actor="test",
        **extra,  # type: ignore[arg-type]
    )


def assert_invoiced(event: Any, dimension: str, quantity: int, unit_micros: int) -> None:
    """The invoice of the event's tenant and period bills ``dimension`` as one line of
    ``quantity`` at ``unit_micros``, and its subtotal is the event's cost to the micro-unit
    (the event is the period's only one)."""
    from billing.models import InvoiceLine
    from billing.periods import Period
    from billing.services import invoice_generate

    invoice = invoice_generate(customer=event.tenant, period=Period.containing(event.created_at))
    assert invoice is not None
    [line] = invoice.lines.filter(kind=InvoiceLine.Kind.USAGE, dimension=dimension)
    assert (line.quantity, line.unit_price_micros, line.amount_micros) == (
        quantity,
        unit_micros,
        quantity * unit_micros,
    )
    assert invoice.subtotal_micros == event.cost_retail_micros


def usage_events(expected: int, timeout: float = 30.0) -> list[Any]:
    """The usage events, once ``expected`` of them are written (oldest first).

    A client can see the end of a response a moment before the relay hands its usage
    record to the writer, so one flush is not enough: wait for the count.
    """
    import time

    from billing.models import UsageEvent

    deadline = time.monotonic() + timeout
    while True:
        usage_writer.flush(timeout=timeout)
        events = list(UsageEvent.objects.order_by("created_at", "id"))
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.02)


# --- Money ----------------------------------------------------------------------------------
# Output-only prices, and requests capped at what the simulator produces: a request's
# worst case then equals its real cost, so a balance of k * WORST pays for exactly k.

SIM_TOKENS = 16  # the simulator's default answer length
WORST = SIM_TOKENS * OUTPUT_PRICE // 1_000_000


@pytest.fixture
def output_only(gateway: Gateway) -> Gateway:
    model_price_set(
        price_list=gateway.price_list,
        model=gateway.model,
        input_per_mtok=0,
        output_per_mtok=OUTPUT_PRICE,
        actor="test",
    )
    return gateway


def prepaid(gateway: Gateway, balance: int) -> BillingAccount:
    account = billing_account_create(organization=gateway.tenant, actor="test", mode="prepaid")
    if balance:
        account_topup(account=account, amount_micros=balance, actor="test")
    return account


def fail_to_build(monkeypatch: pytest.MonkeyPatch, request_id: str) -> None:
    """Make building the usage event of ``request_id`` fail, as a fault in the relay's own
    code would (not the database's refusal); every other event builds as usual."""
    from relay.metering import UsageRecord

    build = UsageRecord.to_event_fields

    def faulty(self: UsageRecord) -> dict[str, Any]:
        if self.request_id == request_id:
            raise ZeroDivisionError("a fault in the cost code")
        return build(self)

    monkeypatch.setattr(UsageRecord, "to_event_fields", faulty)
