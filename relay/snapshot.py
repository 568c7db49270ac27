"""What the relay knows about keys, models and channels, loaded once and kept in memory.

Each relay process holds an immutable snapshot of the routing table and a bounded cache
of the keys it has seen; it polls the shared change counter (portal.invalidation) in the
background and drops both when anything changed, so steady-state requests touch no SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import DatabaseError, close_old_connections

from billing.pricing import PricePair, tenant_price_table
from portal import invalidation
from portal.models import ApiKey, CatalogModel, Channel, ChannelModel
from portal.models.limits import LimitFields
from relay import errors, shared, upstream
from relay.limits import Limits, Scope
from relay.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_URL
from relay.providers.registry import adapter_for
from relay.spend import SpendShape

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

logger = logging.getLogger(__name__)

# A key that failed to authenticate is remembered briefly, so a client hammering the relay
# with a wrong key costs one query per interval rather than one per request.
NEGATIVE_TTL_SECONDS = 10.0
MAX_CACHED_KEYS = 200_000
MAX_CACHED_TENANTS = 50_000


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: int
    tenant_id: int
    name: str
    active: bool
    expires_at: float | None  # epoch seconds
    allowed_models: frozenset[str]  # empty: every model
    # The key's own groups if it has any, else its tenant's; empty: every group.
    channel_groups: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()  # empty: any source address
    allowed_surfaces: frozenset[str] = frozenset()  # empty: every client API
    key_limits: Limits = field(default_factory=Limits)
    tenant_limits: Limits = field(default_factory=Limits)
    spend: SpendShape = field(default_factory=SpendShape)

    def allows(self, public_id: str) -> bool:
        return not self.allowed_models or public_id in self.allowed_models

    def allows_surface(self, surface: str) -> bool:
        return not self.allowed_surfaces or surface in self.allowed_surfaces

    def allows_group(self, group: str) -> bool:
        return not self.channel_groups or group in self.channel_groups

    def allows_address(self, address: IPAddress | None) -> bool:
        if not self.networks:
            return True
        return address is not None and any(address in network for network in self.networks)

    def limit_scopes(self) -> list[Scope]:
        scopes = []
        if self.key_limits.any():
            scopes.append(Scope(f"key:{self.id}", self.key_limits))
        if self.tenant_limits.any():
            scopes.append(Scope(f"tenant:{self.tenant_id}", self.tenant_limits))
        return scopes


@dataclass(frozen=True, slots=True)
class Route:
    channel_id: int
    channel_name: str
    url: str
    secret: str
    upstream_model: str
    priority: int
    weight: int
    group: str = "default"
    timeout: httpx.Timeout | None = None  # None: the relay's defaults
    total_timeout: float | None = None
    # Client APIs the provider serves itself ("responses", "messages"): those requests
    # pass through; others are translated to chat completions.
    native: frozenset[str] = frozenset()
    # The provider adapter (relay.providers) of a channel that is not OpenAI-compatible;
    # None: requests go out in OpenAI's format to ``url``.
    adapter: Any = field(default=None, repr=False, compare=False)
    # Made once per snapshot rather than per request: the parsed URL and the request
    # headers for JSON and for streamed answers (see ``upstream.request``).
    target: httpx.URL = field(init=False, repr=False, compare=False)
    headers: tuple[httpx.Headers, httpx.Headers] = field(init=False, repr=False, compare=False)
    # Parsed URLs of the other surfaces' paths, made on first use.
    targets: dict[str, httpx.URL] = field(init=False, repr=False, compare=False)

    def target_for(self, path: str) -> httpx.URL:
        """The parsed URL of ``path`` (``/responses``, ``/responses/{id}``...) on this channel."""
        if path == "/chat/completions":
            return self.target
        target = self.targets.get(path)
        if target is None:
            target = httpx.URL(self.url[: -len("/chat/completions")] + path)
            if len(self.targets) < 16:  # ids in paths must not grow the cache
                self.targets[path] = target
        return target

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", httpx.URL(self.url))
        object.__setattr__(self, "targets", {})
        object.__setattr__(
            self,
            "headers",
            (
                upstream.headers(self.secret, "application/json"),
                upstream.headers(self.secret, "text/event-stream"),
            ),
        )


@dataclass(frozen=True, slots=True)
class ModelInfo:
    public_id: str
    owned_by: str
    created: int
    routes: tuple[Route, ...]
    max_output_tokens: int | None = None
    surfaces: frozenset[str] = frozenset(("chat", "responses", "messages", "completions"))

    def as_openai(self) -> dict[str, str | int]:
        return {
            "id": self.public_id,
            "object": "model",
            "created": self.created,
            "owned_by": self.owned_by,
        }


@dataclass(slots=True)
class Snapshot:
    models: dict[str, ModelInfo] = field(default_factory=dict)

    def servable(self, key: KeyInfo, prices: Mapping[str, PricePair]) -> list[ModelInfo]:
        """Models this key may use, priced for its tenant, with at least one enabled channel
        and a client API the key may call."""
        return [
            m
            for m in self.models.values()
            if m.routes
            and key.allows(m.public_id)
            and m.public_id in prices
            and (not key.allowed_surfaces or m.surfaces & key.allowed_surfaces)
        ]


def load_key(digest: str) -> KeyInfo | None:
    close_old_connections()
    api_key = (
        ApiKey.objects.select_related(
            "tenant",
            "tenant__parent",
            "tenant__parent__tenant_defaults",
            "tenant__billing_account",
            "spend_quota",
        )
        .filter(digest=digest)
        .first()
    )
    if api_key is None:
        return None
    tenant = api_key.tenant
    tenant_active = tenant.is_active and (tenant.parent is None or tenant.parent.is_active)
    return KeyInfo(
        id=api_key.pk,
        tenant_id=tenant.pk,
        name=api_key.name,
        active=api_key.status == ApiKey.Status.ACTIVE and tenant_active,
        expires_at=api_key.expires_at.timestamp() if api_key.expires_at else None,
        allowed_models=frozenset(api_key.allowed_models or ()),
        allowed_surfaces=frozenset(api_key.allowed_surfaces or ()),
        channel_groups=frozenset(api_key.channel_groups or tenant.channel_groups or ()),
        networks=tuple(
            ipaddress.ip_network(str(n), strict=False) for n in api_key.allowed_networks or ()
        ),
        key_limits=_limits(api_key),
        tenant_limits=_limits(tenant),
        spend=_spend_shape(api_key),
    )


def _spend_shape(api_key: ApiKey) -> SpendShape:
    try:
        account = api_key.tenant.billing_account
    except ObjectDoesNotExist:
        account = None
    try:
        quota = api_key.spend_quota
    except ObjectDoesNotExist:
        quota = None
    if account is None:  # the seller's defaults for new tenants (prepaid without them)
        parent = api_key.tenant.parent
        try:
            defaults = parent.tenant_defaults if parent is not None else None
        except ObjectDoesNotExist:
            defaults = None
        prepaid = defaults is None or defaults.mode == "prepaid"
        limited = defaults is not None and defaults.credit_limit_micros is not None
    else:
        prepaid = account.is_prepaid
        limited = account.credit_limit_micros is not None
    return SpendShape(
        funds=prepaid or limited,
        prepaid=prepaid,
        budget=account is not None and account.hard_budget_micros is not None,
        key_total=quota is not None and quota.total_limit_micros is not None,
        key_period=quota.period if quota and quota.period_limit_micros is not None else "",
    )


def _limits(holder: LimitFields) -> Limits:
    return Limits(
        rpm=holder.rpm_limit,
        tpm=holder.tpm_limit,
        concurrency=holder.concurrency_limit,
        daily_tokens=holder.daily_token_limit,
    )


def _timeout(channel: Channel) -> httpx.Timeout | None:
    if channel.connect_timeout is None and channel.first_byte_timeout is None:
        return None
    connect = channel.connect_timeout or settings.RELAY_CONNECT_TIMEOUT
    return httpx.Timeout(
        connect=connect,
        read=channel.first_byte_timeout or settings.RELAY_FIRST_BYTE_TIMEOUT,
        write=connect,
        pool=connect,
    )


def load_prices(tenant_id: int) -> dict[str, PricePair]:
    close_old_connections()
    return tenant_price_table(tenant_id)


def _adapter_route(channel: Channel) -> tuple[str, list[str]]:
    """The URL and native surfaces of a channel served through its adapter. An Anthropic
    channel takes ``/v1/messages`` requests as they are (the Messages dialect's pass-through
    leg); every other request goes through the adapter, which makes its own URL."""
    if channel.provider_type == Channel.ProviderType.ANTHROPIC:
        base = (channel.base_url or ANTHROPIC_URL).rstrip("/")
        return f"{base}/v1/chat/completions", ["messages"]
    return f"https://{channel.provider_type}.adapter.invalid/v1/chat/completions", []


def load_snapshot() -> Snapshot:
    close_old_connections()
    routes: dict[int, list[Route]] = {}
    served = ChannelModel.objects.select_related("channel", "model").filter(
        channel__status="enabled", model__is_active=True
    )
    for link in served:
        channel = link.channel
        try:
            secret = channel.secret
        except ValueError:
            logger.error("channel %s: secret cannot be decrypted; channel skipped", channel.pk)
            continue
        url, native, adapter = channel.chat_completions_url(), channel.native_surfaces, None
        if channel.provider_type != Channel.ProviderType.OPENAI:
            try:
                adapter = adapter_for(
                    channel.provider_type,
                    base_url=channel.base_url,
                    secret=secret,
                    settings=channel.provider_settings,
                )
            except ValueError as exc:
                logger.error("channel %s: %s; channel skipped", channel.pk, exc)
                continue
            url, native = _adapter_route(channel)
        routes.setdefault(link.model_id, []).append(
            Route(
                channel_id=channel.pk,
                channel_name=channel.name,
                url=url,
                adapter=adapter,
                secret=secret,
                upstream_model=link.upstream_model(),
                priority=channel.priority,
                weight=max(channel.weight, 0),
                group=channel.group,
                timeout=_timeout(channel),
                total_timeout=channel.total_timeout,
                native=frozenset(native or ()),
            )
        )
    models = {
        m.public_id: ModelInfo(
            public_id=m.public_id,
            owned_by=m.owned_by,
            created=int(m.created_at.timestamp()),
            routes=tuple(routes.get(m.pk, ())),
            max_output_tokens=m.max_output_tokens,
            surfaces=frozenset(m.surfaces or ()),
        )
        for m in CatalogModel.objects.filter(is_active=True)
    }
    return Snapshot(models=models)


def _database_unavailable() -> errors.RelayError:
    # Keys and routes already cached keep being served; only what is not yet is refused.
    return errors.RelayError(
        503,
        "The gateway cannot reach its database right now; retry shortly.",
        type="server_error",
        code="database_unavailable",
        headers=((b"retry-after", b"2"),),
    )


class RelayCache:
    """Per-process cache of keys and the routing snapshot, invalidated by generation."""

    def __init__(self) -> None:
        self._keys: OrderedDict[str, tuple[KeyInfo | None, float]] = OrderedDict()
        self._prices: dict[int, dict[str, PricePair]] = {}
        self._snapshot: Snapshot | None = None
        self._generation: int | None = None
        # Bumped on every invalidation; a load that started in an older epoch is not kept.
        self._epoch = 0
        self._poller: asyncio.Task[None] | None = None
        self._snapshot_lock: asyncio.Lock | None = None

    async def key(self, digest: str) -> KeyInfo | None:
        self._ensure_poller()
        entry = self._keys.get(digest)
        if entry is not None:
            info, loaded_at = entry
            if info is not None or time.monotonic() - loaded_at < NEGATIVE_TTL_SECONDS:
                return info
        epoch = self._epoch
        try:
            info = await sync_to_async(load_key)(digest)
        except DatabaseError:
            logger.warning("loading an API key failed", exc_info=True)
            raise _database_unavailable() from None
        if epoch == self._epoch:
            self._keys[digest] = (info, time.monotonic())
            if len(self._keys) > MAX_CACHED_KEYS:
                self._keys.popitem(last=False)
        return info

    async def prices(self, tenant_id: int) -> dict[str, PricePair]:
        """The tenant's price per public model id; a model missing here cannot be served."""
        table = self._prices.get(tenant_id)
        if table is not None:
            return table
        epoch = self._epoch
        try:
            table = await sync_to_async(load_prices)(tenant_id)
        except DatabaseError:
            logger.warning("loading prices failed", exc_info=True)
            raise _database_unavailable() from None
        if epoch == self._epoch:
            if len(self._prices) >= MAX_CACHED_TENANTS:
                self._prices.clear()
            self._prices[tenant_id] = table
        return table

    async def snapshot(self) -> Snapshot:
        self._ensure_poller()
        snapshot = self._snapshot
        if snapshot is not None:
            return snapshot
        if self._snapshot_lock is None:
            self._snapshot_lock = asyncio.Lock()
        async with self._snapshot_lock:
            if self._snapshot is None:
                epoch = self._epoch
                try:
                    loaded = await sync_to_async(load_snapshot)()
                except DatabaseError:
                    logger.warning("loading the routing table failed", exc_info=True)
                    raise _database_unavailable() from None
                if epoch != self._epoch:
                    return loaded  # stale before it landed: serve it once, keep nothing
                self._snapshot = loaded
            return self._snapshot

    @property
    def generation(self) -> int:
        """The generation of keys, prices and limits this process has last seen."""
        return self._generation or 0

    def invalidate(self) -> None:
        self._epoch += 1
        self._keys.clear()
        self._prices.clear()
        self._snapshot = None

    def _ensure_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        interval = settings.RELAY_CACHE_POLL_SECONDS
        while True:
            try:
                generation = await invalidation.acurrent_generation()
            except Exception:  # the cache being down must not stop the relay
                logger.warning("relay cache poll failed", exc_info=True)
            else:
                if generation != self._generation:
                    if self._generation is not None:
                        self.invalidate()
                    self._generation = generation
            try:
                await shared.breakers().refresh()
            except Exception:
                logger.warning("reading breaker states failed", exc_info=True)
            await asyncio.sleep(interval)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
