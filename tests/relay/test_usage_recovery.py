"""Usage held while PostgreSQL was down is written promptly once it is back (issue 11, 8g).

A relay process's writer claims a batch from the Redis usage queue under a lease
(``RELAY_USAGE_LEASE_SECONDS``, 60 s by default) before writing it. A batch whose write
failed used to stay claimed until the lease ran out, so its events reached the database
about half a minute after it returned; it is now handed back at once. Each event is
still written exactly once.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.db import connection

from billing.models import UsageEvent
from tests.faultproxy import FaultProxy
from tests.relay import test_outages
from tests.relay.conftest import SIM_TOKENS, Gateway, Simulator, chat_body
from tests.relay.test_outages import wait_for_events, warm_up
from tests.servers import database_url

# The outage tests' fixtures: relay processes with a Redis namespace of their own.
namespace = test_outages.namespace
relays = test_outages.relays

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]


def _wait_for(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_usage_held_during_a_database_outage_is_written_once_it_is_back(
    gateway: Gateway, sim: Simulator, relays: Any
) -> None:
    db = connection.settings_dict
    database = FaultProxy(db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432))
    try:
        relay = relays(
            DATABASE_URL=database_url(database.port),
            RELAY_USAGE_LEASE_SECONDS="60",  # the default
        )
        warm_up(relay.url, gateway.secret)
        database.down()
        ids = set()
        with httpx.Client(headers={"Authorization": f"Bearer {gateway.secret}"}) as client:
            for _ in range(20):
                response = client.post(
                    relay.url + "/v1/chat/completions",
                    json=chat_body(max_tokens=SIM_TOKENS),
                    timeout=15,
                )
                assert response.status_code == 200, response.text  # cached key and routes
                ids.add(response.headers["x-request-id"])
        # The writer claimed a batch and failed to write it.
        _wait_for(lambda: "PostgreSQL is unreachable" in relay.logged(), "no write was attempted")
        assert UsageEvent.objects.filter(request_id__in=ids).count() == 0
        database.up()
        back = time.monotonic()
        found = wait_for_events(ids, seconds=60)
        elapsed = time.monotonic() - back
        assert found == ids
        # Promptly, not when the 60 s lease runs out.
        assert elapsed < 10, f"written {elapsed:.1f} s after the database was back"
        # Exactly once each (and the warm-up's).
        assert UsageEvent.objects.filter(request_id__in=ids).count() == len(ids)
        assert UsageEvent.objects.count() == len(ids) + 1
        log = relay.logged()
        assert log.count("PostgreSQL is unreachable") == 1, log[-3000:]
        assert "Traceback" not in log, log[-3000:]
    finally:
        database.close()
