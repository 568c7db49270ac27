"""Single sign-on workflows: which provider a sign-in uses, who the person is, and the
memberships the provider's role mapping gives them, kept in step at every sign-in.

The protocol itself (authorisation code flow, token exchange, ID token signature and
nonce) is mozilla-django-oidc's, wired in ``console.sso``; this module only decides what a
verified set of claims means here. There is no seat cap: everyone the mapping places is
provisioned.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from portal.models import AuditEntry, Membership, Organization, SsoIdentity, SsoProvider
from portal.services.common import Actor
from portal.services.organizations import (
    membership_add,
    membership_change_role,
    membership_remove,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

log = logging.getLogger(__name__)

PLATFORM_KEY = "platform"
ACTOR = "sso"


class SsoRefused(Exception):
    """The identity provider vouched for someone this configuration does not admit."""


@dataclass(frozen=True)
class SsoConfig:
    key: str
    # None: the platform's provider, which may place people anywhere.
    organization: Organization | None
    issuer: str
    client_id: str
    client_secret: str
    allowed_domains: tuple[str, ...]
    role_claim: str
    role_map: dict[str, str] = field(default_factory=dict)
    # Staff who sign in here skip Tollgate's TOTP code: only when explicitly set.
    delegate_two_factor: bool = False
    scopes: str = "openid email profile"

    def within(self, organization: Organization) -> bool:
        scope = self.organization
        if scope is None:
            return True
        return organization.pk == scope.pk or organization.parent_id == scope.pk


def platform_config() -> SsoConfig | None:
    if not (settings.OIDC_ISSUER and settings.OIDC_CLIENT_ID):
        return None
    return SsoConfig(
        key=PLATFORM_KEY,
        organization=None,
        issuer=settings.OIDC_ISSUER.rstrip("/"),
        client_id=settings.OIDC_CLIENT_ID,
        client_secret=settings.OIDC_CLIENT_SECRET,
        allowed_domains=tuple(d.lower() for d in settings.OIDC_ALLOWED_DOMAINS),
        role_claim=settings.OIDC_ROLE_CLAIM,
        role_map=dict(settings.OIDC_ROLE_MAP),
        delegate_two_factor=settings.OIDC_DELEGATE_TWO_FACTOR,
    )


def _config_of(provider: SsoProvider) -> SsoConfig:
    return SsoConfig(
        key=provider.key,
        organization=provider.organization,
        issuer=provider.issuer.rstrip("/"),
        client_id=provider.client_id,
        client_secret=provider.client_secret,
        allowed_domains=tuple(str(d).lower() for d in provider.allowed_domains),
        role_claim=provider.role_claim,
        role_map=dict(provider.role_map),
    )


def sso_config(key: str) -> SsoConfig | None:
    if key == PLATFORM_KEY:
        return platform_config()
    provider = (
        SsoProvider.objects.select_related("organization").filter(key=key, enabled=True).first()
    )
    return _config_of(provider) if provider else None


def sso_config_for_email(email: str) -> SsoConfig | None:
    """The provider that admits this address's domain: an organisation's, else the
    platform's."""
    domain = email.strip().lower().rpartition("@")[2]
    if not domain:
        return None
    for provider in SsoProvider.objects.select_related("organization").filter(enabled=True):
        if domain in (str(d).lower() for d in provider.allowed_domains):
            return _config_of(provider)
    platform = platform_config()
    return platform if platform and domain in platform.allowed_domains else None


def sso_issuer_origins() -> list[str]:
    """The origins of every enabled provider (for the sign-in form's CSP form-action:
    browsers check it on each redirect after a form is sent)."""
    issuers = list(SsoProvider.objects.filter(enabled=True).values_list("issuer", flat=True))
    platform = platform_config()
    if platform is not None:
        issuers.append(platform.issuer)
    origins = set()
    for issuer in issuers:
        parts = urlsplit(issuer)
        if parts.scheme in ("http", "https") and parts.netloc:
            origins.add(f"{parts.scheme}://{parts.netloc}")
    return sorted(origins)


