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

# Loaded only by what needs them; each cost commands (and the relay's workers) a share of
# the ~2.5 s CPU that Django's start took before:
ALWAYS_DEFERRED = (
    "fpdf",  # PDFs (with fontTools under it)
    "fontTools",
    "drf_spectacular.generators",  # the API schema: its generator and views
    "drf_spectacular.views",
    "celery",  # the worker and beat load config.celery_app; senders, portal.background
    "kombu",
    "botocore",  # Bedrock channels' signing and stream framing
    "google.auth",  # Vertex channels' tokens
    "redis",  # the relay's shared state (relay.shared), health checks, plan windows
    "relay.health",
    "relay.shared",
    "httpx",  # upstream calls, webhooks, SSO discovery
    "stripe",  # payments
    "prometheus_client",  # the relay's /metrics
)
# A command that loads the URLconf (check, migrate, runserver) loads the API's views and so
# Django REST framework; the others do not.
WITHOUT_URLCONF = ("rest_framework.views", "rest_framework.serializers", "requests")
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
ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(argv: list[str], heavy: tuple[str, ...]) -> list[str]:
    """Which of ``heavy`` a fresh interpreter has imported after running ``argv``."""
    script = IMPORTS_AFTER.format(heavy=repr(heavy))
    done = subprocess.run(  # noqa: S603 - this interpreter and the project's manage.py
        [sys.executable, "-c", script, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.splitlines()[-1]
    assert last.startswith("LOADED"), done.stdout[-500:]
    return last.split()[1:]


@pytest.mark.parametrize(
    "argv",
    [
        ["manage.py", "help"],
        ["manage.py", "create_tenant", "--help"],
        ["manage.py", "create_user", "--help"],
        ["manage.py", "create_channel", "--help"],
    ],
)
def test_commands_start_without_heavy_libraries(argv: list[str]) -> None:
    """fpdf2 took most of each command's 5 s start; then the Celery app, the relay's health
    checks (Redis, botocore, google-auth) and httpx took most of the 2.5 s left."""
    assert _loaded_after(argv, ALWAYS_DEFERRED + WITHOUT_URLCONF) == []


def test_check_loads_the_urlconf_without_heavy_libraries() -> None:
    """check loads the URLconf and so every view module, as migrate and runserver do: the
    views import what they call (health checks, Stripe, plan windows) when they call it."""
    assert _loaded_after(["manage.py", "check"], ALWAYS_DEFERRED) == []


def _imported_by(argv: list[str]) -> set[str]:
    """The modules a real ``manage.py`` run imports, read from ``-X importtime``. (It lists
    what ``import`` statements load; a module loaded by ``importlib.import_module`` alone,
    as Django loads each app, is missing, but what that module imports is listed.)"""
    done = subprocess.run(  # noqa: S603 - this interpreter and the project's manage.py
        [sys.executable, "-X", "importtime", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "create_tenant" in done.stdout  # the project's commands were found: setup ran
    return {
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "cumulative" not in line
    }


def test_manage_py_help_imports_no_heavy_library() -> None:
    """The import set of ``manage.py help`` itself, as a user runs it: Django, the project's
    models and admin, and nothing from the relay's or the workers' stacks."""
    imported = _imported_by(["manage.py", "help"])
    assert {"django.contrib.admin.sites", "portal.models.keys", "console.admin.base"} <= imported
    unwanted = (
        *ALWAYS_DEFERRED,
        *WITHOUT_URLCONF,
        # The relay's serving path: its app, upstream client and tokenizer.
        "relay.app",
        "relay.upstream",
        "relay.tokens",
        "bpe_openai",
    )
    found = [n for n in imported if any(n == u or n.startswith(u + ".") for u in unwanted)]
    assert sorted(found) == []
