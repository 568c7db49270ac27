"""Optional TOTP two-factor for staff: enrol by scanning (or typing) the key, confirm with
a code, then every new session asks for one. Codes here are computed from the key the
page shows, with RFC 6238 written out, as an authenticator app would."""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from base64 import b32decode
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.contrib.auth.hashers import make_password
from django.test import Client
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.models import AuditEntry
from tests.console.conftest import client_for

pytestmark = pytest.mark.django_db

PASSWORD = "two factor test pass 2026"
START = datetime(2026, 11, 23, 9, 0, 10, tzinfo=UTC)


def totp(secret_b32: str, at: datetime, *, step: int = 30, digits: int = 6) -> str:
    """RFC 6238 (HMAC-SHA1), the algorithm authenticator apps use."""
    key = b32decode(secret_b32.replace(" ", ""))
    counter = int(at.timestamp()) // step
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    code = (struct.unpack(">I", digest[offset : offset + 4])[0] & 0x7FFFFFFF) % 10**digits
    return f"{code:0{digits}d}"


def enrol(page: Client) -> str:
    """Start enrolment, read the key off the page, confirm with its current code."""
    html = page.post(reverse("two_factor_setup"), {"action": "start"}).content.decode()
    assert "<svg" in html  # the QR code, inline
    secret = re.search(r'aria-label="Two-factor key">([A-Z2-7 ]+)</code>', html)
    assert secret is not None
    response = page.post(
        reverse("two_factor_setup"),
        {"action": "confirm", "token": totp(secret[1], datetime.now(UTC))},
    )
    assert response.status_code == 302
    return secret[1]


@pytest.fixture
def clock() -> Any:
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


def test_enrolment_needs_a_right_code(operator_user: Any, clock: Any) -> None:
    page = client_for(operator_user)
    assert "Set up two-factor" in page.get(reverse("two_factor_setup")).content.decode()
    html = page.post(reverse("two_factor_setup"), {"action": "start"}).content.decode()
    secret = re.search(r'aria-label="Two-factor key">([A-Z2-7 ]+)</code>', html)[1]
    wrong = page.post(reverse("two_factor_setup"), {"action": "confirm", "token": "000000"})
    assert wrong.status_code == 400 and "This code is not right." in wrong.content.decode()
    assert not TOTPDevice.objects.filter(confirmed=True).exists()
    clock.shift(timedelta(seconds=31))  # the throttle waits after a failure
    right = page.post(
        reverse("two_factor_setup"),
        {"action": "confirm", "token": totp(secret, datetime.now(UTC))},
    )
    assert right.status_code == 302
    device = TOTPDevice.objects.get(user=operator_user)
    assert device.confirmed
    entry = AuditEntry.objects.get(action="two_factor.enrol")
    assert entry.actor == operator_user and device.key not in str(entry.data)
    # The enrolling session proved itself and goes on working.
    assert page.get(reverse("operator")).status_code == 200


def test_sign_in_asks_enrolled_staff_for_a_code(
    operator_user: Any, settings: Any, clock: Any
) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    operator_user.password = make_password(PASSWORD)
    operator_user.save()
    secret = enrol(client_for(operator_user))
    clock.shift(timedelta(seconds=60))

    browser = Client()
    signed_in = browser.post(reverse("login"), {"username": "operator", "password": PASSWORD})
    assert signed_in.status_code == 302
    # Nothing opens before the code: dashboard, admin, session API.
    blocked = browser.get(reverse("operator"))
    assert blocked.status_code == 302
    assert blocked["Location"] == f"{reverse('two_factor_verify')}?next=%2Foperator%2F"
    assert browser.get("/admin/").status_code == 302
    assert browser.get("/api/me/").status_code == 403

    verify = reverse("two_factor_verify")
    wrong = browser.post(verify, {"token": "123456", "next": "/operator/"})
    assert wrong.status_code == 400
    clock.shift(timedelta(seconds=31))
    code = totp(secret, datetime.now(UTC))
    right = browser.post(verify, {"token": code, "next": "/operator/"})
    assert right.status_code == 302 and right["Location"] == "/operator/"
    assert browser.get(reverse("operator")).status_code == 200
    assert browser.get("/api/me/").status_code == 200
    # A code works once: replaying it in another session fails.
    replay = Client()
    replay.post(reverse("login"), {"username": "operator", "password": PASSWORD})
    clock.shift(timedelta(seconds=1))
    assert replay.post(verify, {"token": code}).status_code == 400


def test_verify_refuses_to_redirect_elsewhere(operator_user: Any, clock: Any) -> None:
    page = client_for(operator_user)
    secret = enrol(page)
    fresh = client_for(operator_user)  # a new session: not verified
    clock.shift(timedelta(seconds=31))
    response = fresh.post(
        reverse("two_factor_verify"),
        {"token": totp(secret, datetime.now(UTC)), "next": "https://evil.example/"},
    )
    assert response.status_code == 302 and response["Location"] == "/"


def test_removing_two_factor_needs_a_code(operator_user: Any, clock: Any) -> None:
    page = client_for(operator_user)
    secret = enrol(page)
    clock.shift(timedelta(seconds=31))
    assert (
        page.post(reverse("two_factor_setup"), {"action": "remove", "token": "000000"})
    ).status_code == 400
    assert TOTPDevice.objects.filter(user=operator_user).exists()
    clock.shift(timedelta(seconds=31))
    response = page.post(
        reverse("two_factor_setup"),
        {"action": "remove", "token": totp(secret, datetime.now(UTC))},
    )
    assert response.status_code == 302
    assert not TOTPDevice.objects.filter(user=operator_user).exists()
    assert AuditEntry.objects.filter(action="two_factor.remove").count() == 1
    # Sessions no longer ask for a code.
    assert client_for(operator_user).get(reverse("operator")).status_code == 200


def test_two_factor_is_for_staff_and_others_are_not_asked(
    tenant_owner: Any, operator_user: Any
) -> None:
    assert client_for(tenant_owner).get(reverse("two_factor_setup")).status_code == 403
    assert client_for(tenant_owner).get(reverse("keys", args=["tenant"])).status_code == 200
    # Staff who never enrolled are not asked either.
    assert client_for(operator_user).get(reverse("operator")).status_code == 200
