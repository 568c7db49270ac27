"""The relay's own work per streamed chat completion, timed directly in one process.

What ``relay.forward`` does with a pass-through stream once the upstream's bytes are in:
split the reads into events (``relay.sse``), read each event's data, turn each chunk into
what the client gets (``ChatLeg.event``: the public model name, the text kept for local
counting, the usage read, the usage chunk dropped when not asked for) and join the events
of one read into one write. It is fed the simulator's own stream (20 content chunks and
the usage chunk, captured in-process) one event per read, as the simulator writes it, and
all in one read, as it arrives under load. The minimum of many repetitions (CPU time) is
what is printed: on a shared machine, other work only adds to a sample.

Cases: ``same`` (the upstream names the model as the client did, the client asked for the
usage chunk: what ``bench/run`` sends), ``renamed`` (the upstream's name differs),
``renamed-no-usage`` (and the client did not ask for the usage chunk, so every chunk's
``usage`` member is dropped and the usage chunk too).

    python bench/stream_cost.py [--tree PATH] [--rounds 15] [--streams 1000]

``--tree`` times the relay of another checkout (the same environment), to compare code
before and after a change: run it for each, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _setup(tree: Path) -> None:
    sys.path.insert(0, str(tree))
    sys.path.insert(1, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()


def _work(case: str, reads: list[bytes]) -> Callable[[], None]:
    from bench.targets import STREAM_BODY
    from bench.translation_cost import _Exchange, _record, _route
    from relay import sse
    from relay.dialects.chat import ChatDialect

    dialect = ChatDialect()
    body = dict(STREAM_BODY)
    if case.endswith("no-usage"):
        body.pop("stream_options")
    public = "sim-small" if case == "same" else "bench"
    route = _route(frozenset())
    raw_body = json.dumps(body).encode()
    exchange: Any = _Exchange()  # what the dialect reads of the client's request

    async def source() -> AsyncIterator[bytes]:
        for read in reads:
            yield read

    async def relay() -> None:
        # As relay.forward.Forwarding._relay_stream does, less the sends.
        leg = dialect.begin(dialect.parse(raw_body), exchange).leg(route, _record(True), public)
        leg.content(route)
        leg.record.completion_text = []
        async for events in sse.iter_event_batches(source(), 16 * 1024 * 1024):
            out = []
            for event in events:
                data = sse.event_data(event)
                if data is None:
                    out.append(event + b"\n\n")
                    continue
                chunk, _final = leg.event(event, data)
                if chunk:
                    out.append(chunk)
            if out:
                b"".join(out)

    def one() -> None:
        coroutine = relay()
        try:
            coroutine.send(None)  # nothing in it waits
        except StopIteration:
            return
        raise RuntimeError("the stream waited")

    return one


def main(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    _setup(Path(args.tree).resolve())
    from bench.targets import STREAM_BODY
    from bench.translation_cost import _capture, _events

    answer = asyncio.run(_capture("/v1/chat/completions", dict(STREAM_BODY)))
    per_event = _events(answer)
    shapes = {"per-event reads": per_event, "one read": [b"".join(per_event)]}
    cases = ["same", "renamed", "renamed-no-usage"]
    work = {(c, s): _work(c, reads) for c in cases for s, reads in shapes.items()}
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in work}
    for _ in range(args.rounds):
        for key, one in work.items():
            started = time.process_time()
            for _ in range(args.streams):
                one()
            samples[key].append((time.process_time() - started) * 1e6 / args.streams)
    return {
        f"{case} / {shape}": {
            "min_us": round(min(values), 1),
            "median_us": round(statistics.median(values), 1),
        }
        for (case, shape), values in samples.items()
    }


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", default=str(ROOT), help="the checkout whose relay is timed")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--streams", type=int, default=1000)
    return parser.parse_args()


if __name__ == "__main__":
    result = main(_parse())
    print("relay from", Path(sys.modules["relay"].__file__ or "").parent)
    for name, figures in result.items():
        print(f"{name:36} min {figures['min_us']:7.1f} us  median {figures['median_us']:7.1f} us")
