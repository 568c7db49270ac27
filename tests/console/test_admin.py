"""The Django admin: every page opens for an operator, and no secret ever reaches one."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from billing.models import UsageEvent
from portal import crypto, services
from portal.models import ApiKey, AuditEntry, Channel, Organization
from tests.conftest import make_user

pytestmark = pytest.mark.django_db

UPSTREAM_SECRET = "sk-upstream-admin-test-3e9f7a"
SECRET_RE = re.compile(re.escape(crypto.API_KEY_PREFIX) + r"[A-Za-z0-9_\-]{20,}")


def admin_url(model: type[Any], view: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


@pytest.fixture
def operator_client(client: Client, operator_user: Any) -> Client:
    client.force_login(operator_user)
    return client


@pytest.fixture
def channel() -> Channel:
    return services.channel_create(
        name="primary",
        base_url="https://api.example.test/v1",
        secret=UPSTREAM_SECRET,
        actor="test",
        models={"sim-small": "upstream-small"},
    )


@pytest.fixture
def populated(tenant_org: Organization, tenant_owner: Any, channel: Channel) -> dict[str, Any]:
    """At least one row of every model, so list columns and change pages render."""
    key, secret = services.api_key_create(tenant=tenant_org, name="ci", actor=tenant_owner)
    UsageEvent.objects.create(
        request_id="req-1",
        created_at=timezone.now(),
        tenant=tenant_org,
        api_key=key,
        model="sim-small",
        channel=channel,
        upstream_model="upstream-small",
        prompt_tokens=12,
        completion_tokens=34,
        status_code=200,
        total_latency_ms=56,
    )
    return {"key": key, "secret": secret, "channel": channel}


def test_operator_can_open_every_changelist(operator_client: Client, populated: Any) -> None:
    for model in admin.site._registry:
        for query in ("", "?q=sim", "?o=1"):
            response = operator_client.get(admin_url(model, "changelist") + query)
            assert response.status_code == 200, (model, query)


def test_operator_can_open_every_add_page(operator_client: Client, populated: Any) -> None:
    for model, model_admin in admin.site._registry.items():
        response = operator_client.get(admin_url(model, "add"))
        request = response.wsgi_request
        expected = 200 if model_admin.has_add_permission(request) else 403
        assert response.status_code == expected, model


def test_operator_can_open_every_change_page(operator_client: Client, populated: Any) -> None:
    for model in admin.site._registry:
        obj = model._default_manager.first()
        if obj is None:
            continue
        response = operator_client.get(admin_url(model, "change", obj.pk))
        assert response.status_code == 200, model


def add_rows(tenant: Organization, key: ApiKey, channel: Channel, n: int) -> None:
    """``n`` more rows of each portal and billing model, with distinct related objects."""
    for i in range(n):
        suffix = f"{Organization.objects.count()}-{i}"
        org = services.organization_create(
            name=f"Shop {suffix}", kind="tenant", parent=tenant.parent, actor="test"
        )
        user = make_user(f"user-{suffix}")
        services.membership_add(organization=org, user=user, role="owner", actor=user)
        other_key, _ = services.api_key_create(tenant=org, name=f"k{i}", actor=user)
        other_channel = services.channel_create(
            name=f"ch-{suffix}",
            base_url="https://x.example.test/v1",
            secret="s",
            actor="test",
            models=[f"m-{suffix}", "sim-small"],
        )
        UsageEvent.objects.create(
            request_id=f"req-{suffix}",
            created_at=timezone.now(),
            tenant=org,
            api_key=other_key,
            model="sim-small",
            channel=other_channel,
            status_code=200,
            total_latency_ms=1,
        )


def test_changelists_make_a_fixed_number_of_queries(
    operator_client: Client, populated: Any, tenant_org: Organization
) -> None:
    """Each list page costs the same whether it shows a few rows or many."""
    models = [m for m in admin.site._registry if m._meta.app_label in {"portal", "billing"}]

    def query_counts() -> dict[str, int]:
        counts = {}
        for model in models:
            with CaptureQueriesContext(connection) as queries:
                assert operator_client.get(admin_url(model, "changelist")).status_code == 200
            counts[model.__name__] = len(queries)
        return counts

    add_rows(tenant_org, populated["key"], populated["channel"], 1)
    few = query_counts()
    add_rows(tenant_org, populated["key"], populated["channel"], 4)
    assert query_counts() == few


@pytest.mark.parametrize("persona", ["tenant_owner", "tenant_member", "reseller_admin", "outsider"])
def test_people_without_staff_status_are_sent_to_login(
    request: pytest.FixtureRequest, client: Client, populated: Any, persona: str
) -> None:
    client.force_login(request.getfixturevalue(persona))

    response = client.get(admin_url(ApiKey, "changelist"))

    assert response.status_code == 302
    assert reverse("admin:login") in response["Location"]


def test_read_only_logs_cannot_be_edited(operator_client: Client, populated: Any) -> None:
    for model in (AuditEntry, UsageEvent):
        obj = model._default_manager.first()
        assert operator_client.get(admin_url(model, "add")).status_code == 403
        assert operator_client.get(admin_url(model, "delete", obj.pk)).status_code == 403
        page = operator_client.get(admin_url(model, "change", obj.pk)).content.decode()
        assert 'name="_save"' not in page


def test_adding_an_organisation_is_validated_and_audited(
    operator_client: Client, operator_user: Any, platform_org: Organization
) -> None:
    url = admin_url(Organization, "add")
    form = {
        "name": "Acme",
        "slug": "acme",
        "parent": platform_org.pk,
        "is_active": "on",
        "memberships-TOTAL_FORMS": 0,
        "memberships-INITIAL_FORMS": 0,
    }

    missing_kind = operator_client.post(url, {**form, "kind": ""})
    platform_child_of_platform = operator_client.post(url, {**form, "kind": "platform"})
    created = operator_client.post(url, {**form, "kind": "reseller"})

    assert missing_kind.status_code == 200
    assert "This field is required" in missing_kind.content.decode()
    assert platform_child_of_platform.status_code == 200
    assert created.status_code == 302
    acme = Organization.objects.get(slug="acme")
    entry = AuditEntry.objects.get(action="organization.create")
    assert (entry.organization, entry.actor) == (acme, operator_user)


def test_only_a_tenant_takes_limits_and_only_known_channel_groups(
    operator_client: Client, tenant_org: Organization, reseller_org: Organization, channel: Channel
) -> None:
    def change(org: Organization, **fields: str) -> str:
        form = {
            "name": org.name,
            "slug": org.slug,
            "is_active": "on",
            "memberships-TOTAL_FORMS": 0,
            "memberships-INITIAL_FORMS": 0,
            **fields,
        }
        response = operator_client.post(admin_url(Organization, "change", org.pk), form)
        return "saved" if response.status_code == 302 else response.content.decode()

    assert "No channel is in the group: premuim" in change(tenant_org, channel_groups="premuim")
    assert "Not a group name: a b" in change(tenant_org, channel_groups="default, a b")
    assert "Only a tenant has limits" in change(reseller_org, tpm_limit="1000")
    assert "Only a tenant has limits" in change(reseller_org, channel_groups="default")
    assert "greater than or equal to 1" in change(reseller_org, rpm_limit="0")
    assert "greater than or equal to 1" in change(tenant_org, rpm_limit="0")
    for org in (tenant_org, reseller_org):
        org.refresh_from_db()
        assert (org.channel_groups, org.tpm_limit) == ([], None)

    assert change(tenant_org, channel_groups=" default, default,", tpm_limit="1000") == "saved"
    tenant_org.refresh_from_db()
    assert (tenant_org.channel_groups, tenant_org.tpm_limit) == (["default"], 1000)
    page = operator_client.get(admin_url(Organization, "change", tenant_org.pk)).content.decode()
    assert 'name="channel_groups" value="default"' in page
    assert change(tenant_org, channel_groups="") == "saved"  # blank: every group again
    tenant_org.refresh_from_db()
    assert (tenant_org.channel_groups, tenant_org.tpm_limit) == ([], None)


# --- API keys -------------------------------------------------------------------------------


def test_adding_a_key_shows_the_secret_once_and_stores_a_digest(
    operator_client: Client, operator_user: Any, tenant_org: Organization
) -> None:
    response = operator_client.post(
        admin_url(ApiKey, "add"),
        {
            "tenant": tenant_org.pk,
            "name": "from admin",
            "expires_at_0": "",
            "expires_at_1": "",
            "allowed_models": "",
        },
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "API key created" in page
    (secret,) = set(SECRET_RE.findall(page))
    assert "no-store" in response["Cache-Control"]
    assert not response.cookies.get("messages")  # not parked in a cookie either

    key = ApiKey.objects.get()
    assert key.digest == crypto.api_key_digest(secret)
    assert key.matches(secret)
    assert key.created_by == operator_user
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM portal_apikey WHERE id = %s", [key.pk])
        assert not any(secret in str(value) for value in cursor.fetchone())
    assert AuditEntry.objects.get(action="api_key.create").actor == operator_user

    for url in (admin_url(ApiKey, "change", key.pk), admin_url(ApiKey, "changelist")):
        later = operator_client.get(url).content.decode()
        assert secret not in later
        assert key.digest not in later
        assert key.prefix in later


def test_adding_a_key_refuses_unknown_models_and_non_tenants(
    operator_client: Client, tenant_org: Organization, reseller_org: Organization
) -> None:
    base = {"name": "x", "expires_at_0": "", "expires_at_1": ""}

    unknown = operator_client.post(
        admin_url(ApiKey, "add"), {**base, "tenant": tenant_org.pk, "allowed_models": "nope"}
    )
    reseller = operator_client.post(
        admin_url(ApiKey, "add"), {**base, "tenant": reseller_org.pk, "allowed_models": ""}
    )

    assert "Not in the model catalog: nope" in unknown.content.decode()
    assert reseller.status_code == 200 and "Select a valid choice" in reseller.content.decode()
    assert not ApiKey.objects.exists()


def test_editing_a_key_is_audited(operator_client: Client, populated: Any) -> None:
    key = populated["key"]

    response = operator_client.post(
        admin_url(ApiKey, "change", key.pk),
        {"name": "renamed", "expires_at_0": "", "expires_at_1": "", "allowed_models": "sim-small"},
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.name, key.allowed_models) == ("renamed", ["sim-small"])
    entry = AuditEntry.objects.get(action="api_key.update")
    assert entry.data["changed"] == {"name": "renamed", "allowed_models": ["sim-small"]}


def test_revoke_action(operator_client: Client, operator_user: Any, populated: Any) -> None:
    key = populated["key"]

    response = operator_client.post(
        admin_url(ApiKey, "changelist"),
        {"action": "revoke_selected", "_selected_action": [key.pk]},
    )

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.status == ApiKey.Status.REVOKED
    assert AuditEntry.objects.get(action="api_key.revoke").actor == operator_user
    # A revoked key is view-only from then on.
    page = operator_client.get(admin_url(ApiKey, "change", key.pk)).content.decode()
    assert 'name="_save"' not in page


def test_keys_cannot_be_deleted(operator_client: Client, populated: Any) -> None:
    key = populated["key"]
    assert operator_client.get(admin_url(ApiKey, "delete", key.pk)).status_code == 403


# --- Channels -------------------------------------------------------------------------------


def channel_form(channel: Channel, **fields: Any) -> dict[str, Any]:
    link = channel.served.get()
    return {
        "name": channel.name,
        "provider_type": channel.provider_type,
        "base_url": channel.base_url,
        "priority": channel.priority,
        "weight": channel.weight,
        "group": channel.group,
        "status": channel.status,
        "status_reason": channel.status_reason,
        "connect_timeout": "",
        "first_byte_timeout": "",
        "total_timeout": "",
        "secret": "",
        "served-TOTAL_FORMS": 1,
        "served-INITIAL_FORMS": 1,
        "served-MIN_NUM_FORMS": 0,
        "served-MAX_NUM_FORMS": 1000,
        "served-0-id": link.pk,
        "served-0-channel": channel.pk,
        "served-0-model": link.model_id,
        "served-0-upstream_name": link.upstream_name,
        **fields,
    }


def test_channel_pages_never_show_the_secret(operator_client: Client, channel: Channel) -> None:
    ciphertext = Channel.objects.get(pk=channel.pk).secret_ciphertext

    for url in (admin_url(Channel, "change", channel.pk), admin_url(Channel, "changelist")):
        page = operator_client.get(url).content.decode()
        assert UPSTREAM_SECRET not in page
        assert ciphertext not in page
    change_page = operator_client.get(admin_url(Channel, "change", channel.pk)).content.decode()
    assert 'type="password"' in change_page
    assert "set (encrypted)" in change_page


def test_blank_secret_keeps_the_current_one(operator_client: Client, channel: Channel) -> None:
    response = operator_client.post(
        admin_url(Channel, "change", channel.pk), channel_form(channel, priority=7)
    )

    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.priority == 7
    assert channel.secret == UPSTREAM_SECRET
    entry = AuditEntry.objects.get(action="channel.update")
    assert entry.data["changed"] == {"priority": 7}


def test_typed_secret_replaces_it_and_is_not_logged(
    operator_client: Client, channel: Channel
) -> None:
    new_secret = "sk-upstream-rotated-77c1"

    response = operator_client.post(
        admin_url(Channel, "change", channel.pk), channel_form(channel, secret=new_secret)
    )

    assert response.status_code == 302
    channel.refresh_from_db()
    assert channel.secret == new_secret
    assert new_secret not in channel.secret_ciphertext
    entry = AuditEntry.objects.get(action="channel.update")
    assert entry.data["changed"] == {"secret": "[redacted]"}
    log = str(list(AuditEntry.objects.values())) + str(list(LogEntry.objects.values()))
    assert new_secret not in log
    page = operator_client.get(admin_url(Channel, "change", channel.pk)).content.decode()
    assert new_secret not in page


def test_add_channel_with_models_through_admin(operator_client: Client, channel: Channel) -> None:
    model_id = channel.served.get().model_id

    response = operator_client.post(
        admin_url(Channel, "add"),
        {
            "name": "backup",
            "provider_type": "openai",
            "base_url": "https://backup.example.test/v1",
            "priority": 0,
            "weight": 1,
            "group": "default",
            "status": "enabled",
            "status_reason": "",
            "secret": "sk-backup-1",
            "served-TOTAL_FORMS": 1,
            "served-INITIAL_FORMS": 0,
            "served-MIN_NUM_FORMS": 0,
            "served-MAX_NUM_FORMS": 1000,
            "served-0-model": model_id,
            "served-0-upstream_name": "backup-small",
        },
    )

    assert response.status_code == 302
    backup = Channel.objects.get(name="backup")
    assert backup.secret == "sk-backup-1"
    assert backup.served.get().upstream_model() == "backup-small"
    actions = list(
        AuditEntry.objects.filter(target_id=str(backup.pk), target_type="portal.channel")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["channel.create", "channel.update"]  # the channel, then its models


def test_disable_and_enable_actions(operator_client: Client, channel: Channel) -> None:
    url = admin_url(Channel, "changelist")

    operator_client.post(url, {"action": "disable_selected", "_selected_action": [channel.pk]})
    channel.refresh_from_db()
    assert channel.status == Channel.Status.DISABLED
    assert "in admin" in channel.status_reason

    operator_client.post(url, {"action": "enable_selected", "_selected_action": [channel.pk]})
    channel.refresh_from_db()
    assert (channel.status, channel.status_reason) == (Channel.Status.ENABLED, "")
    assert AuditEntry.objects.filter(action__in=["channel.disable", "channel.enable"]).count() == 2
