"""GET /v1/models and /v1/models/{model}: exactly what this key may use and can be served."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote

import anthropic
import httpx
import pytest

from portal.models import CatalogModel, Channel, ChannelModel
from tests.openai_schema import validate
from tests.relay.conftest import PUBLIC_MODEL, UPSTREAM_SECRET, Gateway, Simulator


def _ids(response_json: dict) -> set[str]:
    return {model["id"] for model in response_json["data"]}


def test_list_shows_models_with_an_enabled_channel_that_the_key_may_use(
    gateway: Gateway, sim: Simulator
) -> None:
    # Served by a disabled channel only: not listed.
    dark = CatalogModel.objects.create(public_id="dark-model")
    disabled = Channel(name="off", base_url=sim.channel_url(), status=Channel.Status.DISABLED)
    disabled.secret = UPSTREAM_SECRET
    disabled.save()
    ChannelModel.objects.create(channel=disabled, model=dark)
    # In the catalog but served by no channel: not listed.
    CatalogModel.objects.create(public_id="unserved-model")
    # Served, but switched off in the catalog: not listed.
    retired = CatalogModel.objects.create(public_id="retired-model", is_active=False)
    ChannelModel.objects.create(channel=gateway.channel, model=retired)
    # Served and active: listed, with a slash in its id.
    vendor = CatalogModel.objects.create(public_id="vendor/model-2", owned_by="vendor")
    ChannelModel.objects.create(channel=gateway.channel, model=vendor, upstream_name="v2")
    # Priced too, so that only the reasons above keep them out of the list.
    for model in (dark, retired, vendor, CatalogModel.objects.get(public_id="unserved-model")):
        gateway.price(model)
    # Served and active but with no price for this tenant: never listed, never free.
    unpriced = CatalogModel.objects.create(public_id="unpriced-model")
    ChannelModel.objects.create(channel=gateway.channel, model=unpriced)

    response = gateway.client.get("/v1/models")
    assert response.status_code == 200
    validate(response.json(), "ListModelsResponse")
    assert _ids(response.json()) == {PUBLIC_MODEL, "vendor/model-2"}

    limited = gateway.new_key(allowed_models=["vendor/model-2", "dark-model"])
    response = gateway.client.get("/v1/models", headers={"Authorization": f"Bearer {limited}"})
    assert _ids(response.json()) == {"vendor/model-2"}


def test_retrieve_returns_one_model_or_404(gateway: Gateway) -> None:
    vendor = CatalogModel.objects.create(public_id="vendor/model-2", owned_by="vendor")
    ChannelModel.objects.create(channel=gateway.channel, model=vendor)
    gateway.price(vendor)

    response = gateway.client.get(f"/v1/models/{PUBLIC_MODEL}")
    assert response.status_code == 200
    validate(response.json(), "Model")
    assert response.json()["id"] == PUBLIC_MODEL
    assert response.json()["owned_by"] == "tollgate"

    for path in ("/v1/models/vendor/model-2", "/v1/models/" + quote("vendor/model-2", safe="")):
        response = gateway.client.get(path)
        assert response.status_code == 200, path
        assert response.json()["id"] == "vendor/model-2"

    missing = gateway.client.get("/v1/models/not-a-model")
    assert missing.status_code == 404
    validate(missing.json(), "ErrorResponse")
    assert missing.json()["error"]["code"] == "model_not_found"

    limited = gateway.new_key(allowed_models=["vendor/model-2"])
    hidden = gateway.client.get(
        f"/v1/models/{PUBLIC_MODEL}", headers={"Authorization": f"Bearer {limited}"}
    )
    assert hidden.status_code == 404


def test_a_model_without_a_price_is_never_served(gateway: Gateway) -> None:
    unpriced = CatalogModel.objects.create(public_id="unpriced-model")
    ChannelModel.objects.create(channel=gateway.channel, model=unpriced)

    retrieve = gateway.client.get("/v1/models/unpriced-model")
    chat = gateway.client.post(
        "/v1/chat/completions",
        json={"model": "unpriced-model", "messages": [{"role": "user", "content": "hi"}]},
    )

    for response in (retrieve, chat):
        assert response.status_code == 403
        validate(response.json(), "ErrorResponse")
        assert response.json()["error"]["code"] == "model_not_priced"
        assert response.json()["error"]["param"] == "model"


# --- Anthropic's Models API, for clients that send anthropic-version --------------------------


def _anthropic_catalog(gateway: Gateway) -> list[str]:
    """Three more models on the gateway's channel, released a day apart (newest last), and
    one that serves embeddings only; returns every Messages model's id, newest first."""
    ids = []
    for day, public_id in enumerate(("claude-a", "claude-b", "claude-c"), start=1):
        model = CatalogModel.objects.create(public_id=public_id, max_output_tokens=64_000)
        CatalogModel.objects.filter(pk=model.pk).update(
            created_at=datetime(2030, 1, day, tzinfo=UTC)
        )
        ChannelModel.objects.create(channel=gateway.channel, model=model)
        gateway.price(model)
        ids.insert(0, public_id)
    vectors = CatalogModel.objects.create(public_id="vectors", surfaces=["embeddings"])
    ChannelModel.objects.create(channel=gateway.channel, model=vectors)
    gateway.price(vectors)
    gateway.caught_up()
    return [*ids, PUBLIC_MODEL]


