"""No secret leaks: relay keys, access tokens and upstream secrets never appear in a response,
a page, a log line (captured at DEBUG) or an exception report, whatever path is driven.

The world gets recognisable secrets; the test drives the relay (success, streams, bad keys,
an upstream that refuses the channel's credentials and repeats them, provider errors that
echo them, failures), every dashboard page, the API, the admin, and requests that crash
with a secret in hand, then greps everything that came out. Keys are looked up by their
HMAC and compared with ``hmac.compare_digest``, which the last tests check by spying.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core import mail
from django.test import Client
from django.urls import reverse
from django.utils.log import AdminEmailHandler
from rest_framework.test import APIClient

from billing.models import UsageEvent
from portal import crypto, tokens
from portal.models import ApiKey, AuditEntry, CatalogModel, Channel, ChannelModel
from portal.models import PersonalAccessToken as Token
from tests.relay.conftest import Gateway, Simulator, chat_body, usage_events

pytestmark = pytest.mark.django_db(transaction=True)

UPSTREAM = "sk-upstream-GREP-7d1e0c9b44"  # every test channel's secret
NEW_CHANNEL = "sk-upstream-GREP-new-5a0f13"  # typed into forms that then crash
CRASH_LOCAL = "sk-upstream-GREP-local-e2c4"  # held in a local variable when a view crashes


class Captured(logging.Handler):
    """Every log record of every logger, formatted with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def logs() -> Iterator[Captured]:
    handler = Captured()
    root = logging.getLogger()
    names = ["", "httpx", "httpcore", "relay", "portal", "billing", "django", "uvicorn"]
    levels = {name: logging.getLogger(name).level for name in names}
    root.addHandler(handler)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


@pytest.fixture
def world(gateway: Gateway, sim: Simulator, operator_user: Any, tenant_owner: Any) -> Any:
    """The gateway's channel and one channel per failure mode, all with UPSTREAM as secret;
    simulator prefixes without ``key=`` so no secret sits in a URL."""
    gateway.channel.base_url = f"{sim.base_url}/sim/echo_key/v1"
    gateway.channel.secret = UPSTREAM
    gateway.channel.save()
    modes = {
        "m-refused": "key=another-key,echo_key",  # 401: the provider refuses our secret
        "m-bad-request": "fail=400,echo_key",  # a provider 4xx, passed on (redacted)
        "m-failing": "fail=500,echo_key",
        "m-bad-json": "bad_json",
        "m-error-body": "error_body",
        "m-broken-stream": "bad_sse",
    }
    for public_id, options in modes.items():
        model = CatalogModel.objects.create(public_id=public_id, owned_by="tollgate")
        channel = Channel(name=public_id, base_url=f"{sim.base_url}/sim/{options}/v1")
        channel.secret = UPSTREAM
        channel.save()
        ChannelModel.objects.create(channel=channel, model=model, upstream_name="sim-upstream")
        gateway.price(model)
    down = CatalogModel.objects.create(public_id="m-down", owned_by="tollgate")
    closed = Channel(name="m-down", base_url="http://127.0.0.1:9/v1")
    closed.secret = UPSTREAM
    closed.save()
    ChannelModel.objects.create(channel=closed, model=down)
    gateway.price(down)
    ApiKey.objects.filter(pk=gateway.api_key.pk).update(created_by=tenant_owner)
    _, pat = tokens.personal_access_token_create(
        user=operator_user, name="grep", scope=Token.Scope.READ_WRITE, actor=operator_user
    )
    _, owner_pat = tokens.personal_access_token_create(
        user=tenant_owner, name="grep-owner", actor=tenant_owner
    )
    return {
        "gateway": gateway,
        "pat": pat,
        "owner_pat": owner_pat,
        "secrets": [UPSTREAM, NEW_CHANNEL, CRASH_LOCAL, gateway.secret, pat, owner_pat],
        "digests": list(ApiKey.objects.values_list("digest", flat=True))
        + list(Token.objects.values_list("digest", flat=True)),
    }


def grep(world: Any, texts: dict[str, str]) -> list[str]:
    """Secrets found anywhere; digests anywhere but in SQL debug logs (DEBUG mode logs
    every query with its parameters, and a digest is what a key lookup queries by)."""
    found = []
    for where, text in texts.items():
        for secret in world["secrets"]:
            if secret in text:
                found.append(f"{secret[:18]}… in {where}")
        if where == "sql logs":
            continue
        for digest in world["digests"]:
            if digest in text:
                line = next(x for x in text.splitlines() if digest in x)
                found.append(f"a key digest in {where}: {line[:150]}")
    return found


