"""Leased admissions (``relay.leases``) against a real Redis: a lease counts all its ids
at once, exactly as that many admissions would, and gives back the ids no request took
as if they had never been admitted."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from relay.limits import Limits, RedisLimitStore, Reservation, Room, Scope, Window, money_keys

pytestmark = pytest.mark.services

FUNDS = "t9101:funds"
WORST = 3_000
TOKENS = 50
WINDOW = Window(name="s9:tokens", length="5h", kind="tokens", cap=10**9, seconds=18_000)


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"leases-test-{uuid.uuid4().hex[:8]}"
    yield name
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL)
    keys = list(client.scan_iter(f"{name}:*"))
    if keys:
        client.delete(*keys)


def _ids(count: int) -> list[str]:
    return ["req_" + uuid.uuid4().hex for _ in range(count)]


class Counts:
    """What Redis counts for one key scope, its funds and its plan window."""

    def __init__(self, client: Any, prefix: str, scope: str) -> None:
        self.client = client
        self.prefix = prefix
        self.scope = scope

    async def read(self) -> dict[str, int]:
        base = f"{self.prefix}:rl:{self.scope}"
        day = [k async for k in self.client.scan_iter(f"{base}:day:*")]
        _, _, held, holds, _ = money_keys(self.prefix, FUNDS)
        window = await self.client.hgetall(f"{self.prefix}:pw:{WINDOW.name}")
        day_total = 0
        for key in day:
            day_total += int(await self.client.get(key) or 0)
        return {
            "requests": int(await self.client.hget(f"{base}:requests", "sum") or 0),
            "tokens": int(await self.client.hget(f"{base}:tokens", "sum") or 0),
            "in_flight": int(await self.client.zcard(f"{base}:conc")),
            "day": day_total,
            "held": int(await self.client.get(held) or 0),
            "holds": int(await self.client.hlen(holds)),
            "window": sum(int(v) for v in window.values()),
        }


def test_a_lease_counts_its_ids_together_and_gives_back_the_unused_once(prefix: str) -> None:
    scopes = [Scope("key:9102", Limits(rpm=1000, tpm=10**6, concurrency=50, daily_tokens=10**7))]
    reservation = Reservation((FUNDS,), WORST, windows=(WINDOW,))

    async def scenario() -> list[dict[str, int]]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        counts = Counts(client, prefix, "key:9102")
        await store.seed((FUNDS,), [10**9], [0], 0)
        seen = []
        single = await store.acquire(scopes, _ids(1)[0], TOKENS, 60, reservation)
        assert single.allowed
        seen.append(await counts.read())
        first, more = _ids(1)[0], _ids(4)
        at = int(time.time()) + 1
        leased = await store.acquire(scopes, first, TOKENS, 60, reservation, (more, at))
        assert leased.allowed and leased.bucket == at
        assert leased.remaining_requests == single.remaining_requests - 5
        seen.append(await counts.read())
        given = await store.give_back(scopes, more[1:], TOKENS, reservation, at)
        again = await store.give_back(scopes, more[1:], TOKENS, reservation, at)
        assert (given, again) == (3, 0)
        seen.append(await counts.read())
        await store.close()
        await client.aclose()
        return seen

    one, leased, back = asyncio.run(scenario())
    assert one == {
        "requests": 1, "tokens": TOKENS, "in_flight": 1, "day": TOKENS,
        "held": WORST, "holds": 1, "window": TOKENS,
    }  # fmt: skip
    # The lease: its first id and four more, all counted at once.
    assert leased == {key: value * 6 for key, value in one.items()}
    # Three given back: as if the single request and two of the lease's were admitted.
    assert back == {key: value * 3 for key, value in one.items()}


def test_a_lease_is_admitted_whole_or_not_at_all(prefix: str) -> None:
    scopes = [Scope("key:9103", Limits(rpm=10))]

    async def scenario() -> tuple[Any, ...]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        counts = Counts(client, prefix, "key:9103")
        for request_id in _ids(8):
            assert (await store.acquire(scopes, request_id, 0, 60)).allowed
        at = int(time.time()) + 1
        three = await store.acquire(scopes, _ids(1)[0], 0, 60, None, (_ids(2), at))
        after = (await counts.read())["requests"]
        two = await store.acquire(scopes, _ids(1)[0], 0, 60, None, (_ids(1), at))
        await store.close()
        await client.aclose()
        return three, after, two

    three, after, two = asyncio.run(scenario())
    assert not three.allowed and three.refused == "requests"
    assert after == 8  # nothing of the refused lease was counted
    assert two.allowed and two.remaining_requests == 0


# --- Through the relay -------------------------------------------------------------------


def _post(gateway: Any, secret: str, **extra: Any) -> Any:
    import httpx

    from tests.relay.conftest import chat_body

    return httpx.post(
        gateway.url + "/v1/chat/completions",
        json=chat_body(**extra),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )


def _admissions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The Redis admissions made from now on: how many ids each counted."""
    real = RedisLimitStore.acquire
    made: list[int] = []

    async def acquire(self: RedisLimitStore, *args: Any, **kwargs: Any) -> Any:
        lease = kwargs.get("lease") or (args[5] if len(args) > 5 else None)
        made.append(1 + (len(lease[0]) if lease else 0))
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(RedisLimitStore, "acquire", acquire)
    return made


