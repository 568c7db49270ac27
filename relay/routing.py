"""Channel choice: highest priority first, weighted random order within a priority."""

from __future__ import annotations

import random
from collections.abc import Sequence

from relay.snapshot import Route


def attempt_order(routes: Sequence[Route], rng: random.Random | None = None) -> list[Route]:
    """Every route once, in the order the relay should try them.

    Within one priority the order is a weighted random permutation (each next pick is
    drawn in proportion to weight among those left), so the first pick follows the
    weights exactly and failover never repeats a channel.
    """
    if len(routes) <= 1:
        return list(routes)
    rng = rng or random
    ordered: list[Route] = []
    for priority in sorted({r.priority for r in routes}, reverse=True):
        tier = [r for r in routes if r.priority == priority]
        # Efraimidis-Spirakis: sorting by u ** (1 / w) yields a weighted permutation.
        # A weight of 0 keeps a channel as a last resort within its tier.
        tier.sort(
            key=lambda r: rng.random() ** (1.0 / r.weight) if r.weight > 0 else -1.0,
            reverse=True,
        )
        ordered.extend(tier)
    return ordered
