"""One Redis round trip for the Lua calls of many requests.

Under load, many requests reach their limit check or their settlement in the same turn
of the event loop. ``ScriptBatcher`` sends the script calls made within one turn as one
pipeline (one write, one read, one pooled connection) instead of one round trip each.
A call alone in its turn runs directly, as it would without the batcher, so a single
client waits no longer. Each script stays atomic on its own; a pipeline is not a
transaction, and none is needed: the calls are independent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

# Tells a caller that nobody else called in its turn: it runs its script itself.
_ALONE = object()

Call = tuple[Any, list[Any], list[Any], "asyncio.Future[Any]"]


class ScriptBatcher:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._pending: list[Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, script: Any, keys: list[Any], args: list[Any]) -> Any:
        """``script(keys=keys, args=args)``, sent with the others of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) == 1:
            loop.call_soon(self._flush)
        result = await future
        if result is _ALONE:
            return await script(keys=keys, args=args)
        return result

    def _flush(self) -> None:
        # A caller cancelled while waiting has gone: its call is not sent.
        batch = [call for call in self._pending if not call[3].done()]
        self._pending = []
        if len(batch) == 1:
            batch[0][3].set_result(_ALONE)
        elif batch:
            task = asyncio.ensure_future(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[Call]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        try:
            results = await pipe.execute(raise_on_error=False)
        except Exception as exc:  # the connection failed: every call in it did
            for *_, future in batch:
                _settle(future, exc)
            return
        for (script, keys, args, future), result in zip(batch, results, strict=True):
            if isinstance(result, NoScriptError):  # Redis restarted or flushed its scripts
                try:
                    result = await script(keys=keys, args=args)
                except Exception as exc:
                    result = exc
            _settle(future, result)


def _settle(future: asyncio.Future[Any], result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
