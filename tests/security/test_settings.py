"""Security headers, cookies and ``manage.py check --deploy`` in a production-like setup.

Settings are read once per process, so the production configurations run in a child
process with their own environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from django.test import Client
from django.urls import reverse

ROOT = Path(__file__).resolve().parents[2]


def production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment docs/operations.md gives for production (bar the services)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "DATABASE_", "REDIS_", "TOLLGATE_", "SECURE_"))
    }
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        TOLLGATE_VAR_DIR=str(tmp_path),
        DEBUG="false",
        SECRET_KEY="prod-" + "k3Y!x9" * 12,
        TOLLGATE_KEY_HMAC_SECRET="hmac-" + "z8" * 20,
        TOLLGATE_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
        ALLOWED_HOSTS="tollgate.example.com",
        CSRF_TRUSTED_ORIGINS="https://tollgate.example.com",
        TOLLGATE_BEHIND_TLS_PROXY="true",
        DATABASE_URL=f"sqlite:///{tmp_path / 'prod.sqlite3'}",
    )
    env.update(extra)
    return env


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


# One child process per configuration: `manage.py check --deploy --fail-level WARNING`'s
# own code path, then requests through the test client.
PROBE = """
import io, json, django
django.setup()
from django.core.management import call_command
from django.core.management.base import SystemCheckError
out = {}
report = io.StringIO()
try:
    call_command("check", deploy=True, fail_level="WARNING", stdout=report, stderr=report)
    out["check"] = [True, report.getvalue()]
except SystemCheckError as exc:
    out["check"] = [False, str(exc)]
from django.test import Client
from django.test.utils import setup_test_environment
setup_test_environment()
call_command("migrate", "auth", verbosity=0)  # only what signing in needs
call_command("migrate", "sessions", verbosity=0)
c = Client(HTTP_HOST="tollgate.example.com")
r = c.get("/account/login/")
out["plain"] = [r.status_code, r.headers.get("Location")]
r = c.get("/account/login/", HTTP_X_FORWARDED_PROTO="https")
out["tls"] = {"status": r.status_code, "headers": dict(r.headers),
              "cookies": {k: dict(v) for k, v in r.cookies.items()}}
from django.contrib.auth import get_user_model
get_user_model().objects.create_user("alice", password="a long Passphrase 42")
c = Client(HTTP_HOST="tollgate.example.com", HTTP_X_FORWARDED_PROTO="https")
r = c.post("/account/login/", {"username": "alice", "password": "a long Passphrase 42"})
out["login"] = [r.status_code, {k: dict(v) for k, v in r.cookies.items()}]
print(json.dumps(out))
"""


def test_production_passes_check_deploy_and_sends_hsts_and_secure_cookies(
    tmp_path: Path,
) -> None:
    result = run(["-c", PROBE], production_env(tmp_path))
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    clean, report = out["check"]
    assert clean and "no issues" in report, report
    status, location = out["plain"]
    assert status == 301 and location == "https://tollgate.example.com/account/login/"
    tls = out["tls"]
    assert tls["status"] == 200
    headers = tls["headers"]
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    csrf = tls["cookies"]["csrftoken"]
    assert csrf["secure"] is True and csrf["samesite"] == "Lax"
    status, cookies = out["login"]
    assert status == 302
    session = cookies["sessionid"]
    assert session["secure"] is True and session["httponly"] is True
    assert session["samesite"] == "Lax"


def test_without_the_proxy_opt_in_check_deploy_fails_and_no_header_is_trusted(
    tmp_path: Path,
) -> None:
    """The same check fails when the TLS settings are left out (it is a real guard), and
    X-Forwarded-Proto is trusted only when the operator says a TLS proxy sets it."""
    env = production_env(tmp_path, TOLLGATE_BEHIND_TLS_PROXY="false")
    result = run(["-c", PROBE], env)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    clean, report = out["check"]
    assert not clean
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in report
    assert out["plain"][0] == 200
    assert "Strict-Transport-Security" not in out["tls"]["headers"]
    assert out["tls"]["cookies"]["csrftoken"]["secure"] == ""


@pytest.mark.django_db
def test_dashboard_pages_carry_csp_and_frame_options(tenant_owner: Any) -> None:
    client = Client()
    client.force_login(tenant_owner)
    for url in (reverse("login"), reverse("org", args=["tenant"]), reverse("models_public")):
        response = client.get(url)
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "script-src 'self'" in policy, url
        assert "object-src 'none'" in policy and "frame-ancestors 'none'" in policy, url
        assert "unsafe-eval" not in policy and "script-src 'self' 'unsafe-inline'" not in policy
        assert response.headers["X-Frame-Options"] == "DENY", url
        assert response.headers["X-Content-Type-Options"] == "nosniff", url
        assert "Strict-Transport-Security" not in response.headers, url  # plain HTTP
