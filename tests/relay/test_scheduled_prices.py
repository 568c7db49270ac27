"""A price scheduled for a moment T charges every request admitted at or after T, on every
relay process, and none before: each process holds the upcoming prices in its cache and
picks by the request's admission time, with no reload at T."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from billing.services import model_price_set
from portal.models import CatalogModel, ChannelModel
from tests.relay.conftest import INPUT_PRICE, OUTPUT_PRICE, PUBLIC_MODEL, Gateway, chat_body
from tests.relay.conftest import usage_events as wait_for_events

pytestmark = pytest.mark.services

NEW_INPUT_PRICE = 7_000_000
LEAD = timedelta(seconds=5)
WINDOW = timedelta(milliseconds=700)  # requests are sent this long either side of T


def _served(url: str, secret: str, model: str) -> bool:
    response = httpx.post(
        url + "/v1/chat/completions",
        json=chat_body(model=model),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    return response.status_code == 200


def test_a_scheduled_price_charges_from_its_moment_on_every_process(
    gateway: Gateway, relay_process: str
) -> None:
    urls = (gateway.url, relay_process)
    for url in urls:  # both processes have loaded (and cached) the current prices
        assert _served(url, gateway.secret, PUBLIC_MODEL)
    moment = datetime.now(UTC) + LEAD
    model_price_set(
        price_list=gateway.price_list,
        model=gateway.model,
        input_per_mtok=NEW_INPUT_PRICE,
        output_per_mtok=OUTPUT_PRICE,
        effective_from=moment,
        actor="test",
    )
    # Readiness: a model priced after the schedule was written is served by a process only
    # once it has dropped its old price table, so its new one holds the schedule.
    marker = CatalogModel.objects.create(public_id="marker", owned_by="tollgate")
    ChannelModel.objects.create(channel=gateway.channel, model=marker, upstream_name="sim")
    gateway.price(marker)
    for url in urls:
        while not _served(url, gateway.secret, "marker"):
            assert datetime.now(UTC) < moment - WINDOW, "a relay did not reload in time"

    start, stop = moment - WINDOW, moment + WINDOW
    lock = threading.Lock()
    sent: list[str] = []

    def hammer(index: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {gateway.secret}"}) as client:
            while datetime.now(UTC) < start:
                time.sleep(0.005)  # a wait until the window opens, not a fixed delay
            while datetime.now(UTC) < stop:
                response = client.post(
                    urls[index % 2] + "/v1/chat/completions", json=chat_body(), timeout=10
                )
                assert response.status_code == 200, response.text
                with lock:
                    sent.append(response.headers["x-request-id"])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(hammer, range(4)))

    wanted = set(sent)
    deadline = time.monotonic() + 30
    while True:
        events = [e for e in wait_for_events(len(wanted)) if e.request_id in wanted]
        if len(events) == len(wanted) or time.monotonic() > deadline:
            break
    assert len(events) == len(wanted)
    before = [e for e in events if e.created_at < moment]
    after = [e for e in events if e.created_at >= moment]
    assert before and after, "requests must straddle the scheduled moment"
    assert {e.retail_input_per_mtok for e in before} == {INPUT_PRICE}
    assert {e.retail_input_per_mtok for e in after} == {NEW_INPUT_PRICE}
