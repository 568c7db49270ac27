"""How the web process's protocol (``relay.server``) writes a response to the connection:
an answer sent whole leaves in one write, head and body together.

Driven in-process: uvicorn's protocol, with the relay's subclass, over a transport that
records what it is given (the socket is what is replaced; every write decision is the
protocol's own); and, for pipelined requests, served on a real socket. The whole relay is
served over real sockets by the rest of the suite.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
import uvicorn
from uvicorn.server import ServerState

from relay.server import JOIN_BODY_BYTES, HttpToolsProtocol
from tests.servers import serve_in_thread

REQUEST = b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n"


class Recorded(asyncio.Transport):
    """A connection that keeps each write apart, as the socket would take it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "written after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _serve(
    app: Any, transport: Recorded | None = None, protocols: list[HttpToolsProtocol] | None = None
) -> Recorded:
    """One request through the protocol; the transport once the response is complete."""
    config = uvicorn.Config(app, lifespan="off", log_config=None)
    protocol = HttpToolsProtocol(config, ServerState(), {}, _loop=asyncio.get_running_loop())
    if protocols is not None:
        protocols.append(protocol)
    transport = transport or Recorded()
    protocol.connection_made(transport)
    protocol.data_received(REQUEST)
    for _ in range(200):  # turns of the loop, until the application is done
        if protocol.cycle is not None and protocol.cycle.response_complete:
            break
        await asyncio.sleep(0)
    await asyncio.sleep(0)  # a head held to the end of a turn would be flushed by now
    protocol.connection_lost(None)
    return transport


def _start(status: int = 200, length: int | None = None) -> dict[str, Any]:
    headers = [(b"content-type", b"application/json")]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {"type": "http.response.start", "status": status, "headers": headers}


def test_an_answer_sent_whole_leaves_in_one_write() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start(length=11))
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    transport = asyncio.run(_serve(app))
    assert len(transport.writes) == 1
    head, _, body = transport.writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 11" in head
    assert body == b'{"ok":true}'


def test_a_large_body_is_not_copied_to_join_its_head() -> None:
    body = b"x" * (JOIN_BODY_BYTES + 1)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start(length=len(body)))
        await send({"type": "http.response.body", "body": body})

    transport = asyncio.run(_serve(app))
    assert len(transport.writes) == 2
    assert transport.writes[0].endswith(b"\r\n\r\n")
    assert transport.writes[1] == body


def test_a_head_whose_body_comes_later_goes_out_at_the_end_of_its_turn() -> None:
    # A stream: the head must reach the client before the first event exists.
    transport = Recorded()
    heads_out: list[int] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start())
        await asyncio.sleep(0)  # the next turn: the head is on the connection already
        heads_out.append(len(transport.writes))
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    asyncio.run(_serve(app, transport))
    assert heads_out == [1]
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[0].endswith(b"\r\n\r\n")
    assert b"".join(transport.writes[1:]) == (b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n")


def test_a_head_alone_is_not_lost() -> None:
    # No body at all (a 204): the head goes out at the end of the turn.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = asyncio.run(_serve(app))
    assert len(transport.writes) == 1
    assert transport.writes[0].startswith(b"HTTP/1.1 204 No Content\r\n")


def test_a_response_that_closes_the_connection_is_written_before_it_closes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"2"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": b"{}"})

    transport = asyncio.run(_serve(app))
    assert transport.closed
    assert len(transport.writes) == 1
    assert transport.writes[0].endswith(b"\r\n\r\n{}")


def test_an_application_that_fails_before_answering_still_gets_its_500_out() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("broken")

    transport = asyncio.run(_serve(app))
    assert transport.writes, "nothing was written"
    assert b"".join(transport.writes).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


def test_a_refusal_of_the_next_request_goes_out_after_the_held_head() -> None:
    # A client pipelines a second request with an oversized head while the first one's
    # response has started: the first's head, then the 431, then the connection closes.
    protocols: list[HttpToolsProtocol] = []
    transport = Recorded()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start())
        protocol = protocols[0]
        protocol.data_received(b"GET /y HTTP/1.1\r\nhost: t\r\n")
        protocol.data_received(b"x-big: " + b"a" * 70_000 + b"\r\n")

    asyncio.run(_serve(app, transport, protocols))
    assert transport.closed
    assert transport.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.writes[1].startswith(b"HTTP/1.1 431 ")


def test_pipelined_requests_get_whole_answers_in_order_over_a_real_socket() -> None:
    # Two requests in one packet: the first's answer (head held for its body) must be
    # complete and come before the second's.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        body = orjson.dumps({"path": scope["path"]})
        await send(_start(length=len(body)))
        await asyncio.sleep(0.01)  # the second request waits behind this one
        await send({"type": "http.response.body", "body": body})

    url, stop = serve_in_thread(app, http=HttpToolsProtocol)
    try:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"GET /first HTTP/1.1\r\nhost: t\r\n\r\nGET /second HTTP/1.1\r\nhost: t\r\n\r\n"
            )
            received = b""
            while received.count(b"HTTP/1.1 200 OK") < 2 or not received.endswith(b"}"):
                chunk = sock.recv(65536)
                assert chunk, f"closed early: {received!r}"
                received += chunk
    finally:
        stop()
    first, _, second = received.partition(b'{"path":"/first"}')
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.endswith(b'\r\n\r\n{"path":"/second"}')
