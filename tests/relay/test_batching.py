"""The hot path's Lua calls share one pipelined connection, and each keeps its own answer,
its own atomicity and its own error; a broken, silent or restarted Redis fails the calls
as redis-py's errors (so limits fail closed or open as configured), then recovers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.batching import ScriptPipe
from relay.limits import Limits, RedisLimitStore, Reservation, Scope, money_keys
from relay.limits.shapes import limit_keys
from tests.faultproxy import FaultProxy

pytestmark = pytest.mark.services

# Adds ARGV[1] to KEYS[1] and returns the new value: its answer says which call it was.
INCR_LUA = "return redis.call('INCRBY', KEYS[1], ARGV[1])"
FAILING_LUA = "return redis.error_reply('ERR refused on purpose')"


def _client(url: str | None = None, **kwargs: Any) -> Any:
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url or settings.REDIS_URL, **kwargs)


class _Writes:
    """Counts the writes a pipe makes on its connection (the real socket is still used)."""

    def __init__(self, pipe: ScriptPipe) -> None:
        self.count = 0
        link = pipe._link
        assert link is not None and link.transport is not None
        real = link.transport.write

        def write(data: bytes) -> None:
            self.count += 1
            real(data)

        link.transport.write = write  # type: ignore[method-assign]


def test_calls_of_one_turn_share_one_write_and_keep_their_answers() -> None:
    async def run() -> tuple[list[int], int, int, int]:
        client = _client()
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        key = f"test-pipe-{uuid.uuid4().hex}"
        await pipe.run(script, [key], [0])  # connects
        writes = _Writes(pipe)
        answers = await asyncio.gather(*(pipe.run(script, [key], [1]) for _ in range(40)))
        alone = await pipe.run(script, [key], [1000])
        connections = len(client.connection_pool._in_use_connections)
        await client.delete(key)
        await pipe.close()
        await client.aclose()
        return answers, alone, writes.count, connections

    answers, alone, writes, connections = asyncio.run(run())
    assert sorted(answers) == list(range(1, 41))  # each call ran once, atomically
    assert alone == 1040
    assert writes == 2  # the turn's 40 in one write, then the last
    assert connections == 1  # every call on the pipe's one connection


def test_an_error_reply_fails_its_own_call_only() -> None:
    async def run() -> list[Any]:
        client = _client()
        pipe = ScriptPipe(client)
        good = client.register_script(INCR_LUA)
        bad = client.register_script(FAILING_LUA)
        key = f"test-pipe-{uuid.uuid4().hex}"
        results = await asyncio.gather(
            pipe.run(good, [key], [1]),
            pipe.run(bad, [key], []),
            pipe.run(good, [key], [1]),
            return_exceptions=True,
        )
        await client.delete(key)
        await pipe.close()
        await client.aclose()
        return results

    results = asyncio.run(run())
    assert isinstance(results[1], ResponseError)
    assert "refused on purpose" in str(results[1])
    assert sorted([results[0], results[2]]) == [1, 2]


def test_scripts_flushed_from_redis_are_loaded_again() -> None:
    async def run() -> list[int]:
        client = _client()
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        key = f"test-pipe-{uuid.uuid4().hex}"
        await client.script_flush()
        answers = await asyncio.gather(*(pipe.run(script, [key], [2]) for _ in range(5)))
        await client.delete(key)
        await pipe.close()
        await client.aclose()
        return answers

    assert sorted(asyncio.run(run())) == [2, 4, 6, 8, 10]


def test_a_caller_that_left_before_the_turn_ended_sends_nothing() -> None:
    async def run() -> tuple[list[int], int]:
        client = _client()
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        key = f"test-pipe-{uuid.uuid4().hex}"
        await pipe.run(script, [key], [0])  # connected
        first = asyncio.ensure_future(pipe.run(script, [key], [0]))
        leaving = asyncio.ensure_future(pipe.run(script, [key], [100]))
        staying = [asyncio.ensure_future(pipe.run(script, [key], [1])) for _ in range(3)]
        await asyncio.sleep(0)  # the calls are queued for the turn's end
        leaving.cancel()
        await first
        answers = await asyncio.gather(*staying)
        total = int(await client.get(key))
        await client.delete(key)
        await pipe.close()
        await client.aclose()
        return answers, total

    answers, total = asyncio.run(run())
    assert sorted(answers) == [1, 2, 3]
    assert total == 3


def test_a_caller_that_left_after_sending_does_not_shift_the_others_answers() -> None:
    async def run() -> list[tuple[int, int]]:
        client = _client()
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        keys = [f"test-pipe-{uuid.uuid4().hex}" for _ in range(3)]
        await pipe.run(script, [keys[0]], [0])
        pairs = []
        for round_ in range(20):
            # Each call adds to its own key: its answer must be its own key's total.
            left = asyncio.ensure_future(pipe.run(script, [keys[0]], [1]))
            mine = asyncio.ensure_future(pipe.run(script, [keys[1]], [7]))
            theirs = asyncio.ensure_future(pipe.run(script, [keys[2]], [5]))
            await asyncio.sleep(0)
            await asyncio.sleep(0)  # written: the first call is on its way to Redis
            left.cancel()
            pairs.append((await mine, (round_ + 1) * 7))
            pairs.append((await theirs, (round_ + 1) * 5))
        await client.delete(*keys)
        await pipe.close()
        await client.aclose()
        return pairs

    for answer, expected in asyncio.run(run()):
        assert answer == expected


def test_a_dead_port_fails_every_call() -> None:
    async def run() -> list[Any]:
        client = _client("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        results = await asyncio.gather(
            *(pipe.run(script, ["k"], [1]) for _ in range(4)), return_exceptions=True
        )
        await pipe.close()
        await client.aclose()
        return results

    results = asyncio.run(run())
    assert len(results) == 4
    assert all(isinstance(r, RedisConnectionError) for r in results)


def test_a_redis_that_went_away_and_came_back_is_used_again() -> None:
    target = urlparse(settings.REDIS_URL)
    proxy = FaultProxy(target.hostname or "127.0.0.1", target.port or 6379)

    async def run() -> tuple[int, Any, int]:
        client = _client(f"redis://127.0.0.1:{proxy.port}{target.path}", socket_timeout=2)
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        key = f"test-pipe-{uuid.uuid4().hex}"
        first = await pipe.run(script, [key], [1])
        proxy.down()  # the pipe's idle connection is reset
        proxy.up()
        # The broken connection is noticed and replaced: the caller never sees it.
        second = await pipe.run(script, [key], [1])
        proxy.down()
        try:
            during = await pipe.run(script, [key], [1])
        except RedisConnectionError as exc:
            during = exc
        proxy.up()
        after = await pipe.run(script, [key], [1])
        await client.delete(key)
        await pipe.close()
        await client.aclose()
        return first + second, during, after

    try:
        total, during, after = asyncio.run(run())
    finally:
        proxy.close()
    assert total == 3  # 1, then 2: counted once each
    assert isinstance(during, RedisConnectionError)
    assert after == 3


def test_a_pooled_connection_whose_redis_died_fails_the_first_call_in_time() -> None:
    """The pipe's first connection may come from the pool already dead (the server went
    away while it sat idle there): its call fails within the socket timeout, as the
    limits' fail-closed or fail-open needs, and never waits for a client to give up."""
    target = urlparse(settings.REDIS_URL)
    proxy = FaultProxy(target.hostname or "127.0.0.1", target.port or 6379)

    async def run() -> tuple[Any, float]:
        client = _client(f"redis://127.0.0.1:{proxy.port}{target.path}", socket_timeout=0.5)
        await client.get(f"test-pipe-{uuid.uuid4().hex}")  # leaves a connection in the pool
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        proxy.down()  # and stays down
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            outcome: Any = await asyncio.wait_for(
                pipe.run(script, [f"test-pipe-{uuid.uuid4().hex}"], [1]), 10
            )
        except Exception as exc:
            outcome = exc
        took = loop.time() - started
        await pipe.close()
        await client.aclose()
        return outcome, took

    try:
        outcome, took = asyncio.run(run())
    finally:
        proxy.close()
    assert isinstance(outcome, RedisConnectionError | RedisTimeoutError), repr(outcome)
    assert took < 5, took


