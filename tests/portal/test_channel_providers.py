"""Channels of every provider type: their settings are checked, their credentials are
stored encrypted like any channel secret, and create_channel can make each of them."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from portal.models import AuditEntry, Channel
from portal.services import channel_create, channel_update, channel_update_secret

pytestmark = pytest.mark.django_db

SERVICE_ACCOUNT = {
    "type": "service_account",
    "project_id": "acme-prod",
    "private_key_id": "k1",
    "private_key": "-----BEGIN PRIVATE KEY-----\nnot-a-real-key\n-----END PRIVATE KEY-----\n",
    "client_email": "relay@acme-prod.iam.gserviceaccount.com",
    "token_uri": "https://oauth2.googleapis.com/token",
}
BEDROCK_KEYS = {"access_key_id": "AKIAEXAMPLE0001", "secret_access_key": "bedrock-secret-4f1e9a"}
VALID: dict[str, tuple[str, dict[str, Any], str]] = {
    "anthropic": ("", {}, "sk-ant-secret-77aa"),
    "gemini": ("", {}, "AIza-secret-88bb"),
    "vertex": ("", {"location": "europe-west4"}, json.dumps(SERVICE_ACCOUNT)),
    "bedrock": ("", {"region": "us-east-1"}, json.dumps(BEDROCK_KEYS)),
    "azure": (
        "",
        {"resource": "contoso-eu", "api_version": "2024-10-21", "deployments": {"gpt-4o": "d1"}},
        "azure-secret-99cc",
    ),
}


def make(provider: str, **overrides: Any) -> Channel:
    base_url, settings, secret = VALID[provider]
    values: dict[str, Any] = {
        "name": f"{provider}-channel",
        "base_url": base_url,
        "secret": secret,
        "actor": "test",
        "models": ["some-model"],
        "provider_type": provider,
        "provider_settings": settings,
        **overrides,
    }
    return channel_create(**values)


@pytest.mark.parametrize("provider", sorted(VALID))
def test_each_provider_type_is_stored_with_its_secret_encrypted(provider: str) -> None:
    channel = make(provider)
    stored = Channel.objects.get(pk=channel.pk)
    secret = VALID[provider][2]
    assert stored.secret == secret
    assert stored.provider_settings == VALID[provider][1]
    # Encrypted at rest: no part of the credential appears in the row or the audit log.
    for fragment in ("secret-", "bedrock-secret", "not-a-real-key"):
        if fragment in secret:
            assert fragment not in stored.secret_ciphertext
    audit = AuditEntry.objects.get(action="channel.create")
    assert "secret-" not in json.dumps(audit.data) and "not-a-real-key" not in json.dumps(
        audit.data
    )
    assert audit.data["provider_settings"] == VALID[provider][1]


@pytest.mark.parametrize(
    ("provider", "overrides", "field"),
    [
        ("openai", {"base_url": ""}, "base_url"),
        ("bedrock", {"provider_settings": {}}, "provider_settings"),
        ("bedrock", {"secret": "AKIA:secret"}, "secret"),
        ("bedrock", {"secret": json.dumps({"access_key_id": "x"})}, "secret"),
        ("vertex", {"secret": json.dumps({"type": "authorized_user"})}, "secret"),
        ("vertex", {"provider_settings": {"location": "moon base"}}, "provider_settings"),
        ("azure", {"provider_settings": {"resource": "contoso"}}, "provider_settings"),
        (
            "azure",
            {"provider_settings": {"resource": "x", "api_version": "2024-10-21&evil=1"}},
            "provider_settings",
        ),
        # Too old to report a stream's usage: the relay could not meter it.
        (
            "azure",
            {"provider_settings": {"resource": "x", "api_version": "2024-06-01"}},
            "provider_settings",
        ),
        ("anthropic", {"secret": ""}, "secret"),
        # A secret typed into the settings would be stored in the clear: refused.
        ("gemini", {"provider_settings": {"api_key": "AIza-oops"}}, "provider_settings"),
    ],
)
def test_settings_and_secrets_that_cannot_work_are_refused(
    provider: str, overrides: dict[str, Any], field: str
) -> None:
    if provider == "openai":
        values = {"base_url": "", "secret": "k", "provider_settings": {}}
        with pytest.raises(ValidationError) as caught:
            channel_create(name="o", actor="t", models=["m"], provider_type="openai", **values)
    else:
        with pytest.raises(ValidationError) as caught:
            make(provider, **overrides)
    assert field in caught.value.message_dict
    assert not Channel.objects.exists()
    assert "AIza-oops" not in str(caught.value)


def test_secret_updates_are_checked_against_the_provider_type() -> None:
    channel = make("bedrock")
    with pytest.raises(ValidationError):
        channel_update_secret(channel=channel, secret="not json", actor="t")
    assert Channel.objects.get(pk=channel.pk).secret == VALID["bedrock"][2]
    with pytest.raises(ValidationError):
        channel_update(channel=channel, actor="t", provider_settings={"region": "nowhere"})


def test_create_channel_command_with_settings_and_a_key_file(tmp_path: Path) -> None:
    key_file = tmp_path / "sa.json"
    key_file.write_text(json.dumps(SERVICE_ACCOUNT))
    out, err = StringIO(), StringIO()
    call_command(
        "create_channel",
        "--name",
        "vertex-eu",
        "--provider-type",
        "vertex",
        "--provider-settings",
        '{"location": "europe-west4", "project": "acme-prod"}',
        "--secret-file",
        str(key_file),
        "--models",
        "gemini-2.5-pro",
        stdout=out,
        stderr=err,
    )
    channel = Channel.objects.get(name="vertex-eu")
    assert json.loads(channel.secret) == SERVICE_ACCOUNT
    assert channel.provider_settings == {"location": "europe-west4", "project": "acme-prod"}
    assert "not-a-real-key" not in out.getvalue() + err.getvalue()
