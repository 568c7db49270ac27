"""One channel that cannot be used must never take the routing table down (issue 11, #3).

Each bad secret or base URL is written straight into the database, bypassing the input
validation, as a restored dump, an old version or a hand-run SQL statement would. Every
other model keeps being served, the relay says on /readyz and on the channel itself why
the channel is left out, and the channel's Test answers cleanly.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from portal import crypto
from portal.models import CatalogModel, Channel, ChannelModel
from relay.app import RelayApp
from tests.relay.conftest import UPSTREAM_SECRET, Gateway, Simulator, chat_body
from tests.servers import running_server

BAD_SECRETS = [
    "sk-pasted\u00a0secret",  # a non-breaking space pasted with it
    "sk-line\nbreak-secret",  # a header injection if sent
    "sk-\u00e9t\u00e9-secret",
    "sk-nul\x00secret",
]
BAD_URLS = [
    "http://exa mple.test/v1",
    "http://127.0.0.1:99999/v1",
    "http://[::1/v1",
    "http://h\u00f6st.test/v\u00e9",
    "ftp://files.test/v1",
    "http:///v1",
]


def _second_model(gateway: Gateway, sim: Simulator, *, secret: str, base_url: str) -> Channel:
    """A second model served only by a channel written with ``secret`` and ``base_url``."""
    model = CatalogModel.objects.create(public_id="broken-model", owned_by="tollgate")
    gateway.price(model)
    channel = Channel.objects.create(name="broken", base_url=sim.channel_url())
    ChannelModel.objects.create(channel=channel, model=model, upstream_name="sim-upstream")
    # Straight into the row, as validation would refuse it; save() tells the relay.
    channel.secret_ciphertext = crypto.encrypt_secret(secret) if secret else ""
    channel.base_url = base_url
    channel.save()
    return channel


def _served(gateway: Gateway) -> httpx.Response:
    return gateway.client.post("/v1/chat/completions", json=chat_body())


def _wait_for_flag(channel: Channel) -> Channel:
    deadline = time.monotonic() + 10
    while True:
        channel.refresh_from_db()
        if channel.last_check_error.startswith("Not in rotation") or time.monotonic() > deadline:
            return channel
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("secret", "base_url"),
    [(s, "") for s in BAD_SECRETS] + [(UPSTREAM_SECRET, u) for u in BAD_URLS],
)
def test_one_bad_channel_leaves_every_other_model_served(
    gateway: Gateway, sim: Simulator, secret: str, base_url: str
) -> None:
    assert _served(gateway).status_code == 200
    broken = _second_model(gateway, sim, secret=secret, base_url=base_url or sim.channel_url())
    # Once the relay has reloaded (it polls every 0.2 s here): ready, as the others serve,
    # and naming the channel left out.
    deadline = time.monotonic() + 10
    while True:
        ready = httpx.get(gateway.url + "/readyz")
        assert ready.status_code == 200, ready.text
        routing = ready.json()["checks"]["routing"]
        if routing["skipped_channels"]:
            break
        assert time.monotonic() < deadline, "the relay never reloaded"
        time.sleep(0.05)
    assert routing == {"ok": True, "models": 2, "skipped_channels": [broken.pk]}
    models = gateway.client.get("/v1/models")
    assert models.status_code == 200, models.text
    assert [m["id"] for m in models.json()["data"]] == [gateway.model.public_id]
    for _ in range(3):
        response = _served(gateway)
        assert response.status_code == 200, response.text
    # The broken channel's own model is unavailable, in the envelope, not a 500.
    refused = gateway.client.post("/v1/chat/completions", json=chat_body(model="broken-model"))
    assert refused.status_code in (404, 503), refused.text
    assert refused.json()["error"]["code"] in ("model_not_found", "model_unavailable")
    # Flagged on the channel, without the secret.
    flagged = _wait_for_flag(broken)
    assert flagged.last_check_ok is False
    assert flagged.last_check_error.startswith("Not in rotation: ")
    assert secret not in flagged.last_check_error


def test_an_undecryptable_secret_is_skipped_and_flagged(gateway: Gateway, sim: Simulator) -> None:
    broken = _second_model(gateway, sim, secret="", base_url=sim.channel_url())
    Channel.objects.filter(pk=broken.pk).update(secret_ciphertext="gAAAAAnot-a-fernet-token")
    gateway.channel.save()  # any change notice: the relay reloads
    assert _served(gateway).status_code == 200
    flagged = _wait_for_flag(broken)
    assert "cannot be decrypted" in flagged.last_check_error
    assert _served(gateway).status_code == 200


def test_the_operator_sees_the_problem_on_the_channel_test(
    gateway: Gateway, sim: Simulator, operator_user: Any, client: Any
) -> None:
    broken = _second_model(gateway, sim, secret="sk-line\nbreak-secret", base_url=sim.channel_url())
    api = APIClient()
    api.force_authenticate(operator_user)
    tested = api.post(f"/api/channels/{broken.pk}/test/")
    assert tested.status_code == 200, tested.content[:300]
    body = tested.json()
    assert body["ok"] is False
    assert body["error"].startswith("Not in rotation: The secret may only contain")
    shown = api.get(f"/api/channels/{broken.pk}/").json()
    assert shown["last_check_ok"] is False
    assert "break-secret" not in str(shown)
    # The dashboard's Test button: a redirect with the message, not an HTML 500.
    client.force_login(operator_user)
    page = client.post(reverse("channel_test", args=[broken.pk]), follow=True)
    assert page.status_code == 200
    text = page.content.decode()
    assert "Not in rotation" in text
    assert "break-secret" not in text


def test_a_routing_table_that_cannot_be_built_is_reported_by_readyz(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay import snapshot

    def broken_table() -> None:
        raise RuntimeError("a fault of the table as a whole")

    monkeypatch.setattr(snapshot, "load_snapshot", broken_table)
    with running_server(RelayApp()) as url:  # a fresh process: nothing loaded yet
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["routing"] == {"ok": False, "error": "routing_unavailable"}
        refused = httpx.get(
            url + "/v1/models", headers={"Authorization": f"Bearer {gateway.secret}"}
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "routing_unavailable"