async def _fake_redis(
    script_reply: bytes | None = None, gate: asyncio.Event | None = None
) -> tuple[asyncio.Server, int]:
    """A server that answers +OK to the connection's handshake (once ``gate`` is set) and
    ``script_reply`` to a script, or nothing at all."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import hiredis

        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                if command[0].upper() not in (b"EVALSHA", b"EVAL"):
                    if gate is not None:
                        await gate.wait()
                    writer.write(b"+OK\r\n")
                elif script_reply is not None:
                    writer.write(script_reply)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_a_caller_cancelled_while_connecting_does_not_strand_the_others() -> None:
    async def run() -> list[Any]:
        gate = asyncio.Event()
        server, port = await _fake_redis(b":7\r\n", gate)
        client = _client(f"redis://127.0.0.1:{port}/0", socket_timeout=1)
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        calls = [asyncio.ensure_future(pipe.run(script, ["k"], [1])) for _ in range(3)]
        await asyncio.sleep(0.05)  # all three wait for the one connect
        calls[0].cancel()
        gate.set()
        async with asyncio.timeout(2):
            results = await asyncio.gather(*calls[1:])
        await pipe.close()
        await client.aclose()
        server.close()
        await server.wait_closed()
        return results

    assert asyncio.run(run()) == [7, 7]


def test_a_reply_that_does_not_come_fails_the_calls_in_time() -> None:
    async def run() -> tuple[list[Any], float, int]:
        server, port = await _fake_redis()
        client = _client(f"redis://127.0.0.1:{port}/0", socket_timeout=0.3)
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        loop = asyncio.get_running_loop()
        started = loop.time()
        results = await asyncio.gather(
            *(pipe.run(script, ["k"], [1]) for _ in range(3)), return_exceptions=True
        )
        waited = loop.time() - started
        pool = client.connection_pool
        async with asyncio.timeout(2):  # the reader task drops it once cancelled
            while pool._in_use_connections:
                await asyncio.sleep(0.01)
        in_use = len(pool._in_use_connections)
        await pipe.close()
        await client.aclose()
        server.close()
        await server.wait_closed()
        return results, waited, in_use

    results, waited, in_use = asyncio.run(run())
    assert all(isinstance(r, RedisTimeoutError) for r in results)
    assert 0.3 <= waited < 2.0
    assert in_use == 0  # the stuck connection was dropped, not kept


def test_limits_stay_exact_when_their_checks_are_pipelined() -> None:
    async def run() -> int:
        client = _client()
        store = RedisLimitStore(client, f"test-pipe-{uuid.uuid4().hex}")
        scopes = [Scope("key:1", Limits(rpm=20))]
        admissions = await asyncio.gather(
            *(store.acquire(scopes, f"r{i}", 0, 30) for i in range(60))
        )
        await store.close()
        await client.aclose()
        return sum(a.allowed for a in admissions)

    assert asyncio.run(run()) == 20


def test_written_is_told_before_the_reply_comes() -> None:
    parts = urlparse(settings.REDIS_URL)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    key = f"test-pipe-{uuid.uuid4().hex}"

    async def run() -> tuple[bool, int, int]:
        client = _client(f"redis://127.0.0.1:{proxy.port}{parts.path or '/0'}")
        pipe = ScriptPipe(client)
        script = client.register_script(INCR_LUA)
        await pipe.run(script, [key], [0])  # connects, and loads the script
        proxy.hold_replies()
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call = asyncio.ensure_future(pipe.run(script, [key], [5], written))
        await asyncio.wait_for(asyncio.shield(written), 10)
        answered_before_release = call.done()
        direct = _client()
        # Redis runs it (only its reply is held), once the proxy has passed the call on:
        # under load that may be a moment after this process's kernel took it.
        deadline = asyncio.get_running_loop().time() + 10
        counted = int(await direct.get(key) or 0)
        while counted != 5 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
            counted = int(await direct.get(key) or 0)
        proxy.release_replies()
        reply = await asyncio.wait_for(call, 10)
        await direct.delete(key)
        await direct.aclose()
        await pipe.close()
        await client.aclose()
        return answered_before_release, counted, reply

    try:
        assert asyncio.run(run()) == (False, 5, 5)
    finally:
        proxy.release_replies()
        proxy.close()


def test_written_waits_until_the_kernel_has_the_whole_call() -> None:
    """A Redis too busy to read: the call's bytes fill the sockets between, and the rest
    stays in this process, which could die before it went out. ``written`` (what a
    settlement waits for before the answer's last bytes) is told only once it all went."""
    parts = urlparse(settings.REDIS_URL)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    key = f"test-pipe-{uuid.uuid4().hex}"
    # More than the kernel's socket buffers on both sides can ever hold.
    bulk = b"x" * (_most_socket_buffers() + (4 << 20))

    async def run() -> tuple[int, bool, int, int]:
        client = _client(f"redis://127.0.0.1:{proxy.port}{parts.path or '/0'}")
        pipe = ScriptPipe(client)
        script = client.register_script("redis.call('INCRBY', KEYS[1], ARGV[1]) return #ARGV[2]")
        await pipe.run(script, [key], [0, b""])  # connects, and loads the script
        link = pipe._link
        assert link is not None and link.transport is not None
        proxy.hold_requests()
        written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        call = asyncio.ensure_future(pipe.run(script, [key], [5, bulk], written))
        for _ in range(1000):  # until the write is made, part of it left here
            if link.transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.01)
        left_here = link.transport.get_write_buffer_size()
        told_while_held = written.done()
        proxy.release_requests()
        await asyncio.wait_for(asyncio.shield(written), 30)
        reply = await asyncio.wait_for(call, 30)
        direct = _client()
        counted = int(await direct.get(key))
        await direct.delete(key)
        await direct.aclose()
        await pipe.close()
        await client.aclose()
        return left_here, told_while_held, counted, reply

    try:
        left_here, *rest = asyncio.run(run())
        assert left_here > 0, "the kernel took the whole call: nothing was tested"
        assert rest == [False, 5, len(bulk)]
    finally:
        proxy.release_requests()
        proxy.close()