def drive_relay(world: Any) -> dict[str, str]:
    gateway: Gateway = world["gateway"]
    client = gateway.client
    out: dict[str, str] = {}

    def keep(name: str, response: httpx.Response) -> httpx.Response:
        out[name] = f"{response.status_code} {dict(response.headers)} {response.text}"
        return response

    assert keep("chat", client.post("/v1/chat/completions", json=chat_body())).status_code == 200
    stream = keep("stream", client.post("/v1/chat/completions", json=chat_body(stream=True)))
    assert stream.status_code == 200
    keep("models", client.get("/v1/models"))
    keep("model", client.get("/v1/models/tollgate-chat"))
    for model in (
        "m-refused",
        "m-bad-request",
        "m-failing",
        "m-bad-json",
        "m-error-body",
        "m-down",
    ):
        response = keep(model, client.post("/v1/chat/completions", json=chat_body(model=model)))
        assert response.status_code >= 400, model
    assert "you sent" in out["m-bad-request"]  # the provider's message came through, scrubbed
    keep(
        "broken stream",
        client.post("/v1/chat/completions", json=chat_body(model="m-broken-stream", stream=True)),
    )
    near_miss = gateway.secret[:-3] + "xyz"
    for name, header in {
        "near-miss key": f"Bearer {near_miss}",
        "pat on relay": f"Bearer {world['pat']}",
        "basic": "Basic " + gateway.secret,
    }.items():
        keep(name, httpx.get(gateway.url + "/v1/models", headers={"Authorization": header}))
    usage_events(9)
    return out


DASHBOARD_PAGES = [
    ("operator", []),
    ("channels", []),
    ("catalog", []),
    ("operator_orgs", []),
    ("operator_audit", []),
    ("models_public", []),
    ("account_tokens", []),
    ("org", ["acme"]),
    ("keys", ["acme"]),
    ("usage", ["acme"]),
    ("members", ["acme"]),
    ("billing", ["acme"]),
    ("org_audit", ["acme"]),
    ("quickstart", ["acme"]),
]
API_PATHS = [
    "/api/channels/",
    "/api/keys/",
    "/api/tokens/",
    "/api/usage/",
    "/api/audit/",
    "/api/me/",
    "/api/organizations/",
    "/api/models/",
    "/api/schema/",
]
ADMIN_MODELS = [Channel, ApiKey, UsageEvent, AuditEntry, CatalogModel]


