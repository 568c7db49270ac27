"""One user action, one service call: the services that stand for a whole edit or a bulk
action commit everything they do together, or nothing."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import DatabaseError

from portal import crypto, services
from portal.models import ApiKey, AuditEntry, Channel, ChannelModel, Organization

pytestmark = pytest.mark.django_db


def make_channel(name: str = "sim") -> Channel:
    return services.channel_create(
        name=name, base_url="http://127.0.0.1:9100/v1", secret="old", actor="test", models=["a"]
    )


def test_channel_edit_changes_settings_secret_and_models_in_one_go() -> None:
    channel = make_channel()

    services.channel_edit(
        channel=channel,
        actor="test",
        secret="sk-new-secret-5d1e",
        models=["a", "b"],
        base_url="http://127.0.0.1:9200/v1",
        priority=3,
    )

    stored = Channel.objects.get(pk=channel.pk)
    assert (stored.base_url, stored.priority) == ("http://127.0.0.1:9200/v1", 3)
    assert crypto.decrypt_secret(stored.secret_ciphertext) == "sk-new-secret-5d1e"
    assert set(
        ChannelModel.objects.filter(channel=channel).values_list("model__public_id", flat=True)
    ) == {"a", "b"}
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"channel.update", "channel.secret_update", "channel.models_add"} <= actions


def test_channel_edit_without_secret_keeps_it_and_empty_removes_it() -> None:
    channel = make_channel()

    services.channel_edit(channel=channel, actor="test", priority=1)
    assert Channel.objects.get(pk=channel.pk).secret == "old"
    assert not AuditEntry.objects.filter(action="channel.secret_update").exists()

    services.channel_edit(channel=channel, actor="test", secret="")
    assert Channel.objects.get(pk=channel.pk).secret_ciphertext == ""


def test_channel_edit_is_all_or_nothing() -> None:
    channel = make_channel()
    audit_before = AuditEntry.objects.count()

    with pytest.raises(ValidationError):
        services.channel_edit(
            channel=channel,
            actor="test",
            secret="sk-never-stored-77aa",
            models=["bad model id!"],
            base_url="http://127.0.0.1:9300/v1",
        )

    stored = Channel.objects.get(pk=channel.pk)
    assert stored.base_url == "http://127.0.0.1:9100/v1"
    assert stored.secret == "old"
    assert AuditEntry.objects.count() == audit_before


def test_channels_set_status_changes_all_or_none() -> None:
    first, second = make_channel("one"), make_channel("two")

    assert (
        services.channels_set_status(
            channels=Channel.objects.all(), enabled=False, reason="maintenance", actor="test"
        )
        == 2
    )
    assert set(Channel.objects.values_list("status", flat=True)) == {Channel.Status.DISABLED}
    assert AuditEntry.objects.filter(action="channel.disable").count() == 2

    with pytest.raises(DatabaseError):  # the second is gone: the first stays as it was
        services.channels_set_status(
            channels=[first, Channel(pk=second.pk + 100, status=Channel.Status.DISABLED)],
            enabled=True,
            actor="test",
        )
    assert Channel.objects.get(pk=first.pk).status == Channel.Status.DISABLED


def test_api_keys_revoke_counts_the_active_ones(tenant_org: Organization) -> None:
    keys = [
        services.api_key_create(tenant=tenant_org, name=f"k{n}", actor="test")[0] for n in range(3)
    ]
    services.api_key_revoke(api_key=keys[0], actor="test")

    assert services.api_keys_revoke(api_keys=ApiKey.objects.all(), actor="test") == 2
    assert set(ApiKey.objects.values_list("status", flat=True)) == {ApiKey.Status.REVOKED}
    assert AuditEntry.objects.filter(action="api_key.revoke").count() == 3