def test_the_anthropic_sdk_lists_pages_and_retrieves_models(gateway: Gateway) -> None:
    newest_first = _anthropic_catalog(gateway)
    with anthropic.Anthropic(base_url=gateway.url, api_key=gateway.secret, max_retries=0) as sdk:
        # Pages of two, followed by the SDK through after_id until has_more is false.
        listed = list(sdk.models.list(limit=2))
        first = sdk.models.list(limit=2)
        model = sdk.models.retrieve("claude-b")
        with pytest.raises(anthropic.NotFoundError):
            sdk.models.retrieve("vectors")  # not callable on /v1/messages
        with pytest.raises(anthropic.BadRequestError):
            sdk.models.list(limit=1001)
        before = sdk.models.list(before_id="claude-a", limit=1)

    assert [m.id for m in listed] == newest_first
    assert all(m.type == "model" and m.lifecycle == "active" for m in listed)
    assert listed[0].display_name == "claude-c" and listed[0].max_tokens == 64_000
    assert listed[0].created_at == datetime(2030, 1, 3, tzinfo=UTC)
    assert [m.id for m in first.data] == ["claude-c", "claude-b"]
    assert (first.has_more, first.first_id, first.last_id) == (True, "claude-c", "claude-b")
    assert model.id == "claude-b" and model.created_at == datetime(2030, 1, 2, tzinfo=UTC)
    assert [m.id for m in before.data] == ["claude-b"] and before.has_more is True


def test_anthropic_listing_keeps_to_the_key_and_answers_in_anthropics_envelope(
    gateway: Gateway,
) -> None:
    _anthropic_catalog(gateway)
    version = {"anthropic-version": "2023-06-01"}
    narrow = gateway.new_key(allowed_models=["claude-a", "vectors"])
    chat_only = gateway.new_key(allowed_surfaces=["chat"])

    shown = httpx.get(gateway.url + "/v1/models", headers={**version, "x-api-key": narrow}).json()
    nothing = httpx.get(
        gateway.url + "/v1/models", headers={**version, "x-api-key": chat_only}
    ).json()
    unknown = httpx.get(
        gateway.url + "/v1/models/claude-z", headers={**version, "x-api-key": narrow}
    )
    foreign = httpx.get(
        gateway.url + "/v1/models/claude-b", headers={**version, "x-api-key": narrow}
    )
    keyless = httpx.get(gateway.url + "/v1/models", headers=version)
    cursor = httpx.get(
        gateway.url + "/v1/models?after_id=claude-b", headers={**version, "x-api-key": narrow}
    )

    assert shown == {
        "data": [
            {
                "type": "model",
                "id": "claude-a",
                "display_name": "claude-a",
                "created_at": "2030-01-01T00:00:00Z",
                "lifecycle": "active",
                "max_tokens": 64_000,
            }
        ],
        "has_more": False,
        "first_id": "claude-a",
        "last_id": "claude-a",
    }
    assert nothing == {"data": [], "has_more": False, "first_id": None, "last_id": None}
    for refused, status, kind in (
        (unknown, 404, "not_found_error"),
        (foreign, 404, "not_found_error"),
        (keyless, 401, "authentication_error"),
        (cursor, 400, "invalid_request_error"),  # a cursor this key is not shown
    ):
        assert refused.status_code == status
        assert refused.json()["type"] == "error" and refused.json()["error"]["type"] == kind
    # Without anthropic-version the list is OpenAI's, and x-api-key is no credential there.
    openai_list = gateway.client.get("/v1/models").json()
    assert openai_list["object"] == "list" and "vectors" in _ids(openai_list)
