"""What translation costs per request over pass-through, timed directly in one process.

A translated request and its pass-through twin share the whole core (authentication,
limits, routing, the upstream client, metering); they differ only in the dialect's and
the provider adapter's work: parsing the client's body, building the upstream request,
and turning the upstream's answer or stream into the client's format. End to end on a
shared 2-core machine that difference is below the noise, so this times exactly that
work, on the simulator's own answers (20 tokens, captured in-process, fed one event per
read as the simulator sends them), alternating the modes round by round:

- ``plain``/``stream`` (chat completions, pass-through) against ``chat-anthropic``
  (chat completions to an Anthropic channel: translated to Messages and back);
- ``messages`` against ``messages-translated`` (to a chat completions channel);
- ``responses`` against ``responses-translated``.

Run by bench/runner.py in the project's environment: ``python bench/translation_cost.py``;
it prints one JSON object, microseconds per request by mode.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import httpx  # noqa: E402

from bench.targets import PASS_THROUGH_OF, PLAIN_BODY, STREAM_BODY, SURFACE_MODES  # noqa: E402  # noqa: E402
from relay import sse  # noqa: E402
from relay.dialects.chat import ChatDialect  # noqa: E402
from relay.dialects.messages import MessagesDialect  # noqa: E402
from relay.dialects.responses import ResponsesDialect  # noqa: E402
from relay.metering import Usage, UsageRecord  # noqa: E402
from relay.providers.anthropic import AnthropicAdapter, AnthropicConfig  # noqa: E402
from relay.simulator.app import build_app  # noqa: E402
from relay.snapshot import Route  # noqa: E402
from relay.translate import canonical as c  # noqa: E402

ROUNDS = 7
REQUESTS = 300
SIM_PREFIX = "/sim/tokens=20"
SECRET = "sk-bench-translation"  # noqa: S105 - the in-process simulator accepts any key
DIALECTS = {
    "/v1/chat/completions": ChatDialect(),
    "/v1/messages": MessagesDialect(),
    "/v1/responses": ResponsesDialect(),
}


class _Exchange:
    """What a dialect reads of the client's request: its headers."""

    def header(self, name: bytes) -> bytes | None:
        return b"2023-06-01" if name == b"anthropic-version" else None


def _done(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that never waits (an adapter's build without I/O)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("the coroutine waited")


def _record(stream: bool) -> UsageRecord:
    return UsageRecord(
        request_id="req_" + "0" * 24,
        created_at=datetime.now(UTC),
        tenant_id=1,
        api_key_id=1,
        model="bench",
        stream=stream,
        status_code=200,
        total_latency_ms=0,
    )


async def _capture(path: str, body: dict[str, Any]) -> bytes:
    app = build_app(completion_tokens=20)
    transport = httpx.ASGITransport(app=app)
    headers = {"authorization": f"Bearer {SECRET}", "x-api-key": SECRET}
    async with httpx.AsyncClient(transport=transport, base_url="http://sim") as client:
        response = await client.post(SIM_PREFIX + path, json=body, headers=headers)
        response.raise_for_status()
        return response.content


def _events(raw: bytes) -> list[bytes]:
    """The stream as the simulator writes it: one event per read."""
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event.strip()]


def _route(native: frozenset[str], adapter: Any = None) -> Route:
    return Route(
        channel_id=1,
        channel_name="sim",
        url="http://sim/v1/chat/completions",
        secret=SECRET,
        upstream_model="sim-small",
        priority=0,
        weight=1,
        native=native,
        adapter=adapter,
    )


def _leg_work(
    dialect: Any, body: bytes, answer: bytes, stream: bool, route: Route
) -> Callable[[], None]:
    events = _events(answer)

    def one() -> None:
        call = dialect.begin(dialect.parse(body), _Exchange())
        leg = call.leg(route, _record(stream), "bench")
        leg.content(route)
        if not stream:
            leg.answer(json.loads(answer))
            return
        buffer = bytearray()
        for read in events:
            buffer += read
            index, width = sse._split_point(buffer)
            while index != -1:
                event = bytes(buffer[:index])
                del buffer[: index + width]
                data = sse.event_data(event)
                if data is not None:
                    leg.event(event, data)
                index, width = sse._split_point(buffer)

    return one


def _native_work(body: bytes, answer: bytes, stream: bool) -> Callable[[], None]:
    """Chat completions through an Anthropic adapter, as relay/forward_native.py does it."""
    adapter = AnthropicAdapter(AnthropicConfig(SECRET, "http://sim"))
    route = _route(frozenset(), adapter)
    dialect = DIALECTS["/v1/chat/completions"]
    reads = _events(answer)

    def one() -> None:
        call = dialect.begin(dialect.parse(body), _Exchange())
        record = _record(stream)
        codec = call.leg(route, record, "bench").native()
        assert codec is not None
        _done(adapter.build(codec.request, upstream_model="sim-small", stream=stream))
        if not stream:
            decoded = adapter.decode(answer)
            record.usage = Usage.from_canonical(decoded.usage)
            json.dumps(codec.to_client(decoded))
            return
        decoder, encoder = adapter.stream_decoder(), codec.encoder()

        def send(events: list[c.Event]) -> None:
            out = bytearray()
            for event in events:
                if isinstance(event, c.StreamUsage):
                    record.usage = Usage.from_canonical(event.usage)
                for frame in encoder.feed(event):
                    out += frame

        for read in reads:
            send(decoder.feed(read))
        send(decoder.finish())
        b"".join(encoder.close())

    return one


def _work(mode: str) -> Callable[[], None]:
    stream = mode == "stream" or mode.endswith("-stream")
    if mode in ("plain", "stream"):
        path, payload = "/v1/chat/completions", STREAM_BODY if stream else PLAIN_BODY
    else:
        path, payload = SURFACE_MODES[mode]
    body = json.dumps(payload).encode()
    if mode.startswith("chat-anthropic"):
        upstream_body = dict(SURFACE_MODES["messages-stream" if stream else "messages"][1])
        answer = asyncio.run(_capture("/v1/messages", upstream_body))
        return _native_work(body, answer, stream)
    if "-translated" in mode:
        upstream = dict(STREAM_BODY if stream else PLAIN_BODY)
        answer = asyncio.run(_capture("/v1/chat/completions", upstream))
        return _leg_work(DIALECTS[path], body, answer, stream, _route(frozenset()))
    answer = asyncio.run(_capture(path, dict(payload)))
    native = frozenset({"responses", "messages"})
    return _leg_work(DIALECTS[path], body, answer, stream, _route(native))


def main() -> None:
    modes = sorted({*PASS_THROUGH_OF, *PASS_THROUGH_OF.values()})
    work = {mode: _work(mode) for mode in modes}
    timings: dict[str, list[float]] = {mode: [] for mode in modes}
    for one in work.values():
        one()  # warm
    for _ in range(ROUNDS):
        for mode, one in work.items():
            started = time.process_time()
            for _ in range(REQUESTS):
                one()
            timings[mode].append((time.process_time() - started) * 1e6 / REQUESTS)
    print(json.dumps({mode: statistics.median(values) for mode, values in timings.items()}))


if __name__ == "__main__":
    main()