# --- Role mapping ---------------------------------------------------------------------------


def _target(config: SsoConfig, target: str) -> tuple[Organization, str]:
    slug, _, role = target.strip().rpartition(":")
    if role not in Membership.Role.values:
        raise ValidationError(f"Unknown role {role!r} in {target!r}.")
    if not slug:
        if config.organization is None:
            raise ValidationError(f"{target!r}: the platform's mapping names the organisation.")
        return config.organization, role
    organization = Organization.objects.filter(slug=slug).first()
    if organization is None or not config.within(organization):
        raise ValidationError(f"{target!r}: no such organisation within this provider's reach.")
    if organization.kind == Organization.Kind.PLATFORM:
        raise ValidationError("Single sign-on does not make operators.")
    return organization, role


def _placements(config: SsoConfig, claims: dict[str, Any]) -> dict[Organization, str]:
    raw = claims.get(config.role_claim)
    values = {str(v) for v in raw} if isinstance(raw, list) else {str(raw)} if raw else set()
    placements: dict[Organization, str] = {}
    for claim_value, target in config.role_map.items():
        if claim_value in values:
            try:
                organization, role = _target(config, target)
            except ValidationError as exc:
                log.warning("sso %s: mapping %r skipped: %s", config.key, target, exc.messages)
                continue
            placements.setdefault(organization, role)  # the first match per organisation
    return placements


def _mapped_organizations(config: SsoConfig) -> set[int]:
    mapped = set()
    for target in config.role_map.values():
        try:
            mapped.add(_target(config, target)[0].pk)
        except ValidationError:
            continue
    return mapped


# --- Sign-in --------------------------------------------------------------------------------


def _may_link(config: SsoConfig, user: User) -> bool:
    """Whether an existing account with the same address may be signed in by this
    provider: the platform's may (its IdP is the operator's own); an organisation's only
    for people who belong to nothing outside its reach and are not staff."""
    if not user.is_active:
        return False
    if config.organization is None:
        return True
    if user.is_staff or user.is_superuser:
        return False
    return all(
        config.within(m.organization)
        for m in Membership.objects.filter(user=user).select_related("organization")
    )


def _new_user(email: str, claims: dict[str, Any]) -> User:
    model = get_user_model()
    base = email.split("@")[0][:100] or "user"
    username = base
    while model.objects.filter(username=username).exists():
        username = f"{base}-{secrets.token_hex(3)}"
    user = model(username=username, email=email, first_name=str(claims.get("name") or "")[:150])
    user.set_unusable_password()
    user.save()
    return user


@transaction.atomic
def sso_sign_in(*, config: SsoConfig, claims: dict[str, Any]) -> User:
    """The person these verified claims describe, provisioned on first sign-in and with
    the memberships the mapping gives now (roles follow the claim at every sign-in)."""
    subject = str(claims.get("sub") or "")
    email = str(claims.get("email") or "").strip().lower()
    if not subject or "@" not in email:
        raise SsoRefused("The identity provider sent no subject or e-mail address.")
    if claims.get("email_verified") is False:
        raise SsoRefused("The identity provider has not verified this e-mail address.")
    if email.rpartition("@")[2] not in config.allowed_domains:
        raise SsoRefused(f"Addresses at {email.rpartition('@')[2]} may not sign in here.")
    placements = _placements(config, claims)
    if not placements and config.organization is not None:
        raise SsoRefused("Your account at the identity provider gives you no role here.")
    identity = (
        SsoIdentity.objects.select_for_update()
        .select_related("user")
        .filter(provider_key=config.key, subject=subject)
        .first()
    )
    if identity is not None:
        user = identity.user
        if not user.is_active:
            raise SsoRefused("This account is disabled.")
    else:
        existing = get_user_model().objects.filter(email__iexact=email).order_by("pk").first()
        if existing is not None and not _may_link(config, existing):
            raise SsoRefused("An account with this address exists; sign in with its password.")
        user = existing or _new_user(email, claims)
        identity = SsoIdentity.objects.create(provider_key=config.key, subject=subject, user=user)
        AuditEntry.record(
            actor=ACTOR,
            action="sso.link" if existing else "sso.provision",
            target=user,
            organization=config.organization,
            data={"provider": config.key, "user": user.get_username()},
        )
    _sync_memberships(config, user, placements)
    identity.last_login_at = timezone.now()
    identity.save(update_fields=["last_login_at"])
    return user


