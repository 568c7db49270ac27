"""Issue 11, finding 8: strings the relay echoes never break its answer, and malformed
HTTP is answered in OpenAI's envelope by the production protocol (``relay.server``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from relay.app import RelayApp
from relay.errors import RelayError
from relay.server import BODY_DEADLINE_MARGIN, MAX_HEAD_BYTES, HttpToolsProtocol
from tests.relay.conftest import Gateway, Simulator, chat_body
from tests.relay.test_errors import assert_error
from tests.servers import serve_in_thread

LONE = '"\\ud800"'  # a JSON escape for an unpaired surrogate


def _post_raw(gateway: Gateway, body: bytes) -> httpx.Response:
    return httpx.post(
        gateway.url + "/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {gateway.secret}", "content-type": "application/json"},
        timeout=20,
    )


def _with(field: str, raw: str) -> bytes:
    return orjson.dumps(chat_body(**{field: "PLACEHOLDER"})).replace(b'"PLACEHOLDER"', raw.encode())


def test_an_unpaired_surrogate_in_model_is_a_clean_400(gateway: Gateway) -> None:
    for raw in (LONE, '"gpt\\udc00x"', '"\\ud83d"'):
        error = assert_error(_post_raw(gateway, _with("model", raw)), 400, param="model")
        assert "not valid Unicode" in error["message"]


def test_an_unpaired_surrogate_anywhere_in_the_body_is_a_clean_400(
    gateway: Gateway, sim: Simulator
) -> None:
    body = orjson.dumps(chat_body()).replace(b"Say hello", b"Say \\udfff hello")
    error = assert_error(_post_raw(gateway, body), 400)
    assert "not valid Unicode" in error["message"]
    for field in ("user", "stop"):
        assert_error(_post_raw(gateway, _with(field, LONE)), 400)
    assert sim.requests() == []  # nothing reached the upstream
    # A surrogate *pair* (what ensure_ascii JSON encoders write for an emoji) is fine.
    paired = orjson.dumps(chat_body()).replace(b"Say hello", b"Say \\ud83d\\ude00 hello")
    assert _post_raw(gateway, paired).status_code == 200


def test_an_error_echoing_an_unsendable_string_still_goes_out() -> None:
    error = RelayError(404, "The model `a\ud800` does not exist.", param="m\udfff")
    payload = orjson.loads(error.body())["error"]
    assert payload["message"] == "The model `a\ufffd` does not exist."
    assert payload["param"] == "m\ufffd"


@pytest.fixture
def protocol_url(relay_settings: Any, transactional_db: None) -> Iterator[str]:
    """A relay served in-process with the production protocol and short deadlines."""
    relay_settings.RELAY_HEADER_TIMEOUT = 0.5
    url, stop = serve_in_thread(RelayApp(), http=HttpToolsProtocol)
    yield url
    stop()


def _exchange(url: str, data: bytes, wait: float = 10.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        if data:
            sock.sendall(data)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def _envelope(answer: bytes, status: int) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status), answer[:200]
    assert b"content-type: application/json" in head.lower()
    assert b"connection: close" in head.lower()
    error = orjson.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    "garbage",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS to a plain-HTTP port
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
)
def test_malformed_http_is_answered_in_the_envelope(protocol_url: str, garbage: bytes) -> None:
    error = _envelope(_exchange(protocol_url, garbage), 400)
    assert error["code"] == "invalid_http"


def test_oversized_request_heads_get_a_431(protocol_url: str) -> None:
    head = b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"a" * MAX_HEAD_BYTES
    error = _envelope(_exchange(protocol_url, head), 431)
    assert error["code"] == "request_headers_too_large"


def test_a_head_that_does_not_arrive_in_time_gets_a_408(protocol_url: str) -> None:
    started = time.monotonic()
    error = _envelope(_exchange(protocol_url, b"GET /v1/models HTTP/1.1\r\nHost"), 408)
    assert error["code"] == "request_timeout"
    assert 0.4 < time.monotonic() - started < 5


def test_the_next_request_on_a_kept_alive_connection_has_a_header_deadline(
    protocol_url: str,
) -> None:
    host, port = protocol_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.endswith(b"}"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and nothing more
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    error = _envelope(answer, 408)
    assert error["code"] == "request_timeout"
    assert 0.4 < time.monotonic() - started < 5


def test_a_body_still_arriving_after_the_deadline_is_cut_off_whatever_the_app(
    relay_settings: Any,
) -> None:
    """The protocol's backstop, for paths (the dashboard's) that read bodies their own way."""
    relay_settings.RELAY_BODY_TIMEOUT = 0.3
    disconnected = threading.Event()

    async def patient_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()

    url, stop = serve_in_thread(patient_app, http=HttpToolsProtocol)
    try:
        started = time.monotonic()
        answer = _exchange(
            url, b"POST /console/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab"
        )
        elapsed = time.monotonic() - started
    finally:
        stop()
    assert answer == b""  # nobody answers a request cut off mid-body; the socket closes
    assert 0.3 + BODY_DEADLINE_MARGIN * 0.9 < elapsed < 0.3 + BODY_DEADLINE_MARGIN + 5
    assert disconnected.wait(5)  # and the application hears of it


def test_the_lost_connection_hook_calls_back_at_once_when_already_lost() -> None:
    from types import SimpleNamespace

    from relay.server import _on_lost

    calls: list[str] = []
    cycle = SimpleNamespace(disconnected=False)
    _on_lost(cycle, lambda: calls.append("live"))  # type: ignore[arg-type]
    assert calls == [] and cycle.tollgate_on_lost is not None
    _on_lost(cycle, None)  # type: ignore[arg-type]
    assert cycle.tollgate_on_lost is None
    gone = SimpleNamespace(disconnected=True)  # lost before the application asked
    _on_lost(gone, lambda: calls.append("gone"))  # type: ignore[arg-type]
    assert calls == ["gone"]
