"""Cache affinity: one conversation's turns reach one channel while it is healthy, the
conversations spread by weight, and a conversation whose channel's breaker opens moves to
another channel and stays there."""

from __future__ import annotations

from collections import Counter

from relay.affinity import conversation_key
from relay.routing import attempt_order
from relay.snapshot import Route

SYSTEM = {"role": "system", "content": "You are a careful assistant."}


def _route(channel_id: int, weight: int = 1, priority: int = 0) -> Route:
    return Route(
        channel_id, f"c{channel_id}", "http://x/v1/chat/completions", "s", "m", priority, weight
    )


def turns(conversation: int, count: int) -> list[dict[str, object]]:
    """The chat request bodies of ``count`` turns of one conversation, growing each turn."""
    messages: list[dict[str, object]] = [
        SYSTEM,
        {"role": "user", "content": f"Conversation {conversation}: plan a trip."},
    ]
    bodies = []
    for turn in range(count):
        bodies.append({"model": "m", "messages": list(messages)})
        messages += [
            {"role": "assistant", "content": f"answer {turn}"},
            {"role": "user", "content": f"follow-up {turn}"},
        ]
    return bodies


def pick(routes: list[Route], key: str, open_breakers: set[int]) -> int:
    return next(
        r.channel_id
        for r in attempt_order(routes, affinity=key)
        if r.channel_id not in open_breakers
    )


def test_keys_come_from_the_client_or_the_conversation_opening() -> None:
    first, tenth = turns(1, 10)[0], turns(1, 10)[9]
    assert conversation_key(first) == conversation_key(tenth)
    assert conversation_key(first) != conversation_key(turns(2, 1)[0])
    assert conversation_key({**first, "prompt_cache_key": "pck-1"}) == "k:pck-1"
    assert conversation_key({**first, "user": "u-7"}) == "k:u-7"
    messages_api = {"system": "Be brief.", "metadata": {"user_id": "claude-code-42"}}
    assert conversation_key({**messages_api, "messages": []}) == "k:claude-code-42"
    responses_a = {"instructions": "Be brief.", "input": "Hello there"}
    responses_b = {"instructions": "Be brief.", "input": "Something else"}
    assert conversation_key(responses_a) != conversation_key(responses_b)


def test_hundred_conversations_of_ten_turns_stay_and_spread() -> None:
    routes = [_route(1), _route(2), _route(3)]
    homes: dict[int, int] = {}
    for conversation in range(100):
        chosen = {pick(routes, conversation_key(body), set()) for body in turns(conversation, 10)}
        assert len(chosen) == 1, f"conversation {conversation} moved: {chosen}"
        homes[conversation] = chosen.pop()
    spread = Counter(homes.values())
    # Binomial(100, 1/3): mean 33.3, sd 4.7; 4 sd either side.
    assert set(spread) == {1, 2, 3}
    assert all(14 <= count <= 53 for count in spread.values()), spread

    # Channel 1's breaker opens: its conversations move, the others stay, and the movers
    # stay on their new channel turn after turn.
    moved: Counter[int] = Counter()
    for conversation in range(100):
        chosen = {pick(routes, conversation_key(body), {1}) for body in turns(conversation, 10)}
        assert len(chosen) == 1
        (now,) = chosen
        if homes[conversation] == 1:
            assert now != 1
            moved[now] += 1
        else:
            assert now == homes[conversation]
    assert set(moved) == {2, 3}  # the moving conversations spread over what is left


def test_weights_still_hold_across_conversations() -> None:
    routes = [_route(1, weight=1), _route(2, weight=1), _route(3, weight=2)]
    firsts = Counter(attempt_order(routes, affinity=f"k:{n}")[0].channel_id for n in range(8000))
    assert 0.47 < firsts[3] / 8000 < 0.53
    assert 0.22 < firsts[1] / 8000 < 0.28


def test_affinity_keeps_priority_and_every_route_once() -> None:
    routes = [
        _route(1, priority=0),
        _route(2, priority=5),
        _route(3, priority=5),
        _route(4, weight=0, priority=5),
    ]
    for n in range(200):
        order = attempt_order(routes, affinity=f"k:{n}")
        assert sorted(r.channel_id for r in order) == [1, 2, 3, 4]
        assert order[-1].channel_id == 1  # lowest priority last
        assert order[2].channel_id == 4  # weight 0: last resort within its priority
