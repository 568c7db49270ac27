"""The hot path's Lua calls, pipelined on one connection of their own.

Every relayed request makes one or two Lua calls (admission, settlement). Sent through
redis-py's client, each costs a pool checkout, redis-py's command machinery and a
connection of its own while it waits: about 0.1 ms of CPU per call. ``ScriptPipe``
keeps one connection per client (made and authenticated by redis-py's pool, then used
directly): the calls made within one turn of the event loop go out in one write, the
replies come back in order on the same connection, read by one task and parsed by
hiredis, and each caller gets its own reply. Each script stays atomic on its own; a
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
import logging
from collections import deque
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 5.0


class _Link:
    """One connection and the calls on it: sent ones in order, and this turn's unsent."""

    __slots__ = ("connection", "outgoing", "reader", "sent", "task", "writer")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.reader: asyncio.StreamReader = connection._reader
        self.writer: asyncio.StreamWriter | None = connection._writer
        self.outgoing: list[tuple[asyncio.Future[Any], bytes]] = []
        self.sent: deque[asyncio.Future[Any]] = deque()
        self.task: asyncio.Task[None] | None = None


class ScriptPipe:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        kwargs = getattr(redis, "connection_pool", None)
        kwargs = getattr(kwargs, "connection_kwargs", {}) or {}
        self._timeout = float(kwargs.get("socket_timeout") or DEFAULT_TIMEOUT)

    async def run(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """``script(keys=keys, args=args)``, pipelined with the others of this loop turn."""
        try:
            reply = await self._call(("EVALSHA", script.sha, len(keys), *keys, *args))
        except _Unanswered:
            # The connection broke before answering (a connection left idle that Redis
            # or a proxy had dropped): once more, on a new one.
            reply = await self._call(("EVALSHA", script.sha, len(keys), *keys, *args), True)
        if isinstance(reply, NoScriptError):  # Redis restarted or flushed its scripts
            reply = await self._call(("EVAL", script.script, len(keys), *keys, *args), True)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            await self._drop(link, RedisConnectionError("The script pipe was closed."))

    async def _call(self, command: tuple[Any, ...], last_try: bool = False) -> Any:
        link = self._link
        if link is None or link.writer is None:
            link = await self._connected()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        link.outgoing.append((future, hiredis.pack_command(command)))
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
            link = _Link(connection)
            link.task = asyncio.get_running_loop().create_task(self._read(link))
            self._link = link
            return link
        finally:
            self._connecting = None

    def _write(self, link: _Link) -> None:
        outgoing, link.outgoing = link.outgoing, []
        if link.writer is None:  # broke since: its calls were failed
            return
        # A caller cancelled before its turn ended has gone: its call is not sent.
        chunks = []
        for future, packed in outgoing:
            if not future.done():
                link.sent.append(future)
                chunks.append(packed)
        if chunks:
            link.writer.write(b"".join(chunks))

    async def _read(self, link: _Link) -> None:
        parser = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        error: RedisError
        try:
            while True:
                data = await link.reader.read(65536)
                if not data:
                    raise RedisConnectionError("Connection closed by server.")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    future = link.sent.popleft()
                    if not future.done():
                        future.set_result(reply)
        except RedisError as exc:
            error = exc
        except asyncio.CancelledError:
            error = RedisConnectionError("The script pipe was closed.")
        except Exception as exc:  # OSError; IndexError: a reply nobody asked for
            error = RedisConnectionError(f"Error reading from Redis: {exc!r}")
        if self._link is link:
            self._link = None
        await self._drop(link, error)

    def _timed_out(self, link: _Link, future: asyncio.Future[Any]) -> None:
        if future.done():
            return
        # Replies come in order: one that is late holds up every call behind it.
        if self._link is link:
            self._link = None
        error = RedisTimeoutError("Timeout reading from Redis")
        self._fail(link, error, answered_late=True)
        if link.task is not None:
            link.task.cancel()

    def _fail(self, link: _Link, error: RedisError, answered_late: bool = False) -> None:
        waiting = [f for f, _ in link.outgoing] + list(link.sent)
        link.outgoing = []
        link.sent.clear()
        link.writer = None
        for future in waiting:
            if not future.done():
                # A timed-out call is not retried: it waited long enough already.
                future.set_exception(error if answered_late else _Unanswered(error))

    async def _drop(self, link: _Link, error: RedisError) -> None:
        self._fail(link, error)
        if link.task is not None and link.task is not asyncio.current_task():
            link.task.cancel()
        connection, link.connection = link.connection, None
        if connection is None:
            return
        with contextlib.suppress(Exception):
            await connection.disconnect()
        with contextlib.suppress(Exception):
            await self._redis.connection_pool.release(connection)


def _retrieved(task: asyncio.Future[Any]) -> None:
    """A failed connect is raised to its callers; if they all left, nobody needs it."""
    if not task.cancelled():
        task.exception()


class _Unanswered(Exception):
    """The connection broke before the call was answered (``error`` says how)."""

    def __init__(self, error: RedisError) -> None:
        super().__init__(str(error))
        self.error = error