def _most_socket_buffers() -> int:
    """The most a TCP socket's send buffer and its peer's receive buffer can hold here."""
    try:
        send = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
        receive = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 64 << 20
    return send + receive


def test_an_admission_run_twice_holds_its_money_once() -> None:
    """Redis ran the admission, then its connection broke before the reply: the pipe sends
    it again on a new one. The money must be held once, or the second hold would never be
    released and the tenant's balance would shrink for good."""
    parts = urlparse(settings.REDIS_URL)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    prefix = f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4().hex}"
    scope = "t1:funds"
    held_key, holds_key = money_keys(prefix, scope)[2:4]

    async def run() -> tuple[bool, int, int]:
        direct = _client()
        client = _client(f"redis://127.0.0.1:{proxy.port}{parts.path or '/0'}")
        store = RedisLimitStore(client, prefix)
        await store.seed((scope,), [10_000], [0], generation=1)
        money = Reservation((scope,), 1_000)
        first = await store.acquire([], "warm", 0, 30, money)  # connects, loads the script
        await store.release([], "warm", first, None, money, 0)
        proxy.hold_replies()
        admitting = asyncio.ensure_future(store.acquire([], "twice", 0, 30, money))
        while not await direct.hexists(holds_key, "twice"):  # Redis ran it
            await asyncio.sleep(0.005)
        proxy.down()  # the connection breaks with the reply unsent
        proxy.release_replies()
        proxy.up()
        admission = await asyncio.wait_for(admitting, 10)
        held = int(await direct.get(held_key) or 0)
        holds = int(await direct.hget(holds_key, "twice") or 0)
        await direct.aclose()
        await store.close()
        await client.aclose()
        return admission.allowed, held, holds

    try:
        allowed, held, holds = asyncio.run(run())
    finally:
        proxy.release_replies()
        proxy.close()
    assert (allowed, held, holds) == (True, 1_000, 1_000)


