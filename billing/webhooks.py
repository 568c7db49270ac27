"""Outgoing webhooks to addresses tenants choose, kept off the platform's own network.

A tenant owner sets the budget alert webhook's URL, and Tollgate's workers post to it. Left
open, that lets a tenant make the workers reach loopback, link-local (cloud metadata) and
private addresses, and read the outcome back: a port scanner inside the network. So a
destination must be a public (globally routable) address. It is checked when the URL is
set, and again when it is sent: the host name is resolved then, every address it resolves
to is checked, and the connection goes to the address that was checked (the URL's host
stays in the Host header and the TLS server name), so a name that changes its answer
between the check and the connection (DNS rebinding) reaches nothing new.

Operators may allow non-public destinations (``BILLING_WEBHOOK_ALLOW_PRIVATE``), for a
receiver on their own network or a test's receiver on loopback.

Tenants see a coarse outcome (:data:`DELIVERY_REFUSED`, :data:`DELIVERY_FAILED` or the HTTP
status), never the connection error, which would tell open ports from closed ones.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings

if TYPE_CHECKING:
    import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DELIVERY_REFUSED = "destination not allowed"
DELIVERY_FAILED = "not delivered"
DELIVERY_OUTCOMES = frozenset({DELIVERY_REFUSED, DELIVERY_FAILED})

# IPv6 ranges that carry an IPv4 address in their low 32 bits: NAT64 (RFC 6052, 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class WebhookRefused(ValueError):
    """The webhook's URL or the address it resolves to is not an allowed destination."""


@dataclass(frozen=True)
class Destination:
    """Where one webhook post connects: the URL's host and the checked address for it."""

    url: str
    host: str
    address: IPAddress


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` is globally routable unicast: not loopback, private, link-local,
    shared (CGNAT), multicast, reserved, unspecified, documentation, nor an IPv6 form of
    such an IPv4 address (mapped, 6to4, Teredo, NAT64)."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return False
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public_address(embedded)
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_loopback
        or address.is_link_local
        or address.is_private
    )


def _private_allowed() -> bool:
    return bool(getattr(settings, "BILLING_WEBHOOK_ALLOW_PRIVATE", False))


def _split(url: str) -> tuple[Any, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookRefused("The webhook must be an http or https URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise WebhookRefused("The webhook URL cannot carry a user name or password.")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError:
        raise WebhookRefused("The webhook URL's port is not valid.") from None
    return parts, parts.hostname.rstrip(".").lower()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to (empty when it does not resolve)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def _check_addresses(addresses: list[IPAddress]) -> None:
    if _private_allowed():
        return
    if any(not is_public_address(address) for address in addresses):
        raise WebhookRefused(
            "The webhook must reach a public address, not a loopback, private, "
            "link-local or other internal one."
        )


def webhook_url_check(url: str) -> None:
    """Refuse a webhook URL that names or resolves to a non-public address (on input).

    A name that does not resolve now is accepted: it is resolved and checked again at
    every send, which is where it counts.
    """
    if not url:
        return
    parts, host = _split(url)
    if (host == "localhost" or host.endswith(".localhost")) and not _private_allowed():
        raise WebhookRefused("The webhook must reach a public address, not localhost.")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    _check_addresses(_resolve(host, port))


def webhook_destination(url: str) -> Destination:
    """Resolve ``url``'s host once and check every address (at send time)."""
    parts, host = _split(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port)
    if not addresses:
        import httpx  # deferred, as in webhook_post

        raise httpx.ConnectError(f"{host} does not resolve")
    _check_addresses(addresses)
    return Destination(url=url, host=host, address=addresses[0])


def webhook_post(url: str, payload: dict[str, Any], *, timeout: float) -> httpx.Response:
    """POST ``payload`` as JSON to ``url``, connecting only to the address checked.

    Raises :class:`WebhookRefused` for a non-public destination and ``httpx.HTTPError``
    when the post fails. Redirects are not followed and no proxy from the environment is
    used, so the checked address is the only one reached.
    """
    # Deferred: the models import this module for its outcome names, and httpx would add
    # ~0.2 s to every process start (management commands, the relay's workers).
    import httpx

    destination = webhook_destination(url)
    parts = urlsplit(url)
    address = destination.address
    netloc = f"[{address}]" if address.version == 6 else str(address)
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    host_header = destination.host if parts.port is None else f"{destination.host}:{parts.port}"
    if ":" in destination.host and parts.port is None:
        host_header = f"[{destination.host}]"
    elif ":" in destination.host:
        host_header = f"[{destination.host}]:{parts.port}"
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        return client.post(
            pinned,
            json=payload,
            headers={"Host": host_header},
            # The certificate is checked against the URL's host, not the pinned address.
            extensions={"sni_hostname": destination.host},
        )
