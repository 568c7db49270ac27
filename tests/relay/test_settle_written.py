"""A request's settlement (limits freed, money settled, usage event queued: one Lua call)
is written to Redis before the answer's last bytes go out, and the answer does not wait
for Redis's reply: a single client no longer waits a round trip for it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from django.conf import settings

from tests.faultproxy import FaultProxy
from tests.relay.conftest import Gateway, Simulator, chat_body, sse_chunks, usage_events
from tests.relay.test_outages import _redis_proxy
from tests.servers import RelayProcess, database_url

pytestmark = pytest.mark.services


def test_answers_go_out_while_redis_has_not_replied_to_their_settlement(
    gateway: Gateway, sim: Simulator
) -> None:
    proxy: FaultProxy = _redis_proxy()
    namespace = f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4().hex[:8]}"
    # A relay of its own, reaching Redis through the proxy and waiting up to 30 s for a
    # reply: an answer that waited for its settlement's reply would outlast the client.
    relay = RelayProcess(
        {
            "DATABASE_URL": database_url(),
            "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
            "CACHE_KEY_PREFIX": namespace,
            "RELAY_CACHE_POLL_SECONDS": "0.2",
            "RELAY_USAGE_FLUSH_SECONDS": "0.05",
            "RELAY_REDIS_TIMEOUT": "30",
        }
    )
    headers = {"Authorization": f"Bearer {gateway.secret}"}

    def post(**body: Any) -> httpx.Response:
        url = relay.url + "/v1/chat/completions"
        return httpx.post(url, json=chat_body(**body), headers=headers, timeout=10)

    try:
        assert post().status_code == 200  # the relay's Redis connections are made
        usage_events(1)

        # A key without limits needs Redis only to settle: with every reply held, a relay
        # that waited for the settlement's reply would answer nothing.
        proxy.hold_replies()
        assert post().status_code == 200
        with httpx.stream(
            "POST",
            relay.url + "/v1/chat/completions",
            json=chat_body(stream=True, stream_options={"include_usage": True}),
            headers=headers,
            timeout=10,
        ) as streamed:
            assert streamed.status_code == 200
            chunks, done = sse_chunks(streamed)
        assert done and chunks[-1]["usage"]["completion_tokens"] > 0
        proxy.release_replies()

        # Each was queued once, by the settlement Redis ran while its reply was held.
        events = usage_events(3)
        assert sorted(event.stream for event in events) == [False, False, True]
        assert len({event.request_id for event in events}) == 3
        assert all(event.status_code == 200 and event.completed for event in events)
    finally:
        proxy.release_replies()
        relay.stop()
        proxy.close()
