"""A key revoked while Redis is down is refused once it is back (issue 11, #2 and 8f).

Real relay processes share a Redis of this test's own, which the test stops and starts
again empty, as a restarted Redis without persistence is: its change counter is gone.
The revocation goes through the management API, served over HTTP by this process with
the same private Redis as its cache. The shared Redis is never touched.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.core.asgi import get_asgi_application
from django.test import override_settings

from portal import tokens
from tests.conftest import make_member
from tests.relay.conftest import Gateway, Simulator, chat_body
from tests.servers import RelayProcess, database_url, running_server

pytestmark = [pytest.mark.services, pytest.mark.timeout(300)]

WAIT_SECONDS = 30.0


class PrivateRedis:
    """A redis-server of the test's own on a fixed port, stopped and started at will."""

    def __init__(self, directory: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.directory = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - fixed arguments
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.directory)],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            try:
                if redis.Redis.from_url(self.url).ping():
                    return
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "the private Redis did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()  # as a crash: nothing saved, nothing said to clients
            self.process.wait(10)
            self.process = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _status(url: str, secret: str) -> int:
    try:
        return httpx.get(
            url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=5
        ).status_code
    except httpx.TransportError:
        return -1


def test_a_key_revoked_while_redis_is_down_is_refused_once_it_is_back(
    gateway: Gateway, sim: Simulator, private_redis: PrivateRedis, settings: Any
) -> None:
    namespace = f"{settings.CACHES['default']['KEY_PREFIX']}-revoke-{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_URL": database_url(),
        "REDIS_URL": private_redis.url,
        "CACHE_KEY_PREFIX": namespace,
        "RELAY_REDIS_TIMEOUT": "0.5",
        # The defaults: the notice is caught by the failed polls, not a quick re-read.
        "RELAY_CACHE_POLL_SECONDS": "1",
        "RELAY_CACHE_REVALIDATE_SECONDS": "30",
    }
    relays = [RelayProcess(env), RelayProcess(env)]
    # This process's API uses the same private Redis (its change counter lives there),
    # until the end of the test only: fixtures tearing down use the shared one again.
    private = override_settings(
        REDIS_URL=private_redis.url,
        CACHES={
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": private_redis.url,
                "KEY_PREFIX": namespace,
            }
        },
    )
    private.enable()
    owner = make_member("keyowner", gateway.tenant, "owner")
    _, token = tokens.personal_access_token_create(
        user=owner, name="t", scope="read_write", actor=owner
    )
    spare = gateway.new_key(name="spare")  # another key, served throughout
    try:
        for relay in relays:
            assert _status(relay.url, gateway.secret) == 200
            assert _status(relay.url, spare) == 200
        with running_server(get_asgi_application()) as api:
            private_redis.stop()
            # Traffic during the outage: what used to write a traceback per request.
            for _ in range(20):
                for relay in relays:
                    httpx.post(
                        relay.url + "/v1/chat/completions",
                        json=chat_body(),
                        headers={"Authorization": f"Bearer {spare}"},
                        timeout=10,
                    )
            revoked = httpx.post(
                f"{api}/api/keys/{gateway.api_key.pk}/revoke/",
                headers={"Authorization": f"Bearer {token}"},
                timeout=30,
            )
            # Answered cleanly: stored and said so, or a 503 in JSON; never a 500.
            assert revoked.status_code in (200, 503), revoked.text[:500]
            if revoked.status_code == 200:
                assert revoked.json()["status"] == "revoked"
            gateway.api_key.refresh_from_db()
            assert gateway.api_key.status == "revoked"
            private_redis.start()  # empty: the change counter starts again
            back = time.monotonic()
            refused_after: dict[int, float] = {}
            while len(refused_after) < len(relays):
                for relay in relays:
                    if (
                        relay.port not in refused_after
                        and _status(relay.url, gateway.secret) == 401
                    ):
                        refused_after[relay.port] = time.monotonic() - back
                assert time.monotonic() - back < WAIT_SECONDS, f"still served: {refused_after}"
                time.sleep(0.05)
        assert max(refused_after.values()) < 5.0, refused_after
        for relay in relays:
            assert _status(relay.url, spare) == 200  # the others still are
    finally:
        private.disable()
        for relay in relays:
            relay.stop()
    # 8f: one line when Redis went away and one when it came back, not a traceback per
    # request (each relay answered 20 requests meanwhile, and polled every second).
    for relay in relays:
        log = relay.logged()
        path = Path(settings.VAR_DIR) / f"revocation-relay-{relay.port}.log"
        path.write_text(log)
        assert "Traceback" not in log, log[-3000:]
        assert log.count("Redis is unreachable") == 1, log[-3000:]
        assert log.count("Redis is reachable again") == 1, log[-3000:]
