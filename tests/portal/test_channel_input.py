"""Channel secrets and base URLs are checked on every way in (issue 11, #3 and 8c).

One check each, used by the REST API, the dashboard's form, the admin and the services
(through the model's ``clean``): a secret sent as an HTTP header is printable ASCII
without spaces (JSON secrets are checked field by field); a base URL is printable ASCII
that httpx can parse. Errors never repeat the value.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from portal import services
from portal.models import Channel
from portal.models.channels import validate_upstream_url
from portal.models.provider_settings import check_secret

pytestmark = pytest.mark.django_db

BAD_SECRETS = [
    "sk-pasted\u00a0secret",
    "sk-line\nbreak",
    "sk-cr\rlf",
    "sk with space",
    "sk-\u00e9t\u00e9",
    "sk-nul\x00x",
    "sk-" + "x" * 5000,
]
GOOD_SECRETS = ["", "sk-proj-AbC_123-xyz.~+/=", "AIzaSyD-abc"]
BAD_URLS = [
    "http://exa mple.test/v1",
    "http://127.0.0.1:99999/v1",
    "http://[::1/v1",
    "https://h\u00f6st.test/v1",
    "http://host.test/v\u00e9",
    "ftp://files.test/v1",
    "http:///v1",
    "http://host.test/v1?x=1",
    "http://host.test/v1\n",
]
GOOD_URLS = ["https://api.openai.com/v1", "http://llm:8000/v1", "http://[::1]:9100/sim/v1"]


@pytest.mark.parametrize("secret", BAD_SECRETS)
def test_bad_secrets_are_refused_without_being_repeated(secret: str) -> None:
    for provider in ("openai", "anthropic", "gemini", "azure"):
        with pytest.raises(ValidationError) as refused:
            check_secret(provider, secret)
        assert secret not in str(refused.value)
        assert "secret" in refused.value.message_dict
    # Inside a JSON secret, as JSON escapes it: still refused.
    escaped = json.dumps(secret)
    with pytest.raises(ValidationError):
        check_secret("bedrock", f'{{"access_key_id": {escaped}, "secret_access_key": "x"}}')


@pytest.mark.parametrize("secret", GOOD_SECRETS)
def test_good_secrets_pass(secret: str) -> None:
    check_secret("openai", secret)


def test_json_secrets_keep_their_spaces_and_line_breaks() -> None:
    check_secret("bedrock", '{\n  "access_key_id": "AKIA1",\n  "secret_access_key": "s/k+1"\n}')


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ValidationError):
        validate_upstream_url(url)


@pytest.mark.parametrize("url", GOOD_URLS)
def test_good_base_urls_pass(url: str) -> None:
    validate_upstream_url(url)


def _channel() -> Channel:
    return services.channel_create(
        name="c", base_url="http://u.test/v1", secret="sk-good", models=["m"], actor="test"
    )


def test_the_services_refuse_a_bad_secret() -> None:
    with pytest.raises(ValidationError) as refused:
        services.channel_create(
            name="c", base_url="http://u.test/v1", secret="sk-a\u00a0b", models=[], actor="t"
        )
    assert "secret" in refused.value.message_dict
    channel = _channel()
    with pytest.raises(ValidationError):
        services.channel_update_secret(channel=channel, secret="sk-a\nb", actor="test")
    channel.refresh_from_db()
    assert channel.secret == "sk-good"
    with pytest.raises(ValidationError):
        services.channel_update(channel=channel, base_url="http://a b/v1", actor="test")


def test_the_api_refuses_a_bad_secret_and_url_with_a_400(operator_user: Any) -> None:
    channel = _channel()
    api = APIClient()
    api.force_authenticate(operator_user)
    patched = api.patch(
        f"/api/channels/{channel.pk}/", {"secret": "sk-pasted\u00a0secret"}, format="json"
    )
    assert patched.status_code == 400
    assert "secret" in patched.json()
    assert "sk-pasted" not in patched.content.decode()
    created = api.post(
        "/api/channels/",
        {"name": "d", "base_url": "http://exa mple/v1", "secret": "sk-ok", "models": []},
        format="json",
    )
    assert created.status_code == 400
    assert "base_url" in created.json()
    channel.refresh_from_db()
    assert channel.secret == "sk-good"


def test_the_dashboard_form_refuses_a_bad_secret(operator_user: Any, client: Any) -> None:
    client.force_login(operator_user)
    page = client.post(
        reverse("channel_create"),
        {
            "name": "d",
            "provider_type": "openai",
            "base_url": "http://u.test/v1",
            "secret": "sk-a\u00a0b",
            "priority": 0,
            "weight": 1,
            "models": "m",
        },
    )
    assert page.status_code == 400  # the form again, with the error
    assert "printable ASCII" in page.content.decode()
    assert not Channel.objects.filter(name="d").exists()


def test_the_admin_refuses_a_bad_secret(operator_user: Any, client: Any) -> None:
    channel = _channel()
    operator_user.is_superuser = True
    operator_user.save()
    client.force_login(operator_user)
    url = reverse("admin:portal_channel_change", args=[channel.pk])
    page = client.post(
        url,
        {
            "name": "c",
            "provider_type": "openai",
            "base_url": "http://u.test/v1",
            "priority": 0,
            "weight": 1,
            "status": "enabled",
            "status_reason": "",
            "secret": "sk-a\nb",
            "served-TOTAL_FORMS": "0",
            "served-INITIAL_FORMS": "0",
        },
    )
    assert page.status_code == 200
    assert "printable ASCII" in page.content.decode()
    channel.refresh_from_db()
    assert channel.secret == "sk-good"


def test_a_secret_with_a_newline_never_reaches_the_last_error(settings: Any) -> None:
    """8c: written straight into the row, the secret reaches a health check; what the
    check stores and the pages show has no piece of it."""
    from relay import health

    channel = _channel()
    Channel.objects.filter(pk=channel.pk).update(
        secret_ciphertext=Channel(secret="sk-first-half\nsecond-half").secret_ciphertext
    )
    channel.refresh_from_db()
    services.channel_check_record(
        channel=channel,
        ok=False,
        latency_ms=1,
        error="LocalProtocolError: Illegal header value b'Bearer sk-first-half\\nsecond-half'",
    )
    channel.refresh_from_db()
    assert "first-half" not in channel.last_check_error
    assert "second-half" not in channel.last_check_error
    assert "[redacted]" in channel.last_check_error
    result = health.channel_check(channel)
    assert result.ok is False
    channel.refresh_from_db()
    assert "half" not in channel.last_check_error
    services.channel_set_status(
        channel=channel, enabled=False, reason="refused sk-first-half\nsecond-half", actor="t"
    )
    channel.refresh_from_db()
    assert "half" not in channel.status_reason
