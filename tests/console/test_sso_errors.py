"""A single sign-on provider that is down or half-configured: the person gets the sign-in
page and a message, never a server error, and nothing about the provider's internals."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from django.contrib.messages import get_messages
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from console.sso import SESSION_PROVIDER
from portal.services.sso import sso_provider_save

pytestmark = pytest.mark.django_db


def _dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def half_up_issuer() -> Iterator[str]:
    """An issuer that publishes its discovery document, while its token endpoint is down."""
    dead = f"http://127.0.0.1:{_dead_port()}"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
            body = json.dumps(
                {
                    "issuer": issuer,
                    "authorization_endpoint": f"{issuer}/auth",
                    "token_endpoint": f"{dead}/token",
                    "userinfo_endpoint": f"{dead}/me",
                    "jwks_uri": f"{dead}/jwks",
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        cache.clear()


def _provider(organization: Any, issuer: str) -> Any:
    return sso_provider_save(
        organization=organization,
        issuer=issuer,
        client_id="tollgate",
        client_secret="sso-secret-of-the-test-5e1f",
        allowed_domains=["reseller.test"],
        role_claim="groups",
        role_map={"sales": "admin"},
        enabled=True,
        actor="test",
    )


def _messages(response: Any) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def test_an_unreachable_issuer_sends_the_person_back_to_sign_in(reseller_org: Any) -> None:
    dead = f"http://127.0.0.1:{_dead_port()}"
    provider = _provider(reseller_org, dead)
    response = Client().get(reverse("sso_login", args=[provider.key]))
    assert response.status_code == 302
    assert response["location"] == reverse("login")
    shown = _messages(response)
    assert shown == ["The identity provider cannot be reached. Try again later."]
    assert dead.split("//")[1] not in " ".join(shown)


def test_a_token_endpoint_that_is_down_at_the_callback_is_not_a_server_error(
    reseller_org: Any, half_up_issuer: str
) -> None:
    provider = _provider(reseller_org, half_up_issuer)
    client = Client()
    started = client.get(reverse("sso_login", args=[provider.key]))
    assert started.status_code == 302
    assert started["location"].startswith(f"{half_up_issuer}/auth?")
    session = client.session
    assert session[SESSION_PROVIDER] == provider.key
    state = next(iter(session["oidc_states"]))

    response = client.get(reverse("sso_callback"), {"code": "any-code", "state": state})
    assert response.status_code == 302
    assert response["location"] == reverse("login")
    assert _messages(response) == ["The identity provider cannot be reached. Try again later."]
    assert "_auth_user_id" not in client.session
