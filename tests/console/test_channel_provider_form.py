"""The dashboard's channel form asks each provider type for what it needs (issue 15):
Vertex a service-account JSON key, Bedrock a key pair and a region, Azure a resource,
deployments and an API version; checked by portal.models.provider_settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from portal import services
from portal.models import Channel
from tests.relay.providers.conftest import private_key_pem, service_account_info

pytestmark = pytest.mark.django_db

BASE = {"priority": "0", "weight": "1", "models": "claude-x = claude-upstream"}
SA = service_account_info("http://127.0.0.1:9", private_key_pem()[0])


def _post(client: Client, data: dict[str, Any], url: str | None = None) -> Any:
    return client.post(url or reverse("channel_create"), {**BASE, **data})


def test_each_provider_field_names_the_types_that_show_it(operator: Client) -> None:
    html = operator.get(reverse("channel_create")).content.decode()
    assert "data-provider-select" in html
    assert 'name="service_account"' in html and 'data-providers="vertex"' in html
    assert 'name="region"' in html and 'data-providers="bedrock"' in html
    assert 'name="deployments"' in html and 'data-providers="azure"' in html
    assert 'data-providers="openai anthropic gemini azure"' in html  # the API key


def test_vertex_channel_from_a_service_account_key(operator: Client) -> None:
    response = _post(
        operator,
        {
            "name": "Vertex",
            "provider_type": "vertex",
            "service_account": json.dumps(SA),
            "location": "europe-west4",
            "project": "sim-project",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    channel = Channel.objects.get(name="Vertex")
    assert json.loads(channel.secret)["client_email"] == SA["client_email"]
    assert channel.provider_settings == {"location": "europe-west4", "project": "sim-project"}
    assert (
        SA["private_key"]
        not in operator.get(reverse("channel_edit", args=[channel.pk])).content.decode()
    )
    bad = _post(operator, {"name": "V2", "provider_type": "vertex", "service_account": "{}"})
    assert bad.status_code == 400
    assert 'id="id_service_account_error"' in bad.content.decode()
    bad = _post(
        operator,
        {
            "name": "V3",
            "provider_type": "vertex",
            "service_account": json.dumps(SA),
            "location": "mars",
        },
    )
    assert bad.status_code == 400 and 'id="id_location_error"' in bad.content.decode()


def test_bedrock_channel_from_a_key_pair_and_region(operator: Client) -> None:
    data = {
        "name": "Bedrock",
        "provider_type": "bedrock",
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "region": "us-east-1",
    }
    assert _post(operator, data).status_code == 302
    channel = Channel.objects.get(name="Bedrock")
    assert json.loads(channel.secret) == {
        "access_key_id": "AKIDEXAMPLE",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    }
    assert channel.provider_settings == {"region": "us-east-1"}
    # Editing with the key fields left empty keeps the stored pair.
    edit = reverse("channel_edit", args=[channel.pk])
    form = operator.get(edit).content.decode()
    assert "wJalrXUtnFEMI" not in form and 'value="us-east-1"' in form
    kept = {**data, "access_key_id": "", "secret_access_key": "", "region": "eu-west-1"}
    assert _post(operator, kept, edit).status_code == 302
    channel.refresh_from_db()
    assert channel.provider_settings == {"region": "eu-west-1"}
    assert json.loads(channel.secret)["access_key_id"] == "AKIDEXAMPLE"
    missing = _post(operator, {**data, "name": "B2", "region": ""})
    assert missing.status_code == 400 and 'id="id_region_error"' in missing.content.decode()
    half = _post(operator, {**data, "name": "B3", "secret_access_key": ""})
    assert half.status_code == 400 and 'id="id_secret_access_key_error"' in half.content.decode()


def test_azure_channel_with_deployments(operator: Client) -> None:
    data = {
        "name": "Azure",
        "provider_type": "azure",
        "secret": "azure-key-123",
        "resource": "my-resource",
        "api_version": "2024-10-21",
        "deployments": "gpt-4o = prod-gpt4o\n\ngpt-4o-mini = mini",
    }
    assert _post(operator, data).status_code == 302
    channel = Channel.objects.get(name="Azure")
    assert channel.provider_settings == {
        "resource": "my-resource",
        "api_version": "2024-10-21",
        "deployments": {"gpt-4o": "prod-gpt4o", "gpt-4o-mini": "mini"},
    }
    form = operator.get(reverse("channel_edit", args=[channel.pk])).content.decode()
    assert "gpt-4o = prod-gpt4o" in form
    bad = _post(operator, {**data, "name": "A2", "api_version": "latest"})
    assert bad.status_code == 400 and 'id="id_api_version_error"' in bad.content.decode()
    bad = _post(operator, {**data, "name": "A3", "deployments": "no equals sign"})
    assert bad.status_code == 400 and 'id="id_deployments_error"' in bad.content.decode()


def test_native_surfaces_only_for_openai_compatible_channels(operator: Client) -> None:
    data = {
        "name": "Compat",
        "provider_type": "openai",
        "base_url": "http://u.test/v1",
        "secret": "sk-compat",
        "native_surfaces": ["responses"],
    }
    assert _post(operator, data).status_code == 302
    assert Channel.objects.get(name="Compat").native_surfaces == ["responses"]
    anthropic = {**data, "name": "Claude", "provider_type": "anthropic", "base_url": ""}
    assert _post(operator, anthropic).status_code == 302
    claude = Channel.objects.get(name="Claude")
    assert claude.native_surfaces == [] and claude.base_url == ""


def test_openai_needs_a_base_url(operator: Client) -> None:
    response = _post(operator, {"name": "x", "provider_type": "openai", "secret": "k"})
    assert response.status_code == 400 and 'id="id_base_url_error"' in response.content.decode()
    assert not Channel.objects.exists()


def test_an_edit_keeps_the_api_key(operator: Client) -> None:
    channel = services.channel_create(
        name="Anthropic", provider_type="anthropic", secret="sk-ant-1", models=[], actor="t"
    )
    edit = reverse("channel_edit", args=[channel.pk])
    data = {"name": "Anthropic", "provider_type": "anthropic", "secret": "", "priority": "3"}
    assert _post(operator, data, edit).status_code == 302
    channel.refresh_from_db()
    assert (channel.secret, channel.priority) == ("sk-ant-1", 3)