def test_a_settlement_run_twice_corrects_the_tokens_once() -> None:
    """Redis ran the settlement, then its connection broke before the reply: the pipe sends
    it again on a new one. The request's token correction (reserved 1,000, used 100) must
    apply once: applied twice, the minute's and the day's counts would fall 900 below what
    was used, and the key could pass its limits by that much. Its usage event is queued
    once too: two copies would both be confirmed as written, adding its cost to the
    scope's written total twice."""
    parts = urlparse(settings.REDIS_URL)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 6379)
    prefix = f"{settings.CACHES['default']['KEY_PREFIX']}-{uuid.uuid4().hex}"
    scopes = [Scope("key:1", Limits(tpm=10_000, daily_tokens=100_000))]

    event = b'{"request_id":"twice"}'

    async def run() -> tuple[bool, int, int, int, bool]:
        direct = _client()
        client = _client(f"redis://127.0.0.1:{proxy.port}{parts.path or '/0'}")
        store = RedisLimitStore(client, prefix)
        warm = await store.acquire([], "warm", 0, 30)  # connects, loads both scripts
        await store.release([], "warm", warm, None)
        admission = await store.acquire(scopes, "twice", 1_000, 30)
        tokens_key, _, day_key = limit_keys(scopes, prefix, admission.bucket)
        proxy.hold_replies()
        settling = asyncio.ensure_future(
            store.release(scopes, "twice", admission, 100, event=event)
        )
        while int(await direct.get(day_key) or 0) != 100:  # Redis ran it
            await asyncio.sleep(0.005)
        proxy.down()  # the connection breaks with the reply unsent
        proxy.release_replies()
        proxy.up()
        settled = await asyncio.wait_for(settling, 10)
        minute = int(await direct.hget(tokens_key, "sum") or 0)
        day = int(await direct.get(day_key) or 0)
        # A request id is settled once: the same settlement later does nothing either.
        again = await store.release(scopes, "twice", admission, 100, event=event)
        after = int(await direct.get(day_key) or 0)
        queued = int(await direct.llen(store.queue_key))
        await direct.delete(store.queue_key)
        await direct.aclose()
        await store.close()
        await client.aclose()
        return settled, minute, day, queued, again and after == day

    try:
        settled, minute, day, queued, again = asyncio.run(run())
    finally:
        proxy.release_replies()
        proxy.close()
    assert (settled, minute, day, queued, again) == (True, 100, 100, 1, True)
