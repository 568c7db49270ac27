"""The hot path's Lua calls, pipelined on one connection of their own.

Every relayed request makes one or two Lua calls (admission, settlement). Sent through
redis-py's client, each costs a pool checkout, redis-py's command machinery and a
connection of its own while it waits: about 0.1 ms of CPU per call. ``ScriptPipe``
keeps one connection per client (made and authenticated by redis-py's pool, then used
directly): a call waits for the end of the event loop's turn, and the calls made within
that turn go out in one write (under load, 0.20 writes a call rather than 0.27 when a
call with none in flight went out at once; alone, the wait is one more turn of an idle
loop); the replies come back in order on the same connection, parsed by hiredis as they
arrive, and each caller gets its own reply. Each script stays atomic on its own; a
pipeline is not a transaction, and none is needed: the calls are independent.

Failures stay redis-py's exceptions (``RedisError``), so callers fail closed or open as
before: a connection that breaks fails every call waiting on it; a call sent on a
connection that broke before answering is tried once more on a new one (as redis-py's
one retry did); a reply that does not come within the client's socket timeout fails the
connection and its calls with ``TimeoutError``. A script Redis no longer knows (it was
restarted or flushed) is sent again whole, which loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

DEFAULT_TIMEOUT = 5.0


class _Link(asyncio.Protocol):
    """One connection and the calls on it: this turn's unsent ones, and the sent ones in
    the order their replies will come. It takes the connection's transport over from
    redis-py's stream reader, so replies are parsed as they arrive, with no reader task."""

    def __init__(self, connection: Any, lost: Callable[[_Link], None]) -> None:
        self.connection = connection
        self.lost = lost
        self.transport: asyncio.Transport | None = connection._writer.transport
        # Per call: its reply's future, the packed command, and what to tell once written.
        self.outgoing: list[tuple[asyncio.Future[Any], bytes, asyncio.Future[None] | None]] = []
        self.sent: deque[asyncio.Future[Any]] = deque()
        self.parser = hiredis.Reader(
            protocolError=InvalidResponse, replyError=BaseParser.parse_error
        )
        self.error: RedisError | None = None
        # Calls written but not all taken by the kernel yet (Redis reads slower than this
        # process writes): their ``written`` waits until they are (``resume_writing``).
        self.unflushed: list[tuple[asyncio.Future[Any], bytes, asyncio.Future[None] | None]] = []
        assert self.transport is not None
        # redis-py's protocol still hears that the connection closed (its writer waits
        # for that), but no longer reads.
        self.stream: asyncio.BaseProtocol = self.transport.get_protocol()
        self.transport.set_protocol(self)
        # Told (``pause_writing``, then ``resume_writing``) whenever a write leaves bytes
        # in this process, and once they have all gone to the kernel.
        self.transport.set_write_buffer_limits(high=0)

    def resume_writing(self) -> None:
        flushed, self.unflushed = self.unflushed, []
        _tell_written(flushed)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed(data)
            while (reply := self.parser.gets()) is not False:
                future = self.sent.popleft()
                if not future.done():
                    future.set_result(reply)
        except RedisError as exc:
            self.fail(exc)
        except Exception as exc:  # IndexError: a reply nobody asked for
            self.fail(RedisConnectionError(f"Error reading from Redis: {exc!r}"))

    def eof_received(self) -> bool:
        self.fail(RedisConnectionError("Connection closed by server."))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError(f"Connection to Redis lost: {exc!r}"))
        with contextlib.suppress(Exception):
            self.stream.connection_lost(exc)

    def fail(self, error: RedisError, answered_late: bool = False) -> None:
        """Fail every call on this connection and close it; it is not used again."""
        if self.error is None:
            self.error = error
        waiting = [f for f, _, _ in self.outgoing] + list(self.sent)
        _tell_written(self.outgoing + self.unflushed)
        self.outgoing = []
        self.unflushed = []
        self.sent.clear()
        for future in waiting:
            if not future.done():
                # A timed-out call is not retried: it waited long enough already.
                future.set_exception(error if answered_late else _Unanswered(error))
        transport, self.transport = self.transport, None
        if transport is not None:
            transport.abort()
            self.lost(self)


