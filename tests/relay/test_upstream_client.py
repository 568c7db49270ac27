"""The relay's upstream client (``relay/upstream.py``, aiohttp): what httpx used to do for
it and the relay now does itself. Compressed answers reach the client decoded, a body that
is not what its encoding claims is a clean 502, connections are pooled, each timeout phase
holds, and a stored response's query reaches the channel as the client sent it.

The upstream here is a small ASGI app on loopback, so the exchange is real HTTP.
"""

from __future__ import annotations

import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from relay.dialects import response_ids
from tests.faults.test_upstream_faults import error_of, stream_parts
from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events
from tests.servers import serve_in_thread

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "hello through a compressed answer"


def _completion() -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-gz",
            "object": "chat.completion",
            "created": 1,
            "model": "sim-upstream",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": TEXT},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        }
    )


def _events() -> list[bytes]:
    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {
            "id": "chatcmpl-gz",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "sim-upstream",
            "choices": choices,
            **extra,
        }
        return b"data: " + orjson.dumps(body) + b"\n\n"

    def delta(content: str, **more: Any) -> list[dict[str, Any]]:
        return [{"index": 0, "delta": {**more, "content": content}, "finish_reason": None}]

    words = TEXT.split(" ")
    out = [chunk(delta("", role="assistant"))]
    out += [chunk(delta(w if i == 0 else " " + w)) for i, w in enumerate(words)]
    usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
    out.append(chunk([], usage=usage))
    out.append(b"data: [DONE]\n\n")
    return out


