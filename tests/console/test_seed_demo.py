"""``seed_demo``: the idempotent demo seed a newcomer runs first."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from billing.pricing import tenant_price_table
from portal import services
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
    assert served == {"sim-small": "sim-small", "sim-large": "sim-large", "sim-embed": "sim-embed"}
    # The simulator serves Responses and Messages itself; sim-embed is an embedding model.
    assert channel.native_surfaces == ["responses", "messages"]
    assert CatalogModel.objects.get(public_id="sim-embed").surfaces == ["embeddings"]
    assert AuditEntry.objects.filter(actor_label="cli:seed_demo").exists()
    # Both models are priced for the demo tenant, so the relay will serve them.
    prices = tenant_price_table(tenant.pk)
    assert set(prices) == {"sim-small", "sim-large", "sim-embed"}
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