class ScriptPipe:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        self._dropping: set[asyncio.Task[None]] = set()
        kwargs = getattr(redis, "connection_pool", None)
        kwargs = getattr(kwargs, "connection_kwargs", {}) or {}
        self._timeout = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT)

    @property
    def timeout(self) -> float:
        """How long a call waits for its reply (the client's socket timeout)."""
        return self._timeout

    async def run(
        self,
        script: Any,
        keys: list[Any],
        args: list[Any],
        written: asyncio.Future[None] | None = None,
    ) -> Any:
        """``script(keys=keys, args=args)``, pipelined with the others of this loop turn.
        ``written``, if given, is resolved once the call is written to Redis's connection,
        all of it handed to the kernel (so that it reaches Redis even if this process dies
        next), or once it failed to be; before the reply comes."""
        try:
            reply = await self._call(("EVALSHA", script.sha, len(keys), *keys, *args), written)
        except _Unanswered:
            # The connection broke before answering (a connection left idle that Redis
            # or a proxy had dropped): once more, on a new one.
            command = ("EVALSHA", script.sha, len(keys), *keys, *args)
            reply = await self._call(command, written, last_try=True)
        if isinstance(reply, NoScriptError):  # Redis restarted or flushed its scripts
            command = ("EVAL", script.script, len(keys), *keys, *args)
            reply = await self._call(command, written, last_try=True)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def close(self) -> None:
        if self._link is not None:
            self._link.fail(RedisConnectionError("The script pipe was closed."))
        if self._dropping:
            await asyncio.gather(*self._dropping, return_exceptions=True)

    async def _call(
        self,
        command: tuple[Any, ...],
        written: asyncio.Future[None] | None = None,
        last_try: bool = False,
    ) -> Any:
        link = self._link
        if link is None:
            link = await self._connected()
            if link.transport is None:  # lost while this caller was being woken
                error = link.error or RedisConnectionError("Connection to Redis lost.")
                raise error if last_try else _Unanswered(error)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        # Sent at the end of this turn of the loop, with the calls the turn's other work
        # makes: a write that wakes Redis costs the relay more than the call's own work.
        link.outgoing.append((future, hiredis.pack_command(command), written))
        if len(link.outgoing) == 1:
            loop.call_soon(self._write, link)
        timer = loop.call_later(self._timeout, self._timed_out, link, future)
        try:
            return await future
        except _Unanswered as unanswered:
            if last_try:
                raise unanswered.error from None
            raise
        finally:
            timer.cancel()

    async def _connected(self) -> _Link:
        """The current link, or a new one: one connect, whoever asks meanwhile. It runs as
        a task of its own, so a caller that is cancelled does not cancel the others'."""
        connecting = self._connecting
        if connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            connecting.add_done_callback(_retrieved)
        return await asyncio.shield(connecting)

    async def _connect(self) -> _Link:
        try:
            connection = await self._redis.connection_pool.get_connection()
            link = self._link = _Link(connection, self._lost)
            return link
        finally:
            self._connecting = None

    def _write(self, link: _Link) -> None:
        outgoing, link.outgoing = link.outgoing, []
        if link.transport is None:  # broke since: its calls were failed
            _tell_written(outgoing)
            return
        # A caller cancelled before its turn ended has gone: its call is not sent.
        chunks = []
        for future, packed, _ in outgoing:
            if not future.done():
                link.sent.append(future)
                chunks.append(packed)
        if chunks:
            link.transport.write(b"".join(chunks))
            if link.transport.get_write_buffer_size():
                # Part of it is still in this process, which could die before it went
                # out: ``written`` (what a settlement waits for before the answer's last
                # bytes) is told once the kernel has it all (``_Link.resume_writing``).
                link.unflushed += outgoing
                return
        _tell_written(outgoing)

    def _timed_out(self, link: _Link, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        # Replies come in order: one that is late holds up every call behind it.
        link.fail(RedisTimeoutError("Timeout reading from Redis"), answered_late=True)

    def _lost(self, link: _Link) -> None:
        """A link failed: the next call connects anew, and its connection goes back to
        the pool (disconnected) meanwhile."""
        if self._link is link:
            self._link = None
        task = asyncio.get_running_loop().create_task(self._release(link))
        self._dropping.add(task)
        task.add_done_callback(self._dropping.discard)

    async def _release(self, link: _Link) -> None:
        """Give a failed link's connection back to the pool, disconnected."""
        connection, link.connection = link.connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            await connection.disconnect()
        with contextlib.suppress(Exception):
            await self._redis.connection_pool.release(connection)


def _tell_written(
    calls: list[tuple[asyncio.Future[Any], bytes, asyncio.Future[None] | None]],
) -> None:
    """The calls are written (or failed): tell those who wait for that."""
    for _, _, written in calls:
        if written is not None and not written.done():
            written.set_result(None)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A failed connect is raised to its callers; if they all left, nobody needs it."""
    if not task.cancelled():
        task.exception()


class _Unanswered(Exception):
    """The connection broke before the call was answered (``error`` says how)."""

    def __init__(self, error: RedisError) -> None:
        super().__init__(str(error))
        self.error = error
