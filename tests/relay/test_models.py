"""GET /v1/models and /v1/models/{model}: exactly what this key may use and can be served."""

from __future__ import annotations

from urllib.parse import quote

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
