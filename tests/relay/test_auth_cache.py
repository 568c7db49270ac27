"""The relay's key cache: unknown keys, failed authentication, lost change notices.

Issue 11, 8d: random bad keys must neither cost a query per request for ever nor push
valid keys out of the cache, and an address trying many is throttled; #2: a change whose
notice was lost still reaches the relay within a bounded time.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.core.cache import cache

from portal import crypto, invalidation
from portal.models import ApiKey
from relay import cache as relay_cache
from relay import snapshot
from tests.relay.conftest import Gateway, chat_body


@pytest.fixture
def lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The digests the relay looked up in the database, one by one."""
    seen: list[str] = []
    real = snapshot.load_key

    def spy(digest: str) -> Any:
        seen.append(digest)
        return real(digest)

    monkeypatch.setattr(snapshot, "load_key", spy)
    return seen


def _bad() -> str:
    return crypto.generate_api_key()


def _get(gateway: Gateway, secret: str) -> httpx.Response:
    return httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {secret}"})


def test_unknown_keys_are_cached_apart_and_never_push_valid_keys_out(
    gateway: Gateway, lookups: list[str], monkeypatch: pytest.MonkeyPatch, relay_settings: Any
) -> None:
    relay_settings.RELAY_AUTH_FAILURES_PER_MINUTE = 10_000
    monkeypatch.setattr(relay_cache, "MAX_CACHED_MISSES", 5)
    monkeypatch.setattr(relay_cache, "MAX_CACHED_KEYS", 5)
    assert gateway.client.get("/v1/models").status_code == 200
    lookups.clear()
    # Far more unknown keys than either cache holds.
    for _ in range(20):
        assert _get(gateway, _bad()).status_code == 401
    assert len(lookups) == 20
    lookups.clear()
    assert gateway.client.get("/v1/models").status_code == 200
    assert lookups == []  # the valid key was not pushed out
    # One unknown key repeated costs one query, not one per request.
    wrong = _bad()
    for _ in range(5):
        assert _get(gateway, wrong).status_code == 401
    assert lookups == [crypto.api_key_digest(wrong)]


def test_an_address_trying_many_unknown_keys_is_throttled_without_queries(
    gateway: Gateway, lookups: list[str], relay_settings: Any
) -> None:
    relay_settings.RELAY_AUTH_FAILURES_PER_MINUTE = 3
    assert gateway.client.get("/v1/models").status_code == 200
    lookups.clear()
    for _ in range(3):
        assert _get(gateway, _bad()).status_code == 401
    throttled = _get(gateway, _bad())
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "too_many_authentication_failures"
    assert throttled.headers["retry-after"] == "60"
    assert len(lookups) == 3  # the fourth cost no query
    # A key this process knows keeps working from that address.
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200


@pytest.fixture
def quick_revalidation(relay_settings: Any) -> None:
    """Set before the relay starts (list it before ``gateway``)."""
    relay_settings.RELAY_CACHE_REVALIDATE_SECONDS = 1.0


def test_a_change_whose_notice_was_lost_reaches_the_relay(
    quick_revalidation: None, gateway: Gateway
) -> None:
    """A revocation written without any notice (as when the notice could not be given):
    the relay's periodic re-read refuses the key within RELAY_CACHE_REVALIDATE_SECONDS."""
    assert gateway.client.get("/v1/models").status_code == 200
    # An UPDATE sends no signal: no change notice at all.
    ApiKey.objects.filter(pk=gateway.api_key.pk).update(status=ApiKey.Status.REVOKED)
    revoked_at = time.monotonic()
    while True:
        response = gateway.client.get("/v1/models")
        if response.status_code == 401:
            break
        assert response.status_code == 200
        assert time.monotonic() - revoked_at < 10, "the revocation never reached the relay"
        time.sleep(0.05)
    # Bounded: the re-read runs on its schedule (1 s here), plus a poll.
    assert time.monotonic() - revoked_at < 5


def test_a_restarted_counter_never_comes_back_to_a_value_already_seen() -> None:
    """A Redis restart loses the counter; counting again from 1 could bring it back to
    the very value a relay process last saw, and hide the change being announced."""
    cache.delete(invalidation.GENERATION_KEY)
    invalidation.bump_generation()
    invalidation.bump_generation()
    seen = invalidation.current_generation()
    cache.delete(invalidation.GENERATION_KEY)  # the restart
    invalidation.bump_generation()
    assert invalidation.current_generation() != seen
    assert invalidation.current_generation() > seen


def test_a_notice_that_cannot_be_given_does_not_fail_the_change(
    settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        }
    }
    invalidation.bump_generation()  # does not raise
    assert "could not tell relay processes" in caplog.text
