"""/api/channels/ (operators only, secrets write-only) and /api/models/ (availability)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from portal import services
from portal.models import AuditEntry, CatalogModel, Channel, Organization
from tests.conftest import price_models
from tests.console.conftest import api_client_for as client_for

pytestmark = pytest.mark.django_db

SECRET = "sk-upstream-api-test-51c0"


@pytest.fixture
def channel(platform_org: Organization) -> Channel:
    price_models("sim-small", "sim-large")
    return services.channel_create(
        name="Primary",
        base_url="http://upstream.test/v1",
        secret=SECRET,
        models={"sim-small": "", "sim-large": "large-v2"},
        actor="test",
    )


@pytest.mark.parametrize("persona", ["reseller_admin", "tenant_owner", "tenant_member", "outsider"])
def test_channels_are_for_operators_only(
    request: pytest.FixtureRequest, channel: Channel, persona: str
) -> None:
    client = client_for(request.getfixturevalue(persona))
    assert client.get("/api/channels/").status_code == 403
    assert client.get(f"/api/channels/{channel.pk}/").status_code == 403
    assert client.post(f"/api/channels/{channel.pk}/disable/").status_code == 403
    assert client.patch(f"/api/channels/{channel.pk}/", {"name": "x"}).status_code == 403
    response = client.post(
        "/api/channels/", {"name": "x", "base_url": "http://x.test/v1"}, format="json"
    )
    assert response.status_code == 403
    channel.refresh_from_db()
    assert (channel.name, channel.status) == ("Primary", "enabled")


def test_operator_creates_a_channel_and_never_reads_its_secret(operator_user: Any) -> None:
    client = client_for(operator_user)
    response = client.post(
        "/api/channels/",
        {
            "name": "OpenAI",
            "base_url": "https://api.openai.test/v1",
            "secret": SECRET,
            "priority": 5,
            "models": [{"public_id": "gpt-x", "upstream_name": "gpt-x-2025"}],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["has_secret"] is True and "secret" not in body
    assert body["models"] == [{"public_id": "gpt-x", "upstream_name": "gpt-x-2025"}]
    assert Channel.objects.get(pk=body["id"]).secret == SECRET
    for url in ("/api/channels/", f"/api/channels/{body['id']}/"):
        assert SECRET not in client.get(url).content.decode()
    assert SECRET not in json.dumps(list(AuditEntry.objects.values("data")), default=str)


def test_operator_updates_rotates_the_secret_and_adds_models(
    operator_user: Any, channel: Channel
) -> None:
    client = client_for(operator_user)
    response = client.patch(
        f"/api/channels/{channel.pk}/",
        {"priority": 9, "secret": "sk-new-upstream-secret"},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["priority"] == 9
    channel.refresh_from_db()
    assert channel.secret == "sk-new-upstream-secret"
    added = client.post(
        f"/api/channels/{channel.pk}/models/",
        {"models": [{"public_id": "sim-xl"}]},
        format="json",
    )
    assert {m["public_id"] for m in added.json()["models"]} == {"sim-small", "sim-large", "sim-xl"}
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"channel.update", "channel.secret_update", "channel.models_add"} <= actions
    bad = client.patch(f"/api/channels/{channel.pk}/", {"base_url": "ftp://x"}, format="json")
    assert bad.status_code == 400 and "base_url" in bad.json()
    assert client.put(f"/api/channels/{channel.pk}/", {}, format="json").status_code == 405


def test_enable_and_disable_drive_model_availability(operator_user: Any, channel: Channel) -> None:
    client = client_for(operator_user)

    def availability() -> dict[str, str]:
        rows = client.get("/api/models/").json()["results"]
        return {r["public_id"]: r["availability"] for r in rows}

    assert availability() == {"sim-large": "available", "sim-small": "available"}
    disabled = client.post(f"/api/channels/{channel.pk}/disable/", {"reason": "maintenance"})
    assert disabled.json()["status"] == "disabled"
    assert disabled.json()["status_reason"] == "maintenance"
    assert availability() == {
        "sim-large": "unavailable: no active channel",
        "sim-small": "unavailable: no active channel",
    }
    assert client.post(f"/api/channels/{channel.pk}/enable/").json()["status"] == "enabled"
    assert set(availability().values()) == {"available"}


def test_models_are_readable_by_every_signed_in_person(
    tenant_member: Any, outsider: Any, channel: Channel
) -> None:
    CatalogModel.objects.create(public_id="orphan")
    services.channel_models_add(channel=channel, models=["unpriced-model"], actor="test")
    for user in (tenant_member, outsider):
        rows = client_for(user).get("/api/models/").json()["results"]
        by_id = {r["public_id"]: r for r in rows}
        assert by_id["sim-small"]["available"] is True
        assert by_id["orphan"]["available"] is False
        assert by_id["orphan"]["availability"] == "unavailable: no active channel"
        # Served, but no price list prices it: every request would be refused.
        assert by_id["unpriced-model"]["available"] is False
        assert by_id["unpriced-model"]["availability"] == "unpriced"
    detail = client_for(outsider).get("/api/models/sim-small/")
    assert detail.status_code == 200 and detail.json()["available"] is True


def test_only_operators_write_the_catalog(operator_user: Any, tenant_owner: Any, db: None) -> None:
    body = {"public_id": "new-model", "owned_by": "acme", "capabilities": ["chat"]}
    assert client_for(tenant_owner).post("/api/models/", body, format="json").status_code == 403
    created = client_for(operator_user).post("/api/models/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["availability"] == "unavailable: no active channel"
    updated = client_for(operator_user).post(
        "/api/models/", {**body, "context_window": 8192}, format="json"
    )
    assert updated.status_code == 200
    assert CatalogModel.objects.get(public_id="new-model").context_window == 8192
    bad = client_for(operator_user).post("/api/models/", {"public_id": "has space"}, format="json")
    assert bad.status_code == 400


def test_channel_list_query_count_is_bounded(
    operator_user: Any, channel: Channel, django_assert_max_num_queries: Any
) -> None:
    client = client_for(operator_user)
    with django_assert_max_num_queries(10) as one:
        client.get("/api/channels/")
    for n in range(15):
        services.channel_create(
            name=f"c{n}",
            base_url="http://u.test/v1",
            secret="",
            models=[f"m{n}", "sim-small"],
            actor="test",
        )
    with django_assert_max_num_queries(len(one.captured_queries)):
        assert client.get("/api/channels/").json()["count"] == 16
    with django_assert_max_num_queries(len(one.captured_queries)):
        client.get("/api/models/")


def test_operator_sets_a_channels_native_surfaces(operator_user: Any, channel: Channel) -> None:
    client = client_for(operator_user)
    assert client.get(f"/api/channels/{channel.pk}/").json()["native_surfaces"] == []
    response = client.patch(
        f"/api/channels/{channel.pk}/", {"native_surfaces": ["responses"]}, format="json"
    )
    assert response.status_code == 200, response.content
    assert response.json()["native_surfaces"] == ["responses"]
    channel.refresh_from_db()
    assert channel.native_surfaces == ["responses"]
    audit = AuditEntry.objects.filter(action="channel.update").latest("pk")
    assert audit.data["changed"]["native_surfaces"] == {"from": [], "to": ["responses"]}
    # chat is served by every channel: it is no native surface to declare.
    for bad in (["chat"], ["responses", "nope"], "messages"):
        refused = client.patch(
            f"/api/channels/{channel.pk}/", {"native_surfaces": bad}, format="json"
        )
        assert refused.status_code == 400 and "native_surfaces" in refused.json()
    channel.refresh_from_db()
    assert channel.native_surfaces == ["responses"]
    created = client.post(
        "/api/channels/",
        {
            "name": "Native",
            "base_url": "https://api.native.test/v1",
            "native_surfaces": ["responses", "messages"],
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert Channel.objects.get(pk=created.json()["id"]).native_surfaces == [
        "responses",
        "messages",
    ]
    # Other providers speak one protocol of their own: the relay would ignore the list.
    anthropic = client.post(
        "/api/channels/",
        {
            "name": "Claude",
            "provider_type": "anthropic",
            "secret": "sk-ant-api03-test-key",
            "native_surfaces": ["messages"],
        },
        format="json",
    )
    assert anthropic.status_code == 400, anthropic.content
    assert "native_surfaces" in anthropic.json()
    assert not Channel.objects.filter(name="Claude").exists()


def test_operator_sets_a_models_surfaces(operator_user: Any, tenant_owner: Any, db: None) -> None:
    client = client_for(operator_user)
    created = client.post("/api/models/", {"public_id": "embed-x"}, format="json")
    assert created.json()["surfaces"] == ["chat", "responses", "messages", "completions"]
    updated = client.post(
        "/api/models/", {"public_id": "embed-x", "surfaces": ["embeddings"]}, format="json"
    )
    assert updated.status_code == 200, updated.content
    assert updated.json()["surfaces"] == ["embeddings"]
    assert CatalogModel.objects.get(public_id="embed-x").surfaces == ["embeddings"]
    audit = AuditEntry.objects.filter(action="catalog_model.update").latest("pk")
    assert audit.data["changed"]["surfaces"]["to"] == ["embeddings"]
    # Omitted: unchanged.
    kept = client.post("/api/models/", {"public_id": "embed-x"}, format="json")
    assert kept.json()["surfaces"] == ["embeddings"]
    for bad in ([], ["chat", "chat"], ["images"], "chat"):
        refused = client.post(
            "/api/models/", {"public_id": "embed-x", "surfaces": bad}, format="json"
        )
        assert refused.status_code == 400 and "surfaces" in refused.json(), bad
    assert CatalogModel.objects.get(public_id="embed-x").surfaces == ["embeddings"]
    other = client_for(tenant_owner).post(
        "/api/models/", {"public_id": "embed-x", "surfaces": ["chat"]}, format="json"
    )
    assert other.status_code == 403
