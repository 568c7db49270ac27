"""The ASGI entry point's lifespan: what a worker does once, on starting and on stopping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import pytest

from config import asgi


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()  # the rest of the test run collects as before
    gc.set_threshold(*threshold)


def _start(messages: list[dict[str, Any]]) -> None:
    async def run() -> None:
        incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await incoming.put({"type": "lifespan.startup"})

        async def send(message: dict[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "lifespan.startup.complete":
                # Stopping would close the relay's clients: the test process keeps them.
                raise asyncio.CancelledError

        with contextlib.suppress(asyncio.CancelledError):
            await asgi._lifespan(incoming.get, send)

    asyncio.run(run())


def _in_reach(obj: object) -> bool:
    """Whether the collector's full collections walk ``obj`` (frozen objects are in none)."""
    return any(o is obj for generation in range(3) for o in gc.get_objects(generation))


def test_startup_takes_the_startup_objects_out_of_the_collectors_reach(unfrozen: None) -> None:
    # The relay app and Django's URL resolver live as long as the worker; each full
    # collection walked them and everything they hold.
    from django.urls import get_resolver

    lasting = [asgi.relay_application, get_resolver()]
    assert all(_in_reach(obj) for obj in lasting)
    messages: list[dict[str, Any]] = []
    _start(messages)
    assert messages == [{"type": "lifespan.startup.complete"}]
    assert gc.get_freeze_count() > 10_000
    assert not any(_in_reach(obj) for obj in lasting)
    # What requests make afterwards is collected as before: a cycle made now is freed.
    cycle: list[Any] = []
    cycle.append(cycle)
    assert _in_reach(cycle)
    del cycle
    assert gc.collect() >= 1


def test_startup_collects_the_young_less_often(unfrozen: None, settings: Any) -> None:
    # Python's default collects the youngest generation every 700 objects made and kept.
    gc.set_threshold(700, 10, 10)
    settings.RELAY_GC_THRESHOLD = 5000
    _start([])
    assert gc.get_threshold() == (5000, 10, 10)


def test_a_threshold_of_zero_keeps_pythons_own(unfrozen: None, settings: Any) -> None:
    gc.set_threshold(700, 10, 10)
    settings.RELAY_GC_THRESHOLD = 0
    _start([])
    assert gc.get_threshold() == (700, 10, 10)