def _redis_counts(key_name: str) -> dict[str, int]:
    import redis

    from portal.models import ApiKey

    client = redis.Redis.from_url(settings.REDIS_URL)
    prefix = settings.CACHES["default"]["KEY_PREFIX"]
    base = f"{prefix}:rl:key:{ApiKey.objects.get(name=key_name).pk}"
    return {
        "requests": int(client.hget(f"{base}:requests", "sum") or 0),
        "tokens": int(client.hget(f"{base}:tokens", "sum") or 0),
        "in_flight": int(client.zcard(f"{base}:conc")),
    }


def _lease_counts(gateway: Any) -> dict[str, float]:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    counts = {}
    for family in text_string_to_metric_families(httpx.get(gateway.url + "/metrics").text):
        for sample in family.samples:
            if sample.name == "tollgate_leased_admissions_total":
                counts[sample.labels["outcome"]] = sample.value
    return counts


def _until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_a_busy_keys_requests_are_admitted_from_its_lease_and_counted_once(
    gateway: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.relay.conftest import usage_events

    secret = gateway.new_key(name="busy", rpm_limit=1000, tpm_limit=10**6, concurrency_limit=1000)
    made = _admissions(monkeypatch)
    before = _lease_counts(gateway)
    answers = [_post(gateway, secret) for _ in range(12)]

    assert [answer.status_code for answer in answers] == [200] * 12
    assert sum(made) > len(made), "no lease was taken"
    assert len(made) < 12
    # Each answer's headers as if its request were admitted on its own.
    remaining = [int(answer.headers["x-ratelimit-remaining-requests"]) for answer in answers]
    assert remaining == list(range(999, 987, -1))
    events = usage_events(12)
    assert {event.request_id for event in events} == {a.headers["x-request-id"] for a in answers}
    used = sum(event.prompt_tokens + event.completion_tokens for event in events)
    # The ids no request took are given back: Redis counts each request once, with the
    # tokens it used, and no slot is left taken.
    _until(lambda: _redis_counts("busy")["requests"] == 12, "the unused ids given back")
    assert _redis_counts("busy") == {"requests": 12, "tokens": used, "in_flight": 0}
    # What /metrics says of it: every id leased was taken or given back, and every id
    # Redis counted was a request's own admission (one not taken from a lease) or leased.
    after = _lease_counts(gateway)
    counts = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    assert 0 < counts["taken"] < 12
    assert counts["leased"] == counts["taken"] + counts.get("given_back", 0)
    assert sum(made) == (12 - counts["taken"]) + counts["leased"]


@pytest.mark.django_db(transaction=True)
def test_leases_admit_a_key_exactly_up_to_its_limit(
    gateway: Any, sim: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    settings.RELAY_LEASE_MIN_ROOM = 0  # a limit this low is otherwise never leased
    secret = gateway.new_key(name="limited", rpm_limit=24)
    made = _admissions(monkeypatch)

    statuses = [_post(gateway, secret).status_code for _ in range(30)]

    assert statuses == [200] * 24 + [429] * 6
    assert max(made) > 1, "no lease was taken"
    # Near the limit the key is admitted request by request again.
    assert made[-8:] == [1] * 8
    _until(lambda: _redis_counts("limited")["requests"] == 24, "the unused ids given back")


def test_a_request_takes_a_leased_id_only_if_it_fits_and_the_key_is_unchanged(
    prefix: str,
) -> None:
    from relay.leases import Leases

    scopes = [Scope("key:9104", Limits(rpm=1000, tpm=10**6))]
    reservation = Reservation((FUNDS,), WORST)

    async def scenario() -> tuple[Any, ...]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        counts = Counts(client, prefix, "key:9104")
        await store.seed((FUNDS,), [10**9], [0], 0)
        leases = Leases()
        more = _ids(3)
        admission = await store.acquire(
            scopes, _ids(1)[0], TOKENS, 60, reservation, (more, leases.at())
        )
        leases.add(9104, store, scopes, TOKENS, reservation, admission, more, 5, 60)
        bigger = leases.take(9104, TOKENS + 1, reservation, 5, store)
        dearer = leases.take(9104, TOKENS, Reservation((FUNDS,), WORST + 1), 5, store)
        other = leases.take(9104, TOKENS, Reservation(("t1:funds",), WORST), 5, store)
        fits = leases.take(9104, TOKENS - 10, Reservation((FUNDS,), WORST - 1), 5, store)
        changed = leases.take(9104, TOKENS, reservation, 6, store)  # the key's limits changed
        gone = leases.take(9104, TOKENS, reservation, 5, store)
        for _ in range(200):  # the two ids left are given back in the background
            if (await counts.read())["requests"] == 2:
                break
            await asyncio.sleep(0.01)
        after = await counts.read()
        await store.close()
        await client.aclose()
        return bigger, dearer, other, fits, changed, gone, more, after

    bigger, dearer, other, fits, changed, gone, more, after = asyncio.run(scenario())
    assert bigger is None and dearer is None and other is None
    assert fits is not None
    admission, _, request_id, held = fits
    # The first id not taken, holding (and told) what the lease counted for it.
    assert request_id == more[0] and held == reservation
    assert admission.reserved_tokens == TOKENS and admission.remaining_requests == 1000 - 2
    assert changed is None and gone is None
    assert after["requests"] == 2 and after["held"] == 2 * WORST and after["tokens"] == 2 * TOKENS


def test_a_busy_lease_is_renewed_before_it_runs_out(
    prefix: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half way through a lease its next one is counted, so that the key's requests find
    one waiting rather than each going to Redis while it is asked for; the next takes
    over when the first runs out, and what neither handed out is given back."""
    from relay import leases as leases_module
    from relay.leases import Leases

    settings.RELAY_LEASE_SIZE = 4
    # The scenario waits up to a second at a time for the renewal; a loaded machine must
    # not see the lease run out meanwhile (it is ended by hand at the end). Nor may the
    # longer lease meet midnight UTC, where none is given (the key has no daily limit).
    monkeypatch.setattr(leases_module, "LEASE_SECONDS", 10.0)
    monkeypatch.setattr(leases_module, "_day", lambda at: 0)
    scopes = [Scope("key:9106", Limits(rpm=1000))]

    async def scenario() -> tuple[Any, ...]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        counts = Counts(client, prefix, "key:9106")
        leases = Leases()
        acquired = []
        real = store.acquire

        async def acquire(*args: Any, **kwargs: Any) -> Any:
            acquired.append(args[1])
            return await real(*args, **kwargs)

        store.acquire = acquire  # type: ignore[method-assign]
        more = _ids(3)
        admission = await real(scopes, _ids(1)[0], 0, 60, None, (more, leases.at()))
        leases.add(9106, store, scopes, 0, None, admission, more, 1, 60)
        first = leases.take(9106, 0, None, 1, store)
        for _ in range(3):
            leases._count(9106)  # a busy key: four admissions here this second
        second = leases.take(9106, 0, None, 1, store)  # one id left: the renewal is asked
        for _ in range(200):
            if leases._leases[9106].following is not None:
                break
            await asyncio.sleep(0.005)
        counted = (await counts.read())["requests"]
        taken = [leases.take(9106, 0, None, 1, store) for _ in range(5)]
        for _ in range(200):  # still busy: the renewal is renewed in turn
            if 9106 not in leases._asking:
                break
            await asyncio.sleep(0.005)
        leases._end(9106, leases._leases.get(9106))  # and whatever follows it
        for _ in range(200):
            if (await counts.read())["requests"] == 8:
                break
            await asyncio.sleep(0.01)
        after = (await counts.read())["requests"]
        await store.close()
        await client.aclose()
        return more, first, second, acquired, counted, taken, after

    more, first, second, acquired, counted, taken, after = asyncio.run(scenario())
    assert [first[2], second[2]] == more[:2]
    # The first lease's four ids and the renewal's four, all counted before any is taken.
    assert counted == 8
    # The first lease's last id, then the renewal's, starting with the one it was asked
    # with: the renewal took over without a request going to Redis.
    assert taken[0][2] == more[2]
    assert taken[1][2] == acquired[0] and all(t is not None for t in taken)
    # Eight requests admitted (the first lease's own, seven taken); the ids not taken, of
    # the renewal and of its own renewal, given back.
    assert len(acquired) == 2 and after == 8


def test_a_lease_is_not_renewed_for_a_key_near_its_limits(prefix: str, settings: Any) -> None:
    from relay.leases import Leases

    settings.RELAY_LEASE_SIZE = 4
    scopes = [Scope("key:9107", Limits(rpm=8))]

    async def scenario() -> tuple[int, bool]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        counts = Counts(client, prefix, "key:9107")
        leases = Leases()
        more = _ids(3)
        # Four of eight counted: the limit is half used, no room is left to lease.
        admission = await store.acquire(scopes, _ids(1)[0], 0, 60, None, (more, leases.at()))
        leases.add(9107, store, scopes, 0, None, admission, more, 1, 60)
        for _ in range(4):
            leases._count(9107)
        leases.take(9107, 0, None, 1, store)
        leases.take(9107, 0, None, 1, store)
        await asyncio.sleep(0.05)
        asked = 9107 in leases._asking or leases._leases[9107].following is not None
        requests = (await counts.read())["requests"]
        leases._end(9107, leases._leases.get(9107))
        await asyncio.sleep(0.05)
        await store.close()
        await client.aclose()
        return requests, asked

    requests, asked = asyncio.run(scenario())
    assert requests == 4 and not asked


def test_a_key_with_a_small_budget_never_leases(settings: Any) -> None:
    """Ids counted ahead could refuse the key's requests in another process while they
    wait here: a key whose room (before any limit or money scope is half used) is under
    RELAY_LEASE_MIN_ROOM requests is admitted request by request, exactly."""
    from relay.leases import Leases

    settings.RELAY_LEASE_MIN_ROOM = 256
    leases = Leases()
    wide = Room(requests=10**6, tokens=10**9, micros=10**12)
    for _ in range(4):
        leases.size(1, 10, None, 0, wide)  # a busy key (whose second admission asked)
    leases.answered(1)
    money = Reservation((FUNDS,), WORST)
    few_requests = leases.size(1, 10, None, 0, Room(255, 10**9, 10**12))
    few_tokens = leases.size(1, 10, None, 0, Room(10**6, 2_550, 10**12))
    little_money = leases.size(1, 10, money, 0, Room(10**6, 10**9, 255 * WORST))
    enough = leases.size(1, 10, money, 0, Room(256, 2_560, 256 * WORST))
    leases.answered(1)
    assert few_requests == few_tokens == little_money == []
    # Busy with the seven admissions before it, and room to spare: seven ids besides its own.
    assert len(enough) == 7


def test_one_admission_at_a_time_asks_for_a_keys_lease(settings: Any) -> None:
    """Concurrent requests of a busy key must not each lease a batch (most of which
    would be given back): while one admission asks, the others ask for none."""
    from relay.leases import Leases

    settings.RELAY_LEASE_SIZE = 8
    leases = Leases()
    room = Room(requests=10**6, tokens=10**9, micros=10**12)
    first = leases.size(1, 10, None, 0, room)  # the key's first admission here: not busy
    asked = leases.size(1, 10, None, 0, room)
    meanwhile = leases.size(1, 10, None, 0, room)
    leases.answered(1)  # refused, or failed: no lease came of it
    again = leases.size(1, 10, None, 0, room)
    assert first == [] and len(asked) == 1 and meanwhile == [] and len(again) == 3
    leases.answered(1)
    settings.RELAY_LEASE_SIZE = 1
    assert leases.size(1, 10, None, 0, room) == []  # turned off


@pytest.mark.django_db(transaction=True)
def test_a_lease_that_does_not_fit_still_admits_its_request(
    gateway: Any, sim: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Others may use a key's room between its admissions: a lease refused for its extra
    ids must not refuse the request that asked, which is admitted on its own."""
    from relay.exchange import new_request_id
    from relay.leases import Leases

    secret = gateway.new_key(name="tight", rpm_limit=10)
    made = _admissions(monkeypatch)
    # Every admission asks for fifteen more ids, whatever the room (which it never has).
    monkeypatch.setattr(Leases, "size", lambda self, *args: [new_request_id() for _ in range(15)])

    statuses = [_post(gateway, secret).status_code for _ in range(12)]

    assert statuses == [200] * 10 + [429] * 2
    assert made[:2] == [16, 1]  # the lease was refused, the request alone admitted
    assert _redis_counts("tight")["requests"] == 10


def test_a_lease_is_not_taken_by_a_request_settling_in_another_store(prefix: str) -> None:
    from relay.leases import Leases

    scopes = [Scope("key:9105", Limits(rpm=1000))]

    async def scenario() -> tuple[Any, Any, int]:
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.REDIS_URL)
        store = RedisLimitStore(client, prefix)
        counts = Counts(client, prefix, "key:9105")
        leases = Leases()
        more = _ids(2)
        admission = await store.acquire(scopes, _ids(1)[0], 0, 60, None, (more, leases.at()))
        leases.add(9105, store, scopes, 0, None, admission, more, 1, 60)
        elsewhere = leases.take(9105, 0, None, 1, RedisLimitStore(client, prefix))
        after = leases.take(9105, 0, None, 1, store)  # the lease ended: given back
        for _ in range(200):
            if (await counts.read())["requests"] == 1:
                break
            await asyncio.sleep(0.01)
        requests = (await counts.read())["requests"]
        await store.close()
        await client.aclose()
        return elsewhere, after, requests

    elsewhere, after, requests = asyncio.run(scenario())
    assert elsewhere is None and after is None and requests == 1
