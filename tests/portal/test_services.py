"""Portal services: keys shown once and stored as digests, secrets encrypted, all audited."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from portal import crypto, invalidation, services
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
    Membership,
    Organization,
)
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

UPSTREAM_SECRET = "sk-upstream-unit-test-7d1e0b"


def raw_row(model: type[Any], pk: int) -> dict[str, Any]:
    """The row as the database holds it, bypassing every model field and property."""
    table = connection.ops.quote_name(model._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {table} WHERE id = %s", [pk])  # noqa: S608
        columns = [col[0] for col in cursor.description]
        return dict(zip(columns, cursor.fetchone(), strict=True))


def all_audit_text() -> str:
    return json.dumps(list(AuditEntry.objects.values()), default=str)


# --- Organisations and memberships ----------------------------------------------------------


def test_organization_create_derives_a_unique_slug(platform_org: Organization) -> None:
    first = services.organization_create(
        name="Acme Corp", kind="tenant", parent=platform_org, actor="test"
    )
    second = services.organization_create(
        name="Acme Corp", kind="tenant", parent=platform_org, actor="test"
    )

    assert (first.slug, second.slug) == ("acme-corp", "acme-corp-2")
    entry = AuditEntry.objects.get(action="organization.create", target_id=str(first.pk))
    assert entry.organization == first
    assert entry.actor_label == "test"


@pytest.mark.parametrize(
    ("kind", "parent_fixture"),
    [
        ("tenant", "tenant_org"),  # tenants have no children
        ("reseller", "reseller_org"),  # resellers sit under the platform only
        ("tenant", None),  # only the platform is a root
        ("platform", None),  # and there is one platform
        ("bogus", "platform_org"),  # an unknown kind is an error, not a crash
    ],
)
def test_organization_create_refuses_a_broken_tree(
    request: pytest.FixtureRequest,
    platform_org: Organization,
    kind: str,
    parent_fixture: str | None,
) -> None:
    parent = request.getfixturevalue(parent_fixture) if parent_fixture else None
    before = Organization.objects.count()

    with pytest.raises(ValidationError):
        services.organization_create(name="Broken", kind=kind, parent=parent, actor="test")

    assert Organization.objects.count() == before
    assert not AuditEntry.objects.exists()


def test_membership_add_is_audited_and_unique(tenant_org: Organization, operator_user: Any) -> None:
    user = make_user("newcomer")
    membership = services.membership_add(
        organization=tenant_org, user=user, role=Membership.Role.ADMIN, actor=operator_user
    )

    entry = AuditEntry.objects.get(action="membership.add")
    assert entry.target_id == str(membership.pk)
    assert entry.actor == operator_user
    assert entry.data == {"user": "newcomer", "role": "admin"}
    with pytest.raises(ValidationError):
        services.membership_add(
            organization=tenant_org, user=user, role=Membership.Role.MEMBER, actor="test"
        )


# --- API keys -------------------------------------------------------------------------------


def test_api_key_create_returns_the_secret_once_and_stores_only_a_digest(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    key, secret = services.api_key_create(tenant=tenant_org, name="ci", actor=tenant_owner)

    assert secret.startswith(crypto.API_KEY_PREFIX)
    assert len(secret) > 40
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.prefix == secret[: crypto.API_KEY_VISIBLE_CHARS]
    assert stored.digest == crypto.api_key_digest(secret)
    assert stored.created_by == tenant_owner
    # No column of the row, nor the audit log, holds the secret: it exists only in the
    # return value.
    for column, value in raw_row(ApiKey, key.pk).items():
        assert secret not in str(value), column
    assert secret not in str(vars(key))
    assert secret not in all_audit_text()


def test_api_key_matches_only_its_own_secret(tenant_org: Organization) -> None:
    key, secret = services.api_key_create(tenant=tenant_org, name="a", actor="test")
    _, other_secret = services.api_key_create(tenant=tenant_org, name="b", actor="test")

    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.matches(secret)
    assert not stored.matches(other_secret)
    assert not stored.matches(secret + "x")
    assert not stored.matches(secret[:-1])


def test_api_key_create_records_limits(tenant_org: Organization) -> None:
    expires_at = timezone.now() + timedelta(days=30)
    key, _ = services.api_key_create(
        tenant=tenant_org,
        name="limited",
        actor="test",
        expires_at=expires_at,
        allowed_models=[" sim-small", "sim-large", "sim-small"],
    )

    key.refresh_from_db()
    assert key.allowed_models == ["sim-small", "sim-large"]
    assert key.expires_at == expires_at
    assert key.allows_model("sim-large") and not key.allows_model("gpt-4o")
    entry = AuditEntry.objects.get(action="api_key.create")
    assert entry.organization == tenant_org
    assert entry.data["prefix"] == key.prefix
    assert entry.data["allowed_models"] == ["sim-small", "sim-large"]


@pytest.mark.parametrize("org_fixture", ["platform_org", "reseller_org"])
def test_api_key_create_refuses_organisations_that_are_not_tenants(
    request: pytest.FixtureRequest, org_fixture: str
) -> None:
    organization = request.getfixturevalue(org_fixture)

    with pytest.raises(ValidationError):
        services.api_key_create(tenant=organization, name="nope", actor="test")

    assert not ApiKey.objects.exists()
    assert not AuditEntry.objects.exists()


def test_api_key_create_refuses_an_expiry_in_the_past(tenant_org: Organization) -> None:
    with pytest.raises(ValidationError):
        services.api_key_create(
            tenant=tenant_org,
            name="stale",
            actor="test",
            expires_at=timezone.now() - timedelta(seconds=1),
        )
    assert not ApiKey.objects.exists()


def test_api_key_revoke_is_audited_and_idempotent(
    tenant_org: Organization, operator_user: Any
) -> None:
    key, secret = services.api_key_create(tenant=tenant_org, name="ci", actor="test")

    services.api_key_revoke(api_key=key, actor=operator_user)
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.status == ApiKey.Status.REVOKED
    assert stored.revoked_at is not None
    assert not stored.is_usable()
    assert stored.matches(secret)  # still recognised, so the relay can say "revoked"

    again = services.api_key_revoke(api_key=ApiKey.objects.get(pk=key.pk), actor="test")
    assert again.revoked_at == stored.revoked_at
    entry = AuditEntry.objects.get(action="api_key.revoke")
    assert entry.actor == operator_user
    assert entry.organization == tenant_org


def test_api_key_revoke_tells_relay_processes(
    tenant_org: Organization, django_capture_on_commit_callbacks: Any
) -> None:
    key, _ = services.api_key_create(tenant=tenant_org, name="ci", actor="test")
    before = invalidation.current_generation()

    with django_capture_on_commit_callbacks(execute=True):
        services.api_key_revoke(api_key=key, actor="test")

    assert invalidation.current_generation() > before


def test_api_key_and_audit_entry_commit_together(
    tenant_org: Organization, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An enclosing transaction that fails takes both rows with it ...
    with pytest.raises(RuntimeError), transaction.atomic():
        services.api_key_create(tenant=tenant_org, name="ci", actor="test")
        assert ApiKey.objects.exists() and AuditEntry.objects.exists()
        raise RuntimeError
    assert not ApiKey.objects.exists()
    assert not AuditEntry.objects.exists()

    # ... and a key whose audit entry cannot be written is not created.
    def broken_record(**_: Any) -> None:
        raise RuntimeError("audit log unavailable")

    monkeypatch.setattr(AuditEntry, "record", broken_record)
    with pytest.raises(RuntimeError):
        services.api_key_create(tenant=tenant_org, name="ci", actor="test")
    assert not ApiKey.objects.exists()


# --- Catalog --------------------------------------------------------------------------------


def test_catalog_model_upsert_creates_updates_and_stays_quiet_when_unchanged() -> None:
    model = services.catalog_model_upsert(public_id="sim-small", actor="test", context_window=8192)
    assert model.context_window == 8192
    assert AuditEntry.objects.filter(action="catalog_model.create").count() == 1

    services.catalog_model_upsert(public_id="sim-small", actor="test", context_window=8192)
    assert AuditEntry.objects.count() == 1

    services.catalog_model_upsert(
        public_id="sim-small", actor="test", context_window=16384, capabilities=["chat"]
    )
    model.refresh_from_db()
    assert (model.context_window, model.capabilities) == (16384, ["chat"])
    entry = AuditEntry.objects.get(action="catalog_model.update")
    assert entry.data["changed"]["context_window"] == {"from": 8192, "to": 16384}
    assert CatalogModel.objects.count() == 1


@pytest.mark.parametrize("public_id", ["", "sim small", " sim"])
def test_catalog_model_upsert_refuses_unusable_ids(public_id: str) -> None:
    with pytest.raises(ValidationError):
        services.catalog_model_upsert(public_id=public_id, actor="test")
    assert not CatalogModel.objects.exists()


# --- Channels -------------------------------------------------------------------------------


def test_channel_create_encrypts_the_secret_at_rest() -> None:
    channel = services.channel_create(
        name="openai",
        base_url="https://api.example.test/v1",
        secret=UPSTREAM_SECRET,
        actor="test",
        models=["sim-small"],
    )

    ciphertext = raw_row(Channel, channel.pk)["secret_ciphertext"]
    assert ciphertext
    for column, value in raw_row(Channel, channel.pk).items():
        assert UPSTREAM_SECRET not in str(value), column
    assert crypto.decrypt_secret(ciphertext) == UPSTREAM_SECRET
    assert Channel.objects.get(pk=channel.pk).secret == UPSTREAM_SECRET
    entry = AuditEntry.objects.get(action="channel.create")
    assert entry.data["has_secret"] is True
    assert UPSTREAM_SECRET not in all_audit_text()
    assert ciphertext not in all_audit_text()


def test_channel_create_maps_models_and_creates_missing_catalog_entries() -> None:
    existing = CatalogModel.objects.create(public_id="gpt-4o", description="kept as it is")

    channel = services.channel_create(
        name="azure",
        base_url="https://azure.example.test/v1",
        secret=UPSTREAM_SECRET,
        actor="test",
        models={"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini"},
        priority=5,
        weight=3,
    )

    links = {link.model.public_id: link for link in channel.served.select_related("model")}
    assert links["gpt-4o"].upstream_model() == "gpt-4o-2024-08-06"
    assert links["gpt-4o-mini"].upstream_model() == "gpt-4o-mini"
    assert links["gpt-4o"].model == existing
    existing.refresh_from_db()
    assert existing.description == "kept as it is"
    assert (channel.priority, channel.weight) == (5, 3)
    assert AuditEntry.objects.filter(action="catalog_model.create").count() == 1
    entry = AuditEntry.objects.get(action="channel.create")
    assert entry.data["models"] == {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini"}


def test_channel_create_is_all_or_nothing() -> None:
    with pytest.raises(ValidationError):
        services.channel_create(
            name="bad", base_url="not a url", secret="x", actor="test", models=["sim-small"]
        )
    assert not Channel.objects.exists()
    assert not CatalogModel.objects.exists()
    assert not AuditEntry.objects.exists()


def test_channel_models_add_links_only_what_is_missing() -> None:
    channel = services.channel_create(
        name="sim", base_url="http://127.0.0.1:9100/v1", secret="", actor="test", models=["a"]
    )

    assert services.channel_models_add(channel=channel, models=["a", "b"], actor="test") == {
        "b": "b"
    }
    assert services.channel_models_add(channel=channel, models=["a", "b"], actor="test") == {}
    assert ChannelModel.objects.filter(channel=channel).count() == 2
    assert AuditEntry.objects.filter(action="channel.models_add").count() == 1


def test_channel_update_writes_only_changes() -> None:
    channel = services.channel_create(
        name="sim", base_url="http://127.0.0.1:9100/v1", secret="", actor="test", models=[]
    )

    services.channel_update(channel=channel, actor="test", base_url="http://127.0.0.1:9100/v1")
    assert not AuditEntry.objects.filter(action="channel.update").exists()

    services.channel_update(channel=channel, actor="test", base_url="http://127.0.0.1:9200/v1")
    assert Channel.objects.get(pk=channel.pk).base_url == "http://127.0.0.1:9200/v1"
    entry = AuditEntry.objects.get(action="channel.update")
    assert entry.data["changed"]["base_url"]["to"] == "http://127.0.0.1:9200/v1"

    with pytest.raises(ValidationError):
        services.channel_update(channel=channel, actor="test", base_url="nope")
    assert channel.base_url == "http://127.0.0.1:9200/v1"
    with pytest.raises(TypeError):
        services.channel_update(channel=channel, actor="test", secret_ciphertext="x")


def test_channel_update_secret_reencrypts_and_never_logs_it() -> None:
    channel = services.channel_create(
        name="sim", base_url="http://127.0.0.1:9100/v1", secret="old", actor="test", models=[]
    )
    new_secret = "sk-rotated-secret-0c4f"

    services.channel_update_secret(channel=channel, secret=new_secret, actor="test")

    ciphertext = raw_row(Channel, channel.pk)["secret_ciphertext"]
    assert new_secret not in ciphertext
    assert crypto.decrypt_secret(ciphertext) == new_secret
    assert AuditEntry.objects.get(action="channel.secret_update").data == {"has_secret": True}
    assert new_secret not in all_audit_text()


def test_channel_set_status_is_audited_once_per_change() -> None:
    channel = services.channel_create(
        name="sim", base_url="http://127.0.0.1:9100/v1", secret="", actor="test", models=[]
    )

    services.channel_set_status(channel=channel, enabled=False, reason="5xx burst", actor="health")
    services.channel_set_status(channel=channel, enabled=False, reason="5xx burst", actor="health")
    stored = Channel.objects.get(pk=channel.pk)
    assert (stored.status, stored.status_reason) == (Channel.Status.DISABLED, "5xx burst")
    assert AuditEntry.objects.filter(action="channel.disable").count() == 1

    services.channel_set_status(channel=stored, enabled=True, actor="health")
    stored.refresh_from_db()
    assert (stored.status, stored.status_reason) == (Channel.Status.ENABLED, "")
    assert AuditEntry.objects.get(action="channel.enable").data["previous"] == "disabled"
