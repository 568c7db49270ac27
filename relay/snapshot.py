"""What the relay knows about keys, models and channels, and how it loads them.

The data the relay keeps in memory (keys, the routing table) and the queries that load it;
``relay.cache`` keeps them per process and decides when to load them again.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import close_old_connections
from django.db.models import Prefetch, QuerySet
from django.utils import timezone
from yarl import URL

from billing.models import Subscription
from billing.pricing import PricePair, PriceSchedule, tenant_price_schedule
from portal import redaction
from portal.models import ApiKey, CatalogModel, Channel, ChannelModel
from portal.models.limits import LimitFields
from relay import upstream
from relay.limits import Limits, Scope, Window
from relay.providers.anthropic import DEFAULT_BASE_URL as ANTHROPIC_URL
from relay.providers.registry import adapter_for
from relay.spend import SpendShape

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

logger = logging.getLogger(__name__)


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
    # The rolling windows of the tenant's plan, if it subscribes to one.
    plan_windows: tuple[Window, ...] = ()
    _scopes: tuple[Scope, ...] = field(init=False, repr=False, compare=False, default=())

    def allows(self, public_id: str) -> bool:
        return not self.allowed_models or public_id in self.allowed_models

    def allows_surface(self, surface: str) -> bool:
        return not self.allowed_surfaces or surface in self.allowed_surfaces

    def allows_route(self, route: Route) -> bool:
        """Whether the key may use the channel: a key with no groups may use any but a
        dedicated one, which only keys naming its group may."""
        if not self.channel_groups:
            return not route.dedicated
        return route.group in self.channel_groups

    def allows_address(self, address: IPAddress | None) -> bool:
        if not self.networks:
            return True
        return address is not None and any(address in network for network in self.networks)

    def __post_init__(self) -> None:
        scopes = []
        if self.key_limits.any():
            scopes.append(Scope(f"key:{self.id}", self.key_limits))
        if self.tenant_limits.any():
            scopes.append(Scope(f"tenant:{self.tenant_id}", self.tenant_limits))
        object.__setattr__(self, "_scopes", tuple(scopes))

    def limit_scopes(self) -> list[Scope]:
        """The key's and its tenant's limited scopes (built with the key, once)."""
        return list(self._scopes)


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
    dedicated: bool = False  # only for keys whose groups name ``group``
    timeout: aiohttp.ClientTimeout | None = None  # None: the relay's defaults
    total_timeout: float | None = None
    # Client APIs the provider serves itself ("responses", "messages"): those requests
    # pass through; others are translated to chat completions.
    native: frozenset[str] = frozenset()
    # The provider adapter (relay.providers) of a channel that is not OpenAI-compatible;
    # None: requests go out in OpenAI's format to ``url``.
    adapter: Any = field(default=None, repr=False, compare=False)
    # Made once per snapshot rather than per request: the parsed URL and the request
    # headers for JSON and for streamed answers (see ``upstream.send``).
    target: URL = field(init=False, repr=False, compare=False)
    headers: tuple[upstream.Headers, upstream.Headers] = field(
        init=False, repr=False, compare=False
    )
    # Parsed URLs of the other surfaces' paths, made on first use.
    targets: dict[str, URL] = field(init=False, repr=False, compare=False)
    # The public id of the catalog model this route serves: the name an upstream error
    # about ``upstream_model`` gives the client instead ("" for none).
    model: str = ""
    # What removes the channel's account from its errors (``upstream_errors.redact``),
    # made on the first error.
    scrubber: Any = field(default=None, init=False, repr=False, compare=False)

    def target_for(self, path: str) -> URL:
        """The parsed URL of ``path`` (``/responses``, ``/responses/{id}``...) on this channel."""
        if path == "/chat/completions":
            return self.target
        target = self.targets.get(path)
        if target is None:
            target = upstream.url(self.url[: -len("/chat/completions")] + path)
            if len(self.targets) < 16:  # ids in paths must not grow the cache
                self.targets[path] = target
        return target

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", upstream.url(self.url))
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
    # Enabled channels left out because requests to them cannot be built (bad secret, URL).
    skipped_channels: tuple[int, ...] = ()

    def servable(self, key: KeyInfo, prices: Mapping[str, PricePair]) -> list[ModelInfo]:
        """Models this key may use, priced for its tenant, with at least one enabled channel
        the key may use and a client API the key may call."""
        return [
            m
            for m in self.models.values()
            if key.allows(m.public_id)
            and any(key.allows_route(route) for route in m.routes)
            and m.public_id in prices
            and (not key.allowed_surfaces or m.surfaces & key.allowed_surfaces)
        ]


def _keys_with_owners() -> QuerySet[ApiKey]:
    return ApiKey.objects.select_related(
        "tenant",
        "tenant__parent",
        "tenant__parent__tenant_defaults",
        "tenant__billing_account",
        "spend_quota",
    ).prefetch_related(
        Prefetch(
            "tenant__subscriptions",
            queryset=Subscription.objects.filter(status=Subscription.Status.ACTIVE)
            .select_related("plan")
            .prefetch_related("plan__windows"),
            to_attr="active_subscriptions",
        )
    )


def load_key(digest: str) -> KeyInfo | None:
    close_old_connections()
    api_key = _keys_with_owners().filter(digest=digest).first()
    return None if api_key is None else key_info(api_key)


def load_keys(digests: list[str]) -> dict[str, KeyInfo]:
    """Many keys in one query, by digest; a digest missing from the answer is unknown."""
    close_old_connections()
    return {k.digest: key_info(k) for k in _keys_with_owners().filter(digest__in=digests)}


def key_info(api_key: ApiKey) -> KeyInfo:
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
        # The operator's caps and the seller's limits: the tighter of each.
        tenant_limits=_limits(tenant, limit=tenant.enforced_limit),
        spend=_spend_shape(api_key),
        plan_windows=_plan_windows(tenant),
    )


def _plan_windows(tenant: Any) -> tuple[Window, ...]:
    windows: list[Window] = []
    for subscription in getattr(tenant, "active_subscriptions", ()):
        windows += subscription_windows(subscription)
    return tuple(windows)


def subscription_windows(subscription: Subscription) -> list[Window]:
    """The windows of a subscription's plan, as the relay counts them."""
    return [
        Window(
            name=f"s{subscription.pk}:w{window.pk}",
            length=window.length,
            kind=window.kind,
            cap=window.cap,
            seconds=window.seconds,
            models=frozenset(window.model_ids or ()),
        )
        for window in subscription.plan.windows.all()
    ]


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


