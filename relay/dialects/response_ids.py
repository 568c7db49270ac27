"""Response ids that carry their pin: the channel that made a response and the tenant
that asked for it, sealed with an HMAC so nobody can forge or re-point one.

``GET /v1/responses/{id}`` and ``previous_response_id`` need the channel that keeps the
response, and only its tenant may reach it. Keeping that in the id itself needs no table,
no Redis key and no lookup on the hot path; another tenant's id (or a forged one) simply
does not open, and is answered 404 as OpenAI answers an unknown id.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac

from django.conf import settings

PREFIX = "resp_"
MAC_BYTES = 16


@functools.cache
def _key(secret: str) -> bytes:
    return hashlib.sha256(b"tollgate response ids\0" + secret.encode()).digest()


def _mac(text: str) -> bytes:
    return hmac.digest(_key(settings.SECRET_KEY), text.encode(), "sha256")[:MAC_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def seal(upstream_id: str, channel_id: int, tenant_id: int) -> str:
    inner = f"{channel_id}:{tenant_id}:{upstream_id}"
    return f"{PREFIX}{_b64(inner.encode())}.{_b64(_mac(inner))}"


def unseal(public_id: str, tenant_id: int) -> tuple[int, str] | None:
    """The channel and upstream id behind ``public_id``, if this tenant sealed it."""
    if not public_id.startswith(PREFIX) or len(public_id) > 1024:
        return None
    body, _, mac = public_id[len(PREFIX) :].partition(".")
    try:
        inner = _unb64(body).decode()
        given = _unb64(mac)
    except (ValueError, UnicodeDecodeError):
        return None
    if not hmac.compare_digest(given, _mac(inner)):
        return None
    channel, _, rest = inner.partition(":")
    tenant, _, upstream_id = rest.partition(":")
    if not channel.isdigit() or tenant != str(tenant_id) or not upstream_id:
        return None
    return int(channel), upstream_id
