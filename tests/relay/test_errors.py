"""The relay's errors: OpenAI's envelope and status codes, never a 500 or HTML for bad input."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import orjson
import pytest
from django.utils import timezone

from portal.models import ApiKey, CatalogModel, Channel
from relay.app import RelayApp
from relay.snapshot import Route
from relay.upstream_errors import upstream_error as _upstream_error
from tests.openai_schema import validate
from tests.relay.conftest import Gateway, Simulator, chat_body


def assert_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    validate(body, "ErrorResponse")
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/models", "/v1/models/x"])
def test_missing_and_wrong_keys_are_401(gateway: Gateway, path: str) -> None:
    method = "POST" if path.endswith("completions") else "GET"
    body = chat_body() if method == "POST" else None
    anonymous = httpx.request(method, gateway.url + path, json=body)
    assert_error(anonymous, 401)
    wrong = httpx.request(
        method, gateway.url + path, json=body, headers={"Authorization": "Bearer sk-tg-nope"}
    )
    error = assert_error(wrong, 401, code="invalid_api_key")
    assert "sk-tg-nope" not in error["message"]


def test_revoked_and_expired_keys_are_401(gateway: Gateway) -> None:
    revoked = gateway.new_key(status=ApiKey.Status.REVOKED)
    expired = gateway.new_key(expires_at=timezone.now() - timedelta(seconds=1))
    for secret in (revoked, expired):
        response = httpx.post(
            gateway.url + "/v1/chat/completions",
            json=chat_body(),
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert_error(response, 401)


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "tollgate-chat", "messages": []}', "messages"),
        (b'{"model": "tollgate-chat", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (
            b'{"model": "tollgate-chat", "messages": [{"role": "user", "content": "x"}], '
            b'"stream_options": {"include_usage": true}}',
            "stream_options",
        ),
        (b'{"model": "tollgate-chat", "messages": [{"role": "user"}], "n": 0}', "n"),
        (b'{"model": "tollgate-chat", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "tollgate-chat", "messages": [{"role": "user"}], "max_tokens": 1e400}', None),
        (
            b'{"model": "tollgate-chat", "messages": [{"role": "user"}], "max_tokens": 2.5}',
            "max_tokens",
        ),
        (
            b'{"model": "tollgate-chat", "messages": [{"role": "user", "content": "x"}], '
            b'"seed": 123456789012345678901234567890}',
            None,
        ),
        (
            b'{"model": "tollgate-chat", "messages": [{"role": "user", "content": "\\ud800"}]}',
            None,
        ),
        (b'{"model": "tollgate-chat", "messages": [{"role": "user"}], "top_p": NaN}', None),
        (b"\xff\xfe{}", None),
        (b"[" * 5000 + b"]" * 5000, None),
    ],
)
def test_invalid_bodies_are_400_naming_the_param(
    gateway: Gateway, content: bytes, param: str | None
) -> None:
    response = gateway.client.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, param=param)


def test_a_form_body_is_refused(gateway: Gateway) -> None:
    response = gateway.client.post("/v1/chat/completions", data={"model": "x"})
    assert_error(response, 400)


def test_unknown_and_disallowed_models_are_404(gateway: Gateway) -> None:
    unknown = gateway.client.post("/v1/chat/completions", json=chat_body(model="gpt-nothing"))
    assert_error(unknown, 404, param="model", code="model_not_found")

    CatalogModel.objects.create(public_id="other-model")
    limited = gateway.new_key(allowed_models=["other-model"])
    response = httpx.post(
        gateway.url + "/v1/chat/completions",
        json=chat_body(),
        headers={"Authorization": f"Bearer {limited}"},
    )
    assert_error(response, 404, param="model", code="model_not_found")


def test_body_over_the_limit_is_413(gateway: Gateway, relay_settings: Any) -> None:
    relay_settings.RELAY_MAX_BODY_BYTES = 1000
    big = chat_body(messages=[{"role": "user", "content": "x" * 2000}])
    assert_error(gateway.client.post("/v1/chat/completions", json=big), 413)


def test_no_enabled_channel_is_503(gateway: Gateway) -> None:
    gateway.channel.status = Channel.Status.DISABLED
    gateway.channel.save()
    response = _eventually(
        lambda: gateway.client.post("/v1/chat/completions", json=chat_body()),
        lambda r: r.status_code == 503,
    )
    assert_error(response, 503, code="model_unavailable")


def test_failing_upstream_is_502(gateway: Gateway, sim: Simulator) -> None:
    gateway.channel.base_url = sim.channel_url("fail=500")
    gateway.channel.save()
    failed = _eventually(
        lambda: gateway.client.post("/v1/chat/completions", json=chat_body()),
        lambda r: r.status_code != 200,
    )
    assert_error(failed, 502, code="upstream_error")


def test_an_upstream_that_hangs_is_504(gateway: Gateway, sim: Simulator, settings: Any) -> None:
    settings.RELAY_TOTAL_TIMEOUT = 1.0
    gateway.channel.base_url = sim.channel_url("hang")
    gateway.channel.save()
    response = _eventually(
        lambda: gateway.client.post("/v1/chat/completions", json=chat_body()),
        lambda r: r.status_code != 200,
    )
    assert_error(response, 504, code="upstream_timeout")


def test_a_refused_connection_is_a_502_not_a_timeout(gateway: Gateway) -> None:
    # A port nothing listens on: the upstream is unreachable, which is not a timeout.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gateway.channel.base_url = f"http://127.0.0.1:{port}/v1"
    gateway.channel.save()
    response = _eventually(
        lambda: gateway.client.post("/v1/chat/completions", json=chat_body()),
        lambda r: r.status_code != 200,
    )
    error = assert_error(response, 502, code="upstream_error")
    assert str(port) not in error["message"]


def test_an_upstream_that_hangs_up_before_answering_is_a_502(gateway: Gateway) -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stop = threading.Event()

        def hang_up() -> None:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                conn.recv(65536)  # the request arrives, then the connection is closed
                conn.close()

        thread = threading.Thread(target=hang_up, daemon=True)
        thread.start()
        try:
            gateway.channel.base_url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
            gateway.channel.save()
            response = _eventually(
                lambda: gateway.client.post("/v1/chat/completions", json=chat_body()),
                lambda r: r.status_code != 200,
            )
        finally:
            stop.set()
            thread.join(timeout=5)
    assert_error(response, 502, code="upstream_error")


def test_upstream_request_errors_pass_through_without_the_channel(
    gateway: Gateway, sim: Simulator
) -> None:
    gateway.channel.base_url = sim.channel_url("fail=400")
    gateway.channel.save()
    response = _eventually(
        lambda: gateway.client.post("/v1/chat/completions", json=chat_body()),
        lambda r: r.status_code != 200,
    )
    error = assert_error(response, 400)
    assert sim.base_url.split("//")[1] not in response.text
    assert error["type"] == "invalid_request_error"


def test_upstream_error_messages_are_scrubbed_of_secret_and_address() -> None:
    route = Route(
        channel_id=1,
        channel_name="c",
        url="https://llm.internal.example:8443/v1/chat/completions",
        secret="sk-live-abcdef123456",
        upstream_model="m",
        priority=0,
        weight=1,
    )
    body = orjson.dumps(
        {
            "error": {
                "message": "Key sk-live-abcdef123456 at https://llm.internal.example:8443/v1 "
                "(llm.internal.example:8443) cannot use this model",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_allowed",
            }
        }
    )
    error = _upstream_error(403, body, route)
    assert error.status == 403
    assert "sk-live" not in error.message
    assert "llm.internal.example" not in error.message
    assert error.param == "model"
    assert error.code == "model_not_allowed"


def test_unknown_paths_and_methods_answer_in_the_envelope(gateway: Gateway) -> None:
    assert_error(gateway.client.get("/v1/embeddingz"), 404, code="unknown_url")
    assert_error(gateway.client.get("/v1/chat/completions"), 405)


def _eventually(call: Any, done: Any, attempts: int = 40) -> httpx.Response:
    """Repeat until the relay has seen a change (it polls for changes every 0.2 s here)."""
    import time

    response = call()
    for _ in range(attempts):
        if done(response):
            return response
        time.sleep(0.1)
        response = call()
    return response


def test_an_unreachable_database_is_a_503_for_keys_not_yet_cached(
    gateway: Gateway, relay_app: RelayApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    from django.db import OperationalError

    from portal import crypto, invalidation
    from portal.models import ApiKey
    from relay import snapshot

    assert gateway.client.get("/v1/models").status_code == 200  # starts the change poller
    # The fixture's own writes bump the change counter; once the relay has seen the last of
    # them it drops nothing more, so the key cached next stays cached.
    deadline = time.monotonic() + 30
    while relay_app.cache.generation != invalidation.current_generation():
        assert time.monotonic() < deadline, "the relay never caught up with the change counter"
        time.sleep(0.05)
    assert gateway.client.get("/v1/models").status_code == 200  # this key is cached now
    # Written without a change notice (bulk_create sends no signal), so that the relay
    # keeps the key it has cached: a notice would make it drop everything.
    stranger = crypto.generate_api_key()
    row = ApiKey(tenant=gateway.tenant, name="never-seen")
    row.set_secret(stranger)
    ApiKey.objects.bulk_create([row])

    def database_down(digest: str) -> None:
        raise OperationalError("connection refused")

    monkeypatch.setattr(snapshot, "load_key", database_down)
    cold = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {stranger}"})
    assert_error(cold, 503, code="database_unavailable")
    assert cold.headers["retry-after"] == "2"
    # The cached key keeps working through the outage.
    assert gateway.client.post("/v1/chat/completions", json=chat_body()).status_code == 200