def _limits(holder: LimitFields, limit: Callable[[str], int | None] | None = None) -> Limits:
    """``holder``'s limits, each read by ``limit`` (its field, unless given)."""
    read = limit or functools.partial(getattr, holder)
    return Limits(
        rpm=read("rpm_limit"),
        tpm=read("tpm_limit"),
        concurrency=read("concurrency_limit"),
        daily_tokens=read("daily_token_limit"),
    )


def _timeout(channel: Channel) -> aiohttp.ClientTimeout | None:
    if channel.connect_timeout is None and channel.first_byte_timeout is None:
        return None
    return upstream.timeouts(
        channel.connect_timeout or settings.RELAY_CONNECT_TIMEOUT,
        channel.first_byte_timeout or settings.RELAY_FIRST_BYTE_TIMEOUT,
    )


def load_prices(tenant_id: int) -> PriceSchedule:
    """The tenant's prices now and as scheduled (a change is picked by admission time)."""
    close_old_connections()
    return tenant_price_schedule(tenant_id)


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
    usable: dict[int, bool] = {}
    broken: dict[int, str] = {}
    for link in served:
        channel = link.channel
        if channel.pk not in usable:
            problem = channel.configuration_problem()
            usable[channel.pk] = not problem
            if problem:
                broken[channel.pk] = problem
        if not usable[channel.pk]:
            continue
        secret = channel.secret
        try:
            url, native, adapter = channel.chat_completions_url(), channel.native_surfaces, None
            if channel.provider_type != Channel.ProviderType.OPENAI:
                adapter = adapter_for(
                    channel.provider_type,
                    base_url=channel.base_url,
                    secret=secret,
                    settings=channel.provider_settings,
                )
                url, native = _adapter_route(channel)
            route = Route(
                channel_id=channel.pk,
                channel_name=channel.name,
                url=url,
                adapter=adapter,
                secret=secret,
                upstream_model=link.upstream_model(),
                model=link.model.public_id,
                priority=channel.priority,
                weight=max(channel.weight, 0),
                group=channel.group,
                dedicated=channel.dedicated,
                timeout=_timeout(channel),
                total_timeout=channel.total_timeout,
                native=frozenset(native or ()),
            )
        except Exception as exc:  # one channel must never take the routing table down
            usable[channel.pk] = False
            reason = redaction.redact(f"{type(exc).__name__}: {exc}", (secret,))
            broken[channel.pk] = f"Its requests cannot be built ({reason[:300]})."
            continue
        routes.setdefault(link.model_id, []).append(route)
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
    # Drop routes of channels found broken on a later link of theirs.
    for public_id, info in models.items():
        if any(route.channel_id in broken for route in info.routes):
            models[public_id] = replace(
                info, routes=tuple(r for r in info.routes if r.channel_id not in broken)
            )
    for channel_id, problem in broken.items():
        flag_broken_channel(channel_id, problem)
    return Snapshot(models=models, skipped_channels=tuple(sorted(broken)))


def flag_broken_channel(channel_id: int, problem: str) -> None:
    """Say on the channel's page why the relay leaves it out (its last check's error)."""
    message = f"Not in rotation: {problem}"[:500]
    logger.error("channel %s left out of the routing table: %s", channel_id, problem)
    # An UPDATE, not save(): these columns are ones the relay does not read, and a
    # conditional one, so that every relay process reloading writes it at most once.
    Channel.objects.filter(pk=channel_id).exclude(
        last_check_ok=False, last_check_error=message
    ).update(last_check_ok=False, last_check_error=message, last_check_at=timezone.now())
