"""Cache affinity through the relay: three channels of equal weight, 100 conversations of
10 turns. Every turn of a conversation reaches one channel while it is healthy; the
conversations spread over the channels; when one channel fails and its breaker opens, its
conversations move to another channel and stay there."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator
from tests.relay.test_affinity import turns

CONVERSATIONS = 100
TURNS = 10


def served_by(gateway: Gateway, body: dict[str, Any]) -> int:
    """Which channel answered: channel k's simulator prefix answers with k tokens."""
    response = gateway.client.post("/v1/chat/completions", json={**body, "model": PUBLIC_MODEL})
    assert response.status_code == 200, response.text
    return len(response.json()["choices"][0]["message"]["content"].split())


def test_conversations_stay_spread_and_move_once_on_failure(
    gateway: Gateway, sim: Simulator
) -> None:
    gateway.channel.base_url = sim.channel_url("tokens=1")
    gateway.channel.save()
    gateway.add_channel(sim.channel_url("tokens=2"), name="two")
    third = gateway.add_channel(sim.channel_url("tokens=3"), name="three")
    bodies = {n: turns(n, TURNS + 5) for n in range(CONVERSATIONS)}
    # The relay notices channel changes within its poll interval; until all three serve,
    # conversation homes are not final, so wait until each channel has answered.
    deadline = time.monotonic() + 10
    seen: set[int] = set()
    probe = 0
    while seen != {1, 2, 3}:
        assert time.monotonic() < deadline, f"channels never all served: {seen}"
        seen.add(served_by(gateway, {"messages": [{"role": "user", "content": f"probe {probe}"}]}))
        probe += 1

    homes: dict[int, int] = {}
    for n in range(CONVERSATIONS):
        chosen = {served_by(gateway, body) for body in bodies[n][:TURNS]}
        assert len(chosen) == 1, f"conversation {n} moved between channels: {chosen}"
        homes[n] = chosen.pop()
    spread = Counter(homes.values())
    assert set(spread) == {1, 2, 3} and all(14 <= c <= 53 for c in spread.values()), spread

    # Channel three starts failing; wait until the relay sends to the failing URL.
    third.base_url = sim.channel_url("tokens=3", "fail=500")
    third.save()
    movers = [n for n in range(CONVERSATIONS) if homes[n] == 3]
    deadline = time.monotonic() + 10
    while served_by(gateway, bodies[movers[0]][0]) == 3:
        assert time.monotonic() < deadline, "the relay never saw the failing channel"
    for n in range(CONVERSATIONS):
        chosen = {served_by(gateway, body) for body in bodies[n][TURNS:]}
        assert len(chosen) == 1, f"conversation {n} did not stay put: {chosen}"
        if homes[n] == 3:
            assert chosen != {3}
        else:
            assert chosen == {homes[n]}  # untouched by the other channel's failure
    # The breaker opened: far fewer requests reached the failing channel than the turns of
    # the conversations that used to live there.
    failing = sum(
        counters["total"]
        for prefix, counters in sim.stats()["by_prefix"].items()
        if "fail=500" in prefix
    )
    assert failing < len(movers) * 5 / 2, (failing, len(movers))