def drive_portal(world: Any, operator_user: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    page = Client()
    page.force_login(operator_user)
    for name, args in DASHBOARD_PAGES:
        url = reverse(name, args=args)
        response = page.get(url)
        assert response.status_code == 200, url
        out[f"page {url}"] = response.content.decode()
    for channel in Channel.objects.all():
        url = reverse("channel_edit", args=[channel.pk])
        out[f"page {url}"] = page.get(url).content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {world['pat']}")
    for path in API_PATHS:
        response = api.get(path)
        assert response.status_code == 200, path
        out[f"api {path}"] = response.content.decode()
    for channel in Channel.objects.all():
        out[f"api channel {channel.pk}"] = api.get(f"/api/channels/{channel.pk}/").content.decode()
    for key in ApiKey.objects.all():
        out[f"api key {key.pk}"] = api.get(f"/api/keys/{key.pk}/").content.decode()
    for model in ADMIN_MODELS:
        meta = model._meta
        url = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        out[f"admin {url}"] = page.get(url).content.decode()
        for obj in model.objects.all()[:20]:
            url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
            out[f"admin {url}"] = page.get(url).content.decode()
    return out


def stored_rows() -> dict[str, str]:
    """What the database keeps about keys, channels, audit and usage, as text."""
    return {  # (digests are stored by design; they are grepped for everywhere else)
        "api keys": str(list(ApiKey.objects.values(*_fields(ApiKey, "digest")))),
        "tokens": str(list(Token.objects.values(*_fields(Token, "digest")))),
        "channels": str(list(Channel.objects.values())),
        "audit": str(list(AuditEntry.objects.values())),
        "usage": str(list(UsageEvent.objects.values())),
    }


def _fields(model: Any, *leave_out: str) -> list[str]:
    return [f.attname for f in model._meta.concrete_fields if f.name not in leave_out]


def test_no_secret_in_any_response_page_log_or_row(
    world: Any, logs: Captured, operator_user: Any
) -> None:
    texts = drive_relay(world)
    texts.update(drive_portal(world, operator_user))
    texts.update(stored_rows())
    texts["logs"] = "\n".join(logs.lines)
    assert len(logs.lines) > 20  # DEBUG capture really captured
    # The channel whose secret the provider refused is suspended, with a clean reason.
    refused = Channel.objects.get(name="m-refused")
    assert refused.status == Channel.Status.SUSPENDED and "401" in refused.status_reason
    leaks = grep(world, texts)
    assert not leaks, "\n".join(leaks)


def test_an_error_inside_a_stream_is_scrubbed_too(gateway: Gateway, sim: Simulator) -> None:
    gateway.channel.base_url = f"{sim.base_url}/sim/stream_error,echo_key/v1"
    gateway.channel.secret = UPSTREAM
    gateway.channel.save()
    response = gateway.client.post("/v1/chat/completions", json=chat_body(stream=True))
    assert response.status_code == 200 and "Simulated error in the stream" in response.text
    assert UPSTREAM not in response.text


# --- Exception reports ----------------------------------------------------------------------


@pytest.fixture
def mailed_reports(settings: Any) -> Iterator[list[Any]]:
    """Errors of django.request mailed to ADMINS the way AdminEmailHandler does in
    production, HTML report attached."""
    settings.ADMINS = [("Ops", "ops@example.test")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    handler = AdminEmailHandler(include_html=True)
    handler.setLevel(logging.ERROR)
    logger = logging.getLogger("django.request")
    logger.addHandler(handler)
    mail.outbox = []
    yield mail.outbox
    logger.removeHandler(handler)


def _crash_holding_secrets(**kwargs: Any) -> Any:
    """Stands in for a service that fails while it holds secrets in local variables."""
    secret = kwargs.get("secret", CRASH_LOCAL)
    value = CRASH_LOCAL  # a credential under an innocent name
    encrypted = crypto.encrypt_secret(secret)
    raise RuntimeError(f"simulated failure after encrypting {len(encrypted)} bytes ({value[:0]})")


@pytest.mark.parametrize("debug", [False, True])
def test_exception_reports_hide_secrets(
    debug: bool,
    settings: Any,
    operator_user: Any,
    world: Any,
    mailed_reports: list[Any],
    logs: Captured,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from console.api.views import keys as api_keys
    from console.views import operator as operator_views

    settings.DEBUG = debug
    monkeypatch.setattr(operator_views.services, "channel_create", _crash_holding_secrets)
    monkeypatch.setattr(api_keys.billing, "api_key_issue", _crash_holding_secrets)
    page = Client(raise_request_exception=False)
    page.force_login(operator_user)
    form = page.post(
        reverse("channel_create"),
        {
            "name": "new",
            "base_url": "http://127.0.0.1:9/v1",
            "secret": NEW_CHANNEL,
            "models": "sim-small",
            "provider_type": "openai",
            "priority": 0,
            "weight": 1,
        },
    )
    api = APIClient(raise_request_exception=False)
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {world['pat']}")
    created = api.post("/api/keys/", {"organization": "acme", "name": "x"}, format="json")
    assert form.status_code == 500 and created.status_code == 500
    assert len(mailed_reports) >= 2
    assert all("Internal Server Error" in m.subject for m in mailed_reports)
    texts = {"form response": form.content.decode(), "api response": created.content.decode()}
    for n, message in enumerate(mailed_reports):
        texts[f"mail {n} text"] = message.body
        parts = [alternative[0] for alternative in message.alternatives]
        parts += [attachment[1] for attachment in message.attachments]
        texts[f"mail {n} html"] = "\n".join(map(str, parts))
    texts["logs"] = "\n".join(x for x in logs.lines if not x.startswith("django.db.backends"))
    texts["sql logs"] = "\n".join(x for x in logs.lines if x.startswith("django.db.backends"))
    # The reports are real: the crash and its frame are in them.
    mails = "\n".join(v for k, v in texts.items() if k.startswith("mail"))
    assert mails.count("simulated failure after encrypting") >= 2
    assert "_crash_holding_secrets" in mails and "********************" in mails
    if debug:
        assert "simulated failure" in texts["form response"]  # the technical 500 page
    leaks = grep(world, texts)
    assert not leaks, "\n".join(leaks)


# --- Constant-time comparison and lookup by HMAC --------------------------------------------


def test_relay_keys_are_looked_up_by_hmac_never_by_secret(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relay import snapshot

    looked_up: list[str] = []
    real_load = snapshot.load_key

    def spy(digest: str) -> Any:
        looked_up.append(digest)
        return real_load(digest)

    monkeypatch.setattr(snapshot, "load_key", spy)
    assert gateway.client.get("/v1/models").status_code == 200
    wrong = gateway.secret[:-1] + ("A" if gateway.secret[-1] != "A" else "B")
    headers = {"Authorization": f"Bearer {wrong}"}
    assert httpx.get(gateway.url + "/v1/models", headers=headers).status_code == 401
    assert looked_up == [crypto.api_key_digest(gateway.secret), crypto.api_key_digest(wrong)]
    assert all(len(d) == 64 and gateway.secret not in d for d in looked_up)
    row = ApiKey.objects.filter(pk=gateway.api_key.pk).values().get()
    assert gateway.secret not in str(row)
    assert (
        row["digest"]
        == hmac.new(
            crypto.settings.TOLLGATE_KEY_HMAC_SECRET.encode(), gateway.secret.encode(), "sha256"
        ).hexdigest()
    )


def test_digests_are_compared_with_compare_digest(
    tenant_owner: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(crypto.hmac, "compare_digest", spy)
    _, secret = tokens.personal_access_token_create(user=tenant_owner, name="t", actor="test")
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert api.get("/api/me/").status_code == 200
    assert len(calls) == 1 and calls[0][0] == calls[0][1]
    key = ApiKey(tenant=tenant_owner.memberships.first().organization, name="k")
    key_secret = crypto.generate_api_key()
    key.set_secret(key_secret)
    assert key.matches(key_secret) and not key.matches(key_secret + "x")
    assert len(calls) == 3
