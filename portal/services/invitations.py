"""Invitations by e-mail: offer a role, mail a link that works once, accept or revoke.

What an inviter learns never depends on whether the address already has a login: the
invitation is made and mailed the same way. Only the link's holder is told to sign in
to accept with an existing login. Invitations are rate-limited per inviter and per
organisation.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.core.validators import validate_email
from django.db import transaction
from django.utils import timezone

from portal import crypto
from portal.models import AuditEntry, Invitation, Membership, Organization
from portal.services.common import Actor, user_or_none
from portal.services.organizations import organization_create
from portal.services.people import email_has_login, user_create

logger = logging.getLogger(__name__)

INVITATION_LIFETIME = timedelta(days=7)
RATE_WINDOW = timedelta(hours=1)

# Builds the absolute accept link from a token; the console knows its routes.
LinkBuilder = Callable[[str], str]


def _check_rate(*, organization: Organization, inviter: User | None) -> None:
    limit = settings.TOLLGATE_INVITATIONS_PER_HOUR
    since = timezone.now() - RATE_WINDOW
    recent = Invitation.objects.filter(created_at__gt=since)
    if recent.filter(organization=organization).count() >= limit or (
        inviter is not None and recent.filter(invited_by=inviter).count() >= limit
    ):
        raise ValidationError(
            f"At most {limit} invitations an hour: try again later.", code="rate_limited"
        )


def _mail(invitation: Invitation, link: str) -> None:
    inviter = invitation.invited_by
    by = f" by {inviter.get_username()}" if inviter is not None else ""
    body = (
        f"You have been invited{by} to join {invitation.organization.name} on Tollgate "
        f"as {invitation.get_role_display().lower()}.\n\n"
        f"Accept within {INVITATION_LIFETIME.days} days: {link}\n\n"
        "The link works once. If you did not expect it, ignore this mail.\n"
    )
    try:
        send_mail(
            f"Invitation to {invitation.organization.name} on Tollgate",
            body,
            None,  # DEFAULT_FROM_EMAIL
            [invitation.email],
        )
    except OSError:
        # The invitation stays listed as pending: it can be revoked and sent again.
        logger.exception("invitation %s: the mail could not be sent", invitation.pk)


@transaction.atomic
def invitation_create(
    *,
    organization: Organization,
    email: str,
    role: str,
    actor: Actor,
    link: LinkBuilder,
) -> Invitation:
    """Invite ``email`` to ``role`` in ``organization``; the link is mailed on commit.

    ValidationError for a malformed address, an unknown role, or past the hourly limit.
    """
    email = email.strip()
    try:
        validate_email(email)
    except ValidationError as exc:
        raise ValidationError({"email": exc.messages}) from exc
    if role not in Membership.Role.values:
        raise ValidationError({"role": f"Unknown role {role!r}."})
    inviter = user_or_none(actor)
    _check_rate(organization=organization, inviter=inviter)
    token = secrets.token_urlsafe(32)
    now = timezone.now()
    invitation = Invitation(
        organization=organization,
        email=email,
        role=role,
        invited_by=inviter,
        created_at=now,
        expires_at=now + INVITATION_LIFETIME,
    )
    invitation.set_token(token)
    invitation.save()
    AuditEntry.record(
        actor=actor,
        action="invitation.create",
        target=invitation,
        organization=organization,
        data={"email": email, "role": role},
    )
    url = link(token)
    transaction.on_commit(lambda: _mail(invitation, url))
    return invitation


@transaction.atomic
def organization_create_with_owner(
    *,
    name: str,
    kind: str,
    parent: Organization,
    owner_email: str,
    actor: Actor,
    link: LinkBuilder,
    slug: str | None = None,
) -> tuple[Organization, Invitation | None]:
    """Create a tenant (or reseller) and, given an address, invite its first owner: one
    step for the seller. Both happen, or neither."""
    organization = organization_create(name=name, kind=kind, parent=parent, slug=slug, actor=actor)
    invitation = None
    if owner_email.strip():
        invitation = invitation_create(
            organization=organization,
            email=owner_email,
            role=Membership.Role.OWNER,
            actor=actor,
            link=link,
        )
    return organization, invitation


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: Actor) -> Invitation:
    """Make a pending invitation's link useless; others are left as they are."""
    claimed = Invitation.objects.filter(
        pk=invitation.pk, accepted_at__isnull=True, revoked_at__isnull=True
    ).update(revoked_at=timezone.now())
    invitation.refresh_from_db()
    if claimed:
        AuditEntry.record(
            actor=actor,
            action="invitation.revoke",
            target=invitation,
            organization=invitation.organization,
            data={"email": invitation.email, "role": invitation.role},
        )
    return invitation


def invitation_for_token(token: str) -> Invitation | None:
    """The pending invitation a link's token opens, or None (unknown, used, revoked or
    expired: the holder is told the same for each)."""
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(digest=crypto.api_key_digest(token))
        .first()
    )
    return invitation if invitation is not None and invitation.is_pending else None


def _claim(invitation: Invitation, user: User) -> None:
    claimed = Invitation.objects.filter(
        pk=invitation.pk,
        accepted_at__isnull=True,
        revoked_at__isnull=True,
        expires_at__gt=timezone.now(),
    ).update(accepted_at=timezone.now(), accepted_by=user)
    if claimed != 1:
        raise ValidationError("This invitation is no longer valid.", code="invalid")


@transaction.atomic
def invitation_accept(*, invitation: Invitation, user: User) -> Membership:
    """``user`` (signed in) takes the offered role. Someone who already has a role there
    keeps theirs: an invitation never demotes, nor promotes past what they hold."""
    _claim(invitation, user)
    membership = Membership.objects.filter(organization=invitation.organization, user=user).first()
    if membership is None:
        membership = Membership(
            organization=invitation.organization, user=user, role=invitation.role
        )
        membership.save()
    AuditEntry.record(
        actor=user,
        action="invitation.accept",
        target=invitation,
        organization=invitation.organization,
        data={"email": invitation.email, "user": user.get_username(), "role": membership.role},
    )
    return membership


@transaction.atomic
def invitation_accept_new_user(
    *, invitation: Invitation, username: str, password: str
) -> Membership:
    """Create a login for the invited address and accept with it. An address that has a
    login already is told to sign in instead (only the link's holder learns this)."""
    if email_has_login(invitation.email):
        raise ValidationError(
            "This address already has a login: sign in, then open the link again.",
            code="has_login",
        )
    user = user_create(
        username=username, email=invitation.email, password=password, actor="invitation"
    )
    return invitation_accept(invitation=invitation, user=user)
