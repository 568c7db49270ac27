"""A relay process SIGKILLed mid-stream: its streams are billed for what they delivered
(issue 11, finding 7).

The finding: the tokens a killed worker had already delivered got no usage event, though
their reservation sat in Redis. Here two real relay processes share the test database and
this run's Redis. Streams on one of them stall after five tokens (the simulator's
``hang_after``); once their progress marks hold the text the client received, that process
is killed. The survivor's sweeper must then settle each cut stream once: a usage event per
request that reached the upstream, the cut ones marked so and charged for the delivered
text (counted with the same tokenizer), the concurrency slots free and the money held
moved into the written total, nothing twice. A stream stalled on the *surviving* process
is left alone until it ends.

The same holds for a stream served through a provider adapter (here a chat stream from an
Anthropic channel, decoded from Anthropic's events and written as chat chunks): its
progress is marked as a pass-through stream's is, and its prompt billed as Anthropic
counted it in ``message_start``.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis
from django.conf import settings

from billing.models import UsageEvent
from billing.pricing import Prices, cost_micros
from portal.models import ApiKey, CatalogModel, Channel
from relay import orphans, tokens
from relay.limits import money_keys
from relay.simulator.anthropic import count_input
from tests.relay.conftest import (
    INPUT_PRICE,
    OUTPUT_PRICE,
    UPSTREAM_SECRET,
    Gateway,
    Simulator,
    chat_body,
    prepaid,
    sse_chunks,
)
from tests.servers import RelayProcess, database_url

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

CUT_MODEL = "tollgate-stalls"
DELIVERED = 5  # content chunks the simulator sends before it stalls
WAIT_SECONDS = 90  # the sweeper's delay is 1.5 s; the rest is a loaded machine's slack


def until(check: Callable[[], Any], what: str, seconds: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.05)


@pytest.fixture(params=["openai", "anthropic"])
def relays(
    request: pytest.FixtureRequest, gateway: Gateway, sim: Simulator
) -> Iterator[Callable[[], RelayProcess]]:
    model = CatalogModel.objects.create(public_id=CUT_MODEL, owned_by="tollgate")
    gateway.price(model)
    if request.param == "openai":
        url = sim.channel_url(f"hang_after={DELIVERED}")
    else:  # the simulator's Messages API, behind the Anthropic adapter
        url = f"{sim.base_url}/sim/key={UPSTREAM_SECRET},hang_after={DELIVERED}"
    channel = gateway.add_channel(url, name="stalls", model=CUT_MODEL)
    channel.provider_type = request.param
    channel.save()
    started: list[RelayProcess] = []

    def start() -> RelayProcess:
        relay = RelayProcess(
            {
                "DATABASE_URL": database_url(),
                "REDIS_URL": settings.REDIS_URL,
                "CACHE_KEY_PREFIX": settings.CACHES["default"]["KEY_PREFIX"],
                "RELAY_CACHE_POLL_SECONDS": "0.2",
                "RELAY_USAGE_FLUSH_SECONDS": "0.05",
                "RELAY_PROGRESS_MARK_SECONDS": "0.2",
                "RELAY_ORPHAN_AFTER_SECONDS": "1.5",
            }
        )
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


class Stream:
    """A streaming request read up to the stall: the text its client received."""

    def __init__(self, url: str, secret: str) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(30, read=30))
        request = self.client.build_request(
            "POST",
            url + "/v1/chat/completions",
            json=chat_body(model=CUT_MODEL, stream=True),
            headers={"Authorization": f"Bearer {secret}"},
        )
        self.response = self.client.send(request, stream=True)
        assert self.response.status_code == 200, self.response.read()
        self.request_id = self.response.headers["x-request-id"]
        self.text = ""
        pieces = 0
        # Kept: a line iterator that is garbage-collected closes the response.
        self.lines = self.response.iter_lines()
        while pieces < DELIVERED:
            line = next(self.lines)
            if not line.startswith("data: "):
                continue
            chunk = orjson.loads(line[len("data: ") :])
            for choice in chunk.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    self.text += content
                    pieces += 1

    def close(self) -> None:
        self.response.close()
        self.client.close()


def test_streams_cut_by_a_killed_relay_are_billed_for_what_they_delivered(
    gateway: Gateway, sim: Simulator, relays: Callable[[], RelayProcess]
) -> None:
    prepaid(gateway, 10_000_000)
    secret = gateway.new_key(name="streams", concurrency_limit=4)
    key = ApiKey.objects.get(name="streams")
    doomed, survivor = relays(), relays()
    store = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    headers = {"Authorization": f"Bearer {secret}"}

    # Requests that finish, on both processes: each settles itself, once.
    finished: list[str] = []
    for url in (doomed.url, survivor.url):
        plain = httpx.post(url + "/v1/chat/completions", json=chat_body(), headers=headers)
        assert plain.status_code == 200, plain.text
        with httpx.stream(
            "POST",
            url + "/v1/chat/completions",
            json=chat_body(stream=True),
            headers=headers,
            timeout=30,
        ) as response:
            assert sse_chunks(response)[1]  # ended with [DONE]
            finished.append(response.headers["x-request-id"])

    cut = [Stream(doomed.url, secret) for _ in range(3)]
    stalled_alive = Stream(survivor.url, secret)

    def marked(stream: Stream) -> bool:
        return store.get(orphans.text_key(prefix, stream.request_id)) == stream.text.encode()

    until(lambda: all(marked(s) for s in cut), "the progress marks catching up")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait(10)
    for stream in cut:
        stream.close()

    reached = len(sim.requests())  # every request that reached the upstream
    assert reached == 4 + 3 + 1
    cut_ids = {s.request_id for s in cut}
    until(
        lambda: UsageEvent.objects.filter(request_id__in=cut_ids).count() == 3,
        "the cut streams' events",
    )
    # The surviving process is alive: its stalled stream is nobody else's to settle (its
    # sweeper, which settled the others, looked at it on every pass).
    assert not UsageEvent.objects.filter(request_id=stalled_alive.request_id).exists()
    assert store.exists(orphans.entry_key(prefix, stalled_alive.request_id))

    if Channel.objects.get(name="stalls").provider_type == "anthropic":
        # Anthropic counted the prompt in message_start: that count is billed, not ours.
        sent = [r["body"] for r in sim.requests() if r["path"].endswith("/messages")]
        prompt = count_input(sent[0])
    else:
        prompt = tokens.count_prompt(chat_body()["messages"])
    for stream in cut:
        event = UsageEvent.objects.get(request_id=stream.request_id)
        assert (event.status_code, event.stream, event.completed) == (200, True, False)
        assert event.error_code == "relay_worker_lost"
        assert event.estimated
        assert event.completion_tokens == tokens.count_text(stream.text) > 0
        assert event.prompt_tokens == prompt > 0
        assert event.cost_retail_micros == _cost(event) > 0

    stalled_alive.close()  # its own process settles it: a client that went away
    until(
        lambda: UsageEvent.objects.filter(request_id=stalled_alive.request_id).exists(),
        "the surviving process settling its own stream",
    )
    mine = UsageEvent.objects.get(request_id=stalled_alive.request_id)
    assert mine.error_code == "client_disconnected"
    until(lambda: UsageEvent.objects.count() == reached, "one event per upstream request")
    assert UsageEvent.objects.count() == reached  # none twice, none missing

    # Limits and money: the slots are free, the holds became written totals.
    assert store.zcard(f"{prefix}:rl:key:{key.pk}:conc") == 0
    funds = money_keys(prefix, f"t{gateway.tenant.pk}:funds")
    total = sum(UsageEvent.objects.values_list("cost_retail_micros", flat=True))

    def settled() -> bool:
        held = int(store.get(funds[2]) or 0)
        return held == 0 and int(store.get(funds[1]) or 0) == total

    until(settled, "the money held becoming the written total")
    assert store.hlen(funds[3]) == 0
    # This test's streams only: the prefix is its worker's, and a test before it in the
    # same process may have left an entry of its own.
    ours = [*finished, *cut_ids, stalled_alive.request_id]
    left = [
        name
        for request_id in ours
        for name in (orphans.entry_key(prefix, request_id), orphans.text_key(prefix, request_id))
        if store.exists(name) and (store.type(name) != b"hash" or store.hkeys(name) != [b"swept"])
    ]
    assert left == []  # only the sweeper's tombstones remain
    again = httpx.post(
        survivor.url + "/v1/chat/completions", json=chat_body(), headers=headers, timeout=30
    )
    assert again.status_code == 200, again.text


def _cost(event: UsageEvent) -> int:
    prices = Prices(
        input=INPUT_PRICE, cached_input=INPUT_PRICE, output=OUTPUT_PRICE, request_fee=0,
        currency="USD",
    )  # fmt: skip
    return cost_micros(
        prices,
        prompt_tokens=event.prompt_tokens,
        cached_tokens=event.cached_tokens,
        completion_tokens=event.completion_tokens,
        reasoning_tokens=event.reasoning_tokens,
    )