class Upstream:
    """An OpenAI-compatible channel whose answers are shaped by the first path segment:
    ``/gzip`` compresses them, ``/deflate`` too (zlib), ``/badgzip`` claims gzip and sends
    something else, ``/plain`` sends them as they are. It notes each request's client port
    (one per connection), headers and query."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        raw = bytearray()
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.seen.append(
            {
                "port": scope["client"][1],
                "path": scope["path"],
                "query": scope["query_string"],
                "headers": headers,
            }
        )
        mode = scope["path"].split("/")[1]
        if mode == "hugeevent":  # one event past the relay's limit, in a single write
            # A well-formed chunk: only its size may stop it.
            huge = _events()[1].replace(
                b'"content":"hello"', b'"content":"' + b"x" * 17_000_000 + b'"'
            )
            assert len(huge) > 17_000_000
            await self._send(send, "text/event-stream", [huge, *_events()[-2:]], "plain")
            return
        if mode == "cookie":  # sets a cookie, as a load balancer's stickiness might
            await self._send(send, "application/json", [_completion()], "plain", cookie=True)
            return
        if scope["path"].endswith("/input_items"):
            await self._send(send, "application/json", [b'{"object":"list","data":[]}'], mode)
            return
        stream = bool(orjson.loads(raw).get("stream")) if raw else False
        if stream:
            await self._send(send, "text/event-stream", _events(), mode)
        else:
            await self._send(send, "application/json", [_completion()], mode)

    async def _send(
        self, send: Any, content_type: str, parts: list[bytes], mode: str, cookie: bool = False
    ) -> None:
        headers = [(b"content-type", content_type.encode())]
        if cookie:
            headers.append((b"set-cookie", b"session=tenant-a-secret; Path=/"))
        if mode in ("gzip", "badgzip"):
            headers.append((b"content-encoding", b"gzip"))
        elif mode == "deflate":
            headers.append((b"content-encoding", b"deflate"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if mode == "badgzip":
            await send({"type": "http.response.body", "body": b"this is not gzip at all " * 8})
            return
        if mode == "plain":
            for part in parts:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        # Each part flushed on its own, as a provider compressing a live stream does.
        packer = zlib.compressobj(wbits=31 if mode == "gzip" else 15)
        for part in parts:
            piece = packer.compress(part) + packer.flush(zlib.Z_SYNC_FLUSH)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": packer.flush()})


@pytest.fixture(scope="module")
def upstream_server() -> Iterator[tuple[str, Upstream]]:
    app = Upstream()
    url, stop = serve_in_thread(app)
    yield url, app
    stop()


@pytest.fixture
def upstream(upstream_server: tuple[str, Upstream]) -> tuple[str, Upstream]:
    upstream_server[1].seen.clear()
    return upstream_server


def _use(gateway: Gateway, url: str, **fields: Any) -> None:
    """Point the gateway's channel at ``url`` before the relay's first request."""
    gateway.channel.base_url = url
    for name, value in fields.items():
        setattr(gateway.channel, name, value)
    gateway.channel.save()


@pytest.mark.parametrize("mode", ["gzip", "deflate"])
def test_a_compressed_answer_reaches_the_client_decoded_and_metered(
    gateway: Gateway, upstream: tuple[str, Upstream], mode: str
) -> None:
    url, app = upstream
    _use(gateway, f"{url}/{mode}/v1")
    response = gateway.client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200, response.text
    assert "content-encoding" not in response.headers
    assert response.json()["choices"][0]["message"]["content"] == TEXT
    # The relay asked for compression, as it did under httpx.
    assert "gzip" in app.seen[0]["headers"]["accept-encoding"]
    (event,) = usage_events(1)
    assert (event.prompt_tokens, event.completion_tokens) == (7, 5)
    assert not event.estimated


def test_a_compressed_stream_reaches_the_client_decoded(
    gateway: Gateway, upstream: tuple[str, Upstream]
) -> None:
    url, _ = upstream
    _use(gateway, f"{url}/gzip/v1")
    body = chat_body(stream=True, stream_options={"include_usage": True})
    with gateway.client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert "content-encoding" not in response.headers
        text, failures, done = stream_parts(response)
    assert (text, failures, done) == (TEXT, [], True)
    (event,) = usage_events(1)
    assert event.completed and event.prompt_tokens == 7 and not event.estimated


def test_a_body_that_is_not_the_gzip_it_claims_is_a_502(
    gateway: Gateway, upstream: tuple[str, Upstream]
) -> None:
    url, _ = upstream
    _use(gateway, f"{url}/badgzip/v1")
    error = error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 502)
    assert error["type"] == "server_error"
    (event,) = usage_events(1)
    assert event.status_code == 502 and event.attempts[0]["error"] == "invalid_response"


# A stream that is not the gzip it claims; one event past the size limit, sent at once.
@pytest.mark.parametrize("mode", ["badgzip", "hugeevent"])
def test_a_broken_stream_ends_with_an_error(
    gateway: Gateway, upstream: tuple[str, Upstream], mode: str
) -> None:
    url, _ = upstream
    _use(gateway, f"{url}/{mode}/v1")
    with gateway.client.stream(
        "POST", "/v1/chat/completions", json=chat_body(stream=True)
    ) as response:
        assert response.status_code == 200
        text, failures, done = stream_parts(response)
    assert text == "" and not done
    assert [f["code"] for f in failures] == ["upstream_stream_broken"]
    (event,) = usage_events(1)
    assert not event.completed and event.error_code == "upstream_stream_broken"


def test_requests_one_after_another_share_one_pooled_connection(
    gateway: Gateway, upstream: tuple[str, Upstream]
) -> None:
    url, app = upstream
    _use(gateway, f"{url}/plain/v1")
    for stream in (False, True, False, True):
        with gateway.client.stream(
            "POST", "/v1/chat/completions", json=chat_body(stream=stream)
        ) as response:
            assert response.status_code == 200
            response.read()
    assert len(app.seen) == 4
    assert len({seen["port"] for seen in app.seen}) == 1, app.seen


def test_a_cookie_a_channel_sets_is_never_sent_back(
    gateway: Gateway, upstream: tuple[str, Upstream]
) -> None:
    # By host name: a cookie jar would keep no cookie for an IP address anyway.
    url, app = upstream
    _use(gateway, f"{url.replace('127.0.0.1', 'localhost')}/cookie/v1")
    for _ in range(3):
        response = gateway.client.post("/v1/chat/completions", json=chat_body())
        assert response.status_code == 200, response.text
        assert "set-cookie" not in response.headers
    assert len(app.seen) == 3
    assert not [seen for seen in app.seen if "cookie" in seen["headers"]]


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A port whose listener never accepts and whose queue is full: a new connection's
    handshake goes unanswered, as with a host that drops packets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)
    # The queue is full once a further connection cannot complete.
    probe = socket.socket()
    probe.settimeout(0.2)
    with pytest.raises(TimeoutError):
        probe.connect(("127.0.0.1", port))
    try:
        yield port
    finally:
        for sock in (probe, filler, listener):
            sock.close()


def test_a_connection_that_cannot_be_made_is_a_504_within_the_connect_timeout(
    gateway: Gateway, unanswered_port: int, settings: Any
) -> None:
    # The relay's own connect timeout is 5 s: the channel's 0.3 s must be the one applied.
    assert settings.RELAY_CONNECT_TIMEOUT >= 5
    _use(
        gateway,
        f"http://127.0.0.1:{unanswered_port}/v1",
        connect_timeout=0.3,
        first_byte_timeout=30,
    )
    started = time.monotonic()
    error = error_of(gateway.client.post("/v1/chat/completions", json=chat_body()), 504)
    assert time.monotonic() - started < 3
    assert error["code"] == "upstream_timeout"
    (event,) = usage_events(1)
    assert event.attempts[0]["error"] == "timeout"


def test_a_stored_responses_query_reaches_the_channel_as_sent(
    gateway: Gateway, upstream: tuple[str, Upstream]
) -> None:
    url, app = upstream
    _use(gateway, f"{url}/plain/v1")
    public = response_ids.seal("resp_up1", gateway.channel.pk, gateway.tenant.pk)
    response = gateway.client.get(
        f"/v1/responses/{public}/input_items", params={"after": "item/1 two#3", "limit": "2"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"object": "list", "data": []}
    (seen,) = app.seen
    assert seen["path"] == "/plain/v1/responses/resp_up1/input_items"
    # Escapes kept as the client sent them (httpx encodes the space as +).
    assert seen["query"] == httpx.URL("/", params={"after": "item/1 two#3", "limit": "2"}).query
    assert dict(httpx.QueryParams(seen["query"].decode())) == {
        "after": "item/1 two#3",
        "limit": "2",
    }


def test_a_client_that_leaves_a_plain_request_closes_the_upstream_request(
    gateway: Gateway, sim: Simulator
) -> None:
    _use(gateway, sim.channel_url("hang"))
    # The client gives up waiting; leaving the block closes its connection.
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=1.0)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {gateway.secret}"},
        )
    deadline = time.monotonic() + 5
    while sim.stats()["disconnects"] == 0:
        assert time.monotonic() < deadline, "the upstream request was never closed"
        time.sleep(0.05)
    assert sim.stats()["in_flight"] == 0
    (event,) = usage_events(1)
    assert event.error_code == "client_disconnected"