def _sync_memberships(config: SsoConfig, user: User, placements: dict[Organization, str]) -> None:
    current = {
        m.organization_id: m
        for m in Membership.objects.filter(user=user).select_related("organization", "user")
    }
    actor = f"{ACTOR}:{config.key}"
    for organization, role in placements.items():
        membership = current.get(organization.pk)
        try:
            if membership is None:
                membership_add(organization=organization, user=user, role=role, actor=actor)
            elif membership.role != role:
                membership_change_role(membership=membership, role=role, actor=actor)
        except ValidationError as exc:  # e.g. the last owner stays owner
            log.warning("sso %s: %s kept: %s", config.key, user.get_username(), exc.messages)
    placed = {organization.pk for organization in placements}
    for organization_id in _mapped_organizations(config) - placed:
        membership = current.get(organization_id)
        if membership is None:
            continue
        try:
            membership_remove(membership=membership, actor=actor)
        except ValidationError as exc:
            log.warning("sso %s: %s kept: %s", config.key, user.get_username(), exc.messages)


# --- Configuration --------------------------------------------------------------------------


@transaction.atomic
def sso_provider_save(
    *,
    organization: Organization,
    issuer: str,
    client_id: str,
    client_secret: str,
    allowed_domains: list[str],
    role_claim: str,
    role_map: dict[str, str],
    enabled: bool,
    actor: Actor,
) -> SsoProvider:
    """Create or change the organisation's provider; a blank secret keeps the stored one."""
    if organization.kind == Organization.Kind.PLATFORM:
        raise ValidationError("The platform's provider is configured with OIDC_* settings.")
    provider = SsoProvider.objects.filter(organization=organization).first()
    if provider is None:
        if not client_secret:
            raise ValidationError({"client_secret": "Give the client secret."})
        provider = SsoProvider(organization=organization, key=organization.slug[:60])
    provider.issuer = issuer.strip().rstrip("/")
    provider.client_id = client_id.strip()
    if client_secret:
        provider.client_secret = client_secret.strip()
    domains = sorted({d.strip().lower().lstrip("@") for d in allowed_domains if d.strip()})
    if not domains:
        raise ValidationError({"allowed_domains": "Name at least one e-mail domain."})
    taken = [
        d
        for other in SsoProvider.objects.exclude(pk=provider.pk)
        for d in other.allowed_domains
        if d in domains
    ]
    if taken:
        raise ValidationError({"allowed_domains": f"Another organisation signs in {taken[0]}."})
    provider.allowed_domains = domains
    provider.role_claim = role_claim.strip()
    provider.role_map = role_map
    provider.enabled = enabled
    provider.full_clean(exclude=["client_secret_ciphertext", "key"])
    config = _config_of(provider)
    for target in role_map.values():
        try:
            _target(config, target)
        except ValidationError as exc:
            raise ValidationError({"role_map": exc.messages}) from exc
    provider.save()
    AuditEntry.record(
        actor=actor,
        action="sso_provider.save",
        target=provider,
        organization=organization,
        data={
            "issuer": provider.issuer,
            "client_id": provider.client_id,
            "allowed_domains": domains,
            "role_claim": provider.role_claim,
            "role_map": role_map,
            "enabled": enabled,
        },
    )
    return provider
