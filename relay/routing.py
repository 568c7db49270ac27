"""Channel choice: highest priority first, weighted order within a priority; random per
request, or fixed per conversation (cache affinity)."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Sequence

from relay.snapshot import Route

_UNIT = float(2**64)


def _affinity_score(affinity: str, route: Route) -> float:
    """Weighted rendezvous hashing: a fixed pseudo-random draw per (conversation, channel),
    so one conversation ranks the channels the same way on every turn, while across
    conversations the first pick follows the weights (P(first) = weight / total)."""
    digest = hashlib.blake2b(f"{affinity}\0{route.channel_id}".encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 0.5) / _UNIT  # in (0, 1)
    return -math.log(unit) / route.weight if route.weight > 0 else math.inf


def attempt_order(
    routes: Sequence[Route], rng: random.Random | None = None, *, affinity: str | None = None
) -> list[Route]:
    """Every route once, in the order the relay should try them.

    Within one priority the order is a weighted random permutation (each next pick is
    drawn in proportion to weight among those left), so the first pick follows the
    weights exactly and failover never repeats a channel. With an ``affinity`` key (a
    conversation, ``relay.affinity``) the permutation is the same for every request with
    that key: a conversation stays on its channel while it is healthy, and when that
    channel's breaker skips it, moves to its second choice and stays there.
    """
    if len(routes) <= 1:
        return list(routes)
    if affinity is not None:
        return sorted(
            routes,
            key=lambda r: (-r.priority, _affinity_score(affinity, r), r.channel_id),
        )
    draw = rng.random if rng is not None else random.random
    ordered: list[Route] = []
    for priority in sorted({r.priority for r in routes}, reverse=True):
        tier = [r for r in routes if r.priority == priority]
        # Efraimidis-Spirakis: sorting by u ** (1 / w) yields a weighted permutation.
        # A weight of 0 keeps a channel as a last resort within its tier.
        tier.sort(
            key=lambda r: draw() ** (1.0 / r.weight) if r.weight > 0 else -1.0,
            reverse=True,
        )
        ordered.extend(tier)
    return ordered
