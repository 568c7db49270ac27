"""A process's view of the breakers against its own poller.

The poller replaces the view with what the store holds; a read that began before this
process opened or closed a breaker returns the state from before, and must not undo the
change (seen as traffic reaching a channel whose breaker had just opened).
"""

from __future__ import annotations

import asyncio

import pytest
from django.test import override_settings

from relay.breaker import BreakerBoard, LocalBreakerStore


class SlowReadStore(LocalBreakerStore):
    """The process-local store, whose reads answer with the state at the moment they were
    asked, but only once ``answer`` is set: a read in flight while writes land."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()

    async def states(self) -> dict[int, float]:
        seen = dict(self._open)
        self.asked.set()
        await self.answer.wait()
        return seen


@override_settings(RELAY_BREAKER_FAILURES=1, RELAY_BREAKER_COOLDOWN=60)
def test_a_refresh_read_before_a_breaker_opened_does_not_close_it() -> None:
    async def scenario() -> bool:
        store = SlowReadStore()
        board = BreakerBoard(store)
        refresh = asyncio.ensure_future(board.refresh())
        await store.asked.wait()  # the poll has read: nothing is open yet
        await board.failure(7, "r1:7")  # opens the breaker
        assert board.is_open(7)
        store.answer.set()
        await refresh
        admitted, _ = await board.admit(7)
        return admitted

    assert asyncio.run(scenario()) is False


@override_settings(RELAY_BREAKER_FAILURES=1, RELAY_BREAKER_COOLDOWN=60)
def test_a_refresh_read_before_a_breaker_closed_does_not_open_it_again() -> None:
    async def scenario() -> tuple[bool, bool]:
        store = SlowReadStore()
        board = BreakerBoard(store)
        await board.failure(7, "r1:7")
        store.answer.set()
        await board.refresh()
        opened = board.is_open(7)
        store.answer.clear()
        store.asked.clear()
        refresh = asyncio.ensure_future(board.refresh())
        await store.asked.wait()  # read while still open
        await board.success(7)  # a probe succeeded: closed
        store.answer.set()
        await refresh
        return opened, board.is_open(7)

    assert asyncio.run(scenario()) == (True, False)


@pytest.mark.parametrize("changed", [False, True])
def test_the_next_refresh_takes_the_store_as_it_is(changed: bool) -> None:
    async def scenario() -> bool:
        store = SlowReadStore()
        store.answer.set()
        board = BreakerBoard(store)
        store._open[3] = 10**12  # opened by another process
        if changed:
            await board.success(9)  # a change of this process's own, settled since
        await board.refresh()
        return board.is_open(3)

    assert asyncio.run(scenario()) is True
