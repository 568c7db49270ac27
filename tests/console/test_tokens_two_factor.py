"""Personal access tokens respect two-factor: a person with a confirmed device gets a token
only from a session that entered its code, on the dashboard and on the API alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine
from django.core.exceptions import PermissionDenied
from django.urls import reverse
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal import tokens
from portal.models import AuditEntry, PersonalAccessToken
from tests.console.conftest import api_client_for, client_for
from tests.console.test_views_two_factor import enrol, totp

pytestmark = pytest.mark.django_db

FORM = {"name": "export", "scope": "read", "expires_in": "30"}


def test_service_refuses_an_unverified_session_when_two_factor_is_on(tenant_owner: Any) -> None:
    TOTPDevice.objects.create(user=tenant_owner, name="app", confirmed=True)
    with pytest.raises(PermissionDenied):
        tokens.personal_access_token_create(user=tenant_owner, name="t", actor=tenant_owner)
    assert not PersonalAccessToken.objects.exists()
    assert not AuditEntry.objects.filter(action="access_token.create").exists()
    tokens.personal_access_token_create(
        user=tenant_owner, name="t", actor=tenant_owner, two_factor_verified=True
    )
    assert PersonalAccessToken.objects.count() == 1


def test_people_without_two_factor_create_tokens_as_before(tenant_owner: Any) -> None:
    assert client_for(tenant_owner).post(reverse("account_tokens"), FORM).status_code == 200
    response = api_client_for(tenant_owner).post("/api/tokens/", {"name": "x"}, format="json")
    assert response.status_code == 201
    assert PersonalAccessToken.objects.count() == 2


def test_a_session_without_the_code_cannot_mint_a_token(tenant_owner: Any) -> None:
    # Someone who kept a device (e.g. staff before, or enrolled by an operator) and whose
    # session never entered a code: the page and the API both refuse.
    TOTPDevice.objects.create(user=tenant_owner, name="app", confirmed=True)
    assert client_for(tenant_owner).post(reverse("account_tokens"), FORM).status_code == 403
    api = api_client_for(tenant_owner).post("/api/tokens/", {"name": "x"}, format="json")
    assert api.status_code == 403
    assert not PersonalAccessToken.objects.exists()


def test_a_verified_staff_session_creates_tokens(operator_user: Any) -> None:
    page = client_for(operator_user)
    enrol(page)  # confirming the device verifies this session
    assert page.post(reverse("account_tokens"), FORM).status_code == 200
    assert PersonalAccessToken.objects.filter(user=operator_user).count() == 1


def test_a_staff_session_verified_by_code_uses_the_api(operator_user: Any) -> None:
    start = datetime(2026, 11, 23, 9, 0, 10, tzinfo=UTC)
    with time_machine.travel(start, tick=False) as clock:
        secret = enrol(client_for(operator_user))
        clock.shift(timedelta(seconds=60))  # a code is good once: wait for the next
        api = api_client_for(operator_user)  # a new session: not verified yet
        assert api.post("/api/tokens/", {"name": "x"}, format="json").status_code == 403
        code = totp(secret, datetime.now(UTC))
        assert api.post(reverse("two_factor_verify"), {"token": code}).status_code == 302
        assert api.post("/api/tokens/", {"name": "x"}, format="json").status_code == 201
