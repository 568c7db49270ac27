"""Operator commands: tenants, keys, channels, and the idempotent demo seed."""

from __future__ import annotations

import io
import stat
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.utils import timezone

from billing.pricing import tenant_price_table
from portal import crypto, services
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
    ChannelModel,
    Membership,
    Organization,
)

pytestmark = pytest.mark.django_db


def run(name: str, *args: str) -> tuple[str, str]:
    """Run a command; return (stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# --- create_tenant --------------------------------------------------------------------------


def test_create_tenant_creates_the_platform_when_missing() -> None:
    out, _ = run("create_tenant", "--name", "Acme Corp")

    assert out.strip() == "acme-corp"
    tenant = Organization.objects.get(slug="acme-corp")
    assert tenant.kind == Organization.Kind.TENANT
    assert tenant.parent.slug == "platform"
    assert tenant.parent.kind == Organization.Kind.PLATFORM
    assert AuditEntry.objects.filter(action="organization.create").count() == 2
    assert AuditEntry.objects.filter(actor_label="cli:create_tenant").count() == 2


def test_create_tenant_under_a_reseller(platform_org: Organization) -> None:
    reseller_slug = run("create_tenant", "--name", "Big Reseller", "--reseller")[0].strip()
    tenant_slug = run("create_tenant", "--name", "Small Shop", "--parent", reseller_slug)[0].strip()

    reseller = Organization.objects.get(slug=reseller_slug)
    assert reseller.kind == Organization.Kind.RESELLER
    assert reseller.parent == platform_org
    assert Organization.objects.get(slug=tenant_slug).parent == reseller
    assert Organization.objects.filter(kind=Organization.Kind.PLATFORM).count() == 1


def test_create_tenant_refuses_bad_parents(tenant_org: Organization) -> None:
    with pytest.raises(CommandError, match="No organisation"):
        run("create_tenant", "--name", "X", "--parent", "missing")
    with pytest.raises(CommandError, match="cannot sit under"):
        run("create_tenant", "--name", "X", "--parent", tenant_org.slug)


# --- create_api_key -------------------------------------------------------------------------


def test_create_api_key_prints_only_the_secret(tenant_org: Organization) -> None:
    CatalogModel.objects.create(public_id="sim-small")

    out, err = run(
        "create_api_key",
        "--tenant",
        tenant_org.slug,
        "--name",
        "ci",
        "--models",
        "sim-small, sim-large",
        "--expires-days",
        "7",
    )

    secret = out.strip()
    assert out == secret + "\n"
    assert secret.startswith(crypto.API_KEY_PREFIX)
    assert secret not in err
    key = ApiKey.objects.get()
    assert key.matches(secret)
    assert key.tenant == tenant_org
    assert key.allowed_models == ["sim-small", "sim-large"]
    assert timezone.now() + timedelta(days=6) < key.expires_at
    assert "'sim-large' is not in the model catalog" in err
    assert AuditEntry.objects.get(action="api_key.create").actor_label == "cli:create_api_key"


def test_create_api_key_refuses_unknown_or_non_tenant_orgs(reseller_org: Organization) -> None:
    with pytest.raises(CommandError, match="No organisation"):
        run("create_api_key", "--tenant", "missing", "--name", "x")
    with pytest.raises(CommandError, match="only be issued to tenants"):
        run("create_api_key", "--tenant", reseller_org.slug, "--name", "x")
    assert not ApiKey.objects.exists()


# --- create_channel -------------------------------------------------------------------------


def test_create_channel_reads_the_secret_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream_secret = "sk-upstream-from-env-91ab"
    monkeypatch.setenv("TEST_UPSTREAM_KEY", upstream_secret)

    out, err = run(
        "create_channel",
        "--name",
        "openai",
        "--base-url",
        "https://api.example.test/v1",
        "--secret-env",
        "TEST_UPSTREAM_KEY",
        "--models",
        "gpt-4o=gpt-4o-2024-08-06,gpt-4o-mini",
        "--priority",
        "10",
        "--weight",
        "2",
    )

    assert out.strip() == "openai"
    assert upstream_secret not in out + err
    channel = Channel.objects.get()
    assert channel.secret == upstream_secret
    assert (channel.priority, channel.weight) == (10, 2)
    served = {link.model.public_id: link.upstream_model() for link in channel.served.all()}
    assert served == {"gpt-4o": "gpt-4o-2024-08-06", "gpt-4o-mini": "gpt-4o-mini"}


def test_create_channel_with_an_inline_secret() -> None:
    run(
        "create_channel",
        "--name",
        "sim",
        "--base-url",
        "http://127.0.0.1:9100/v1",
        "--secret",
        "inline-secret",
        "--models",
        "sim-small",
    )
    assert Channel.objects.get().secret == "inline-secret"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret-env", "TOLLGATE_TEST_UNSET_VAR", "--models", "a"], "unset or empty"),
        (["--secret", "s", "--models", ",="], "Bad --models entry"),
        (["--secret", "s", "--models", "a,a=b"], "listed twice"),
        (["--secret", "s", "--models", " , "], "at least one"),
    ],
)
def test_create_channel_refuses_bad_input(
    monkeypatch: pytest.MonkeyPatch, args: list[str], message: str
) -> None:
    monkeypatch.delenv("TOLLGATE_TEST_UNSET_VAR", raising=False)
    with pytest.raises(CommandError, match=message):
        run("create_channel", "--name", "x", "--base-url", "http://127.0.0.1:1/v1", *args)
    assert not Channel.objects.exists()


def test_create_channel_refuses_a_duplicate_name() -> None:
    args = ["--base-url", "http://127.0.0.1:1/v1", "--secret", "s", "--models", "a"]
    run("create_channel", "--name", "sim", *args)
    with pytest.raises(CommandError, match="already exists"):
        run("create_channel", "--name", "sim", *args)


# --- seed_demo ------------------------------------------------------------------------------


def counts() -> dict[str, int]:
    return {
        model.__name__: model.objects.count()
        for model in (
            Organization,
            Membership,
            ApiKey,
            Channel,
            ChannelModel,
            CatalogModel,
            get_user_model(),
        )
    }


def active_demo_key(secret: str) -> ApiKey:
    (key,) = [k for k in ApiKey.objects.filter(tenant__slug="demo") if k.matches(secret)]
    assert key.is_usable()
    return key


def test_seed_demo_creates_a_working_setup(tmp_path: Path) -> None:
    key_file = tmp_path / "var" / "demo-key.txt"

    out, _ = run("seed_demo", "--upstream", "http://127.0.0.1:9100/v1", "--key-file", str(key_file))

    secret = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert active_demo_key(secret).name == "demo"
    assert f"API key:         {secret}" in out
    admin_user = get_user_model().objects.get(username="admin")
    assert admin_user.is_staff and admin_user.is_superuser
    password = out.split("Operator login:  admin / ", 1)[1].split()[0]
    assert admin_user.check_password(password)
    tenant = Organization.objects.get(slug="demo")
    assert (tenant.name, tenant.kind) == ("Demo Tenant", Organization.Kind.TENANT)
    assert tenant.memberships.get().role == Membership.Role.OWNER
    channel = Channel.objects.get(name="Simulator")
    assert channel.base_url == "http://127.0.0.1:9100/v1"
    assert channel.secret  # the simulator wants some bearer token
    served = {link.model.public_id: link.upstream_model() for link in channel.served.all()}
    assert served == {"sim-small": "sim-small", "sim-large": "sim-large"}
    assert AuditEntry.objects.filter(actor_label="cli:seed_demo").exists()
    # Both models are priced for the demo tenant, so the relay will serve them.
    prices = tenant_price_table(tenant.pk)
    assert set(prices) == {"sim-small", "sim-large"}
    assert prices["sim-small"].retail.output == 600_000


def test_seed_demo_twice_changes_nothing(tmp_path: Path) -> None:
    key_file = tmp_path / "demo-key.txt"
    args = ("--upstream", "http://127.0.0.1:9100/v1", "--key-file", str(key_file))
    run("seed_demo", *args)
    before, secret, audit_count = counts(), key_file.read_text(), AuditEntry.objects.count()

    out, _ = run("seed_demo", *args)

    assert counts() == before
    assert key_file.read_text() == secret
    active_demo_key(secret.strip())
    assert "password unchanged" in out
    assert f"API key:         {secret.strip()}" in out
    assert AuditEntry.objects.count() == audit_count


def test_seed_demo_follows_the_upstream_and_replaces_an_unusable_key(tmp_path: Path) -> None:
    key_file = tmp_path / "demo-key.txt"
    run("seed_demo", "--key-file", str(key_file))
    old_secret = key_file.read_text().strip()
    services.api_key_revoke(api_key=active_demo_key(old_secret), actor="test")

    run("seed_demo", "--upstream", "http://127.0.0.1:9200/v1", "--key-file", str(key_file))

    new_secret = key_file.read_text().strip()
    assert new_secret != old_secret
    active_demo_key(new_secret)
    assert ApiKey.objects.count() == 2
    assert Channel.objects.get(name="Simulator").base_url == "http://127.0.0.1:9200/v1"


def test_seed_demo_resets_the_password_when_given(tmp_path: Path) -> None:
    key_file = tmp_path / "demo-key.txt"
    run("seed_demo", "--key-file", str(key_file), "--username", "ops")

    out, _ = run(
        "seed_demo", "--key-file", str(key_file), "--username", "ops", "--password", "new-pass-1"
    )

    assert "Operator login:  ops / new-pass-1" in out
    assert get_user_model().objects.get(username="ops").check_password("new-pass-1")


def test_seed_demo_ignores_a_key_file_with_a_foreign_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "demo-key.txt"
    key_file.write_text("sk-tg-not-a-real-key\n")

    run("seed_demo", "--key-file", str(key_file))

    active_demo_key(key_file.read_text().strip())
