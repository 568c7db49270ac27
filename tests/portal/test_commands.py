"""Operator commands: tenants, keys and channels, and how fast commands start."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from portal import crypto
from portal.models import (
    ApiKey,
    AuditEntry,
    CatalogModel,
    Channel,
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


def test_create_channel_with_native_surfaces() -> None:
    _, err = run(
        "create_channel",
        "--name",
        "compat",
        "--base-url",
        "http://127.0.0.1:9100/v1",
        "--secret",
        "s",
        "--models",
        "a",
        "--native-surfaces",
        " responses, messages,responses ",
    )
    assert Channel.objects.get().native_surfaces == ["responses", "messages"]
    assert "natively: responses, messages" in err
    entry = AuditEntry.objects.get(action="channel.create")
    assert entry.data["native_surfaces"] == ["responses", "messages"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--secret-env", "TOLLGATE_TEST_UNSET_VAR", "--models", "a"], "unset or empty"),
        (["--secret", "s", "--models", "a", "--native-surfaces", "chat"], "A list of: respo"),
        (
            [
                "--secret",
                "s",
                "--models",
                "a",
                "--native-surfaces",
                "messages",
                "--provider-type",
                "anthropic",
            ],
            "OpenAI-compatible channels only",
        ),
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


# --- create_user ----------------------------------------------------------------------------


def test_create_user_with_a_role_and_a_password_option(tenant_org: Organization) -> None:
    from django.contrib.auth import get_user_model

    out, err = run(
        "create_user", "ana@example.test", "--password", "a long pass 2026",
        "--org", "tenant", "--role", "owner",
    )  # fmt: skip
    assert out.strip() == "ana@example.test" and "owner of tenant" in err
    user = get_user_model().objects.get(username="ana@example.test")
    assert user.check_password("a long pass 2026") and not user.is_staff
    assert user.memberships.get().role == "owner"
    assert AuditEntry.objects.filter(action="user.create", actor_label="cli:create_user").exists()


def test_create_user_reads_the_password_from_stdin_and_makes_operators(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.contrib.auth import get_user_model

    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin 2026 pass\n"))
    out, _ = run("create_user", "op@example.test", "--staff", "--username", "op")
    assert out.strip() == "op"
    user = get_user_model().objects.get(username="op")
    assert user.is_staff and user.is_superuser and user.check_password("from stdin 2026 pass")


def test_create_user_refuses_weak_passwords_taken_names_and_unknown_orgs(
    tenant_owner: object,
) -> None:
    with pytest.raises(CommandError, match=r"too short|too common"):
        run("create_user", "weak@example.test", "--password", "abc")
    with pytest.raises(CommandError, match="taken"):
        run("create_user", "x@example.test", "--username", "tenant-owner", "--password", "pw!" * 6)
    with pytest.raises(CommandError, match="No organisation"):
        run("create_user", "y@example.test", "--org", "nope", "--password", "pw!" * 6)


# --- start-up cost --------------------------------------------------------------------------

# Loaded only by what needs them: PDFs, and the API schema (generator and views).
HEAVY_MODULES = ("fpdf", "fontTools", "drf_spectacular.generators", "drf_spectacular.views")
IMPORTS_AFTER = """
import sys
from django.core.management import execute_from_command_line
try:
    execute_from_command_line(sys.argv[1:])
except SystemExit as exit:
    if exit.code:
        raise
print("LOADED", *sorted(name for name in {heavy} if name in sys.modules))
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["manage.py", "help"],
        # check loads the URLconf and so every view module, as migrate and runserver do.
        ["manage.py", "check"],
        ["manage.py", "create_tenant", "--help"],
    ],
)
def test_commands_start_without_the_pdf_library(argv: list[str]) -> None:
    """fpdf2 (and fontTools under it) took most of each command's 5 s start; only making
    a PDF needs it."""
    root = Path(__file__).resolve().parents[2]
    script = IMPORTS_AFTER.format(heavy=repr(HEAVY_MODULES))
    done = subprocess.run(  # noqa: S603 - this interpreter and the project's manage.py
        [sys.executable, "-c", script, *argv],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "LOADED", done.stdout[-500:]
