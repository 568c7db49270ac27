"""Coarse deadlines for the hot path: one sweep per loop every ``SWEEP_SECONDS`` rather
than a timer per request.

``asyncio.timeout`` arms and cancels a timer handle each time, tens of microseconds a
request; nearly every request's body is already there when it is read, so the deadline
almost never fires. Here a watched span costs a dict entry, and a deadline fires up to
``SWEEP_SECONDS`` late, which is fine for deadlines of a second and more.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

SWEEP_SECONDS = 0.05


class _Sweeper:
    """The watched tasks of one event loop; sweeps while there are any."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watched: dict[asyncio.Task[object], Deadline] = {}
        self.running = False

    def add(self, task: asyncio.Task[object], deadline: Deadline) -> None:
        self.watched[task] = deadline
        if not self.running:
            self.running = True
            self.loop.create_task(self._sweep())

    async def _sweep(self) -> None:
        try:
            while self.watched:
                await asyncio.sleep(SWEEP_SECONDS)
                now = self.loop.time()
                for task, deadline in list(self.watched.items()):
                    if deadline.when <= now and not deadline.expired:
                        deadline.expired = True
                        task.cancel()
        finally:
            self.running = False
            if _sweepers.get(self.loop) is self and not self.watched:
                del _sweepers[self.loop]


_sweepers: dict[asyncio.AbstractEventLoop, _Sweeper] = {}


class Deadline:
    """``with Deadline(when):`` (in a task) raises ``TimeoutError`` once the loop's clock
    passes ``when`` (give or take ``SWEEP_SECONDS``), like ``asyncio.timeout_at``."""

    __slots__ = ("expired", "sweeper", "task", "when")

    def __init__(self, when: float) -> None:
        self.when = when
        self.expired = False

    def __enter__(self) -> Deadline:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        sweeper = _sweepers.get(loop)
        if sweeper is None:
            sweeper = _sweepers[loop] = _Sweeper(loop)
        self.task, self.sweeper = task, sweeper
        sweeper.add(task, self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.sweeper.watched.pop(self.task, None)
        if (
            self.expired
            and exc_type is asyncio.CancelledError
            and self.task.uncancel() == 0  # not also cancelled from outside
        ):
            raise TimeoutError from exc
