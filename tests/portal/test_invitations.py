"""Invitations and logins as services: a hashed token, one use, expiry, revocation, the
hourly limit, audit entries, and nothing that tells an inviter who has a login."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from portal import services
from portal.models import AuditEntry, Invitation, Membership, Organization
from tests.conftest import make_user

pytestmark = pytest.mark.django_db(transaction=True)

LINKS: list[str] = []


def link(token: str) -> str:
    LINKS.append(token)
    return f"http://tollgate.test/invite/{token}/"


def invite(org: Organization, email: str, actor: Any, role: str = "member") -> Invitation:
    return services.invitation_create(
        organization=org, email=email, role=role, actor=actor, link=link
    )


def test_an_invitation_stores_only_a_digest_and_mails_the_link(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    invitation = invite(tenant_org, "new@example.test", tenant_owner)
    token = LINKS[-1]
    assert token not in invitation.digest and len(invitation.digest) == 64
    assert not Invitation.objects.filter(digest__contains=token[:16]).exists()
    (message,) = mail.outbox
    assert message.to == ["new@example.test"]
    assert f"http://tollgate.test/invite/{token}/" in message.body
    assert "Tenant" in message.subject
    entry = AuditEntry.objects.get(action="invitation.create")
    assert entry.data == {"email": "new@example.test", "role": "member"}
    assert services.invitation_for_token(token) == invitation
    assert services.invitation_for_token(token + "x") is None


def test_the_inviter_sees_the_same_whether_or_not_the_address_has_a_login(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    make_user("known")  # known@example.test
    known = invite(tenant_org, "known@example.test", tenant_owner)
    unknown = invite(tenant_org, "unknown@example.test", tenant_owner)
    assert [known.status, unknown.status] == ["pending", "pending"]
    bodies = [m.body.replace(m.to[0], "X").split("http")[0] for m in mail.outbox]
    assert bodies[0] == bodies[1]


def test_accepting_with_a_new_login_creates_it_and_the_membership(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    invitation = invite(tenant_org, "fresh@example.test", tenant_owner, role="admin")
    membership = services.invitation_accept_new_user(
        invitation=invitation, username="fresh", password="a long pass phrase 2026"
    )
    user = membership.user
    assert (user.email, membership.role, membership.organization) == (
        "fresh@example.test",
        "admin",
        tenant_org,
    )
    assert user.check_password("a long pass phrase 2026")
    invitation.refresh_from_db()
    assert invitation.status == "accepted" and invitation.accepted_by == user
    assert services.invitation_for_token(LINKS[-1]) is None  # works once
    actions = set(AuditEntry.objects.values_list("action", flat=True))
    assert {"invitation.create", "user.create", "invitation.accept"} <= actions


def test_an_address_with_a_login_must_sign_in_to_accept(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    existing = make_user("existing")  # existing@example.test
    invitation = invite(tenant_org, "Existing@Example.TEST", tenant_owner)
    with pytest.raises(ValidationError) as refused:
        services.invitation_accept_new_user(
            invitation=invitation, username="another", password="a long pass phrase 2026"
        )
    assert refused.value.code == "has_login"
    assert get_user_model().objects.filter(username="another").count() == 0
    membership = services.invitation_accept(invitation=invitation, user=existing)
    assert membership.role == "member" and membership.organization == tenant_org


def test_a_member_keeps_their_role_when_accepting(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    invitation = invite(tenant_org, "owner@example.test", tenant_owner, role="member")
    membership = services.invitation_accept(invitation=invitation, user=tenant_owner)
    assert membership.role == "owner"
    assert Membership.objects.filter(user=tenant_owner).count() == 1


def test_revoked_and_expired_invitations_cannot_be_accepted(
    tenant_org: Organization, tenant_owner: Any
) -> None:
    revoked = invite(tenant_org, "a@example.test", tenant_owner)
    revoked_token = LINKS[-1]
    services.invitation_revoke(invitation=revoked, actor=tenant_owner)
    assert revoked.status == "revoked"
    assert services.invitation_for_token(revoked_token) is None
    with pytest.raises(ValidationError):
        services.invitation_accept(invitation=revoked, user=tenant_owner)
    assert AuditEntry.objects.filter(action="invitation.revoke").count() == 1

    expired = invite(tenant_org, "b@example.test", tenant_owner)
    Invitation.objects.filter(pk=expired.pk).update(expires_at=timezone.now() - timedelta(1))
    assert services.invitation_for_token(LINKS[-1]) is None


def test_invitations_are_limited_per_hour(
    tenant_org: Organization, tenant_owner: Any, settings: Any
) -> None:
    settings.TOLLGATE_INVITATIONS_PER_HOUR = 3
    for n in range(3):
        invite(tenant_org, f"p{n}@example.test", tenant_owner)
    with pytest.raises(ValidationError) as limited:
        invite(tenant_org, "p4@example.test", tenant_owner)
    assert limited.value.code == "rate_limited"
    Invitation.objects.update(created_at=timezone.now() - timedelta(hours=2))
    invite(tenant_org, "p5@example.test", tenant_owner)


def test_a_tenant_and_its_first_owner_in_one_step(
    reseller_org: Organization, reseller_admin: Any
) -> None:
    tenant, invitation = services.organization_create_with_owner(
        name="Acme",
        kind=Organization.Kind.TENANT,
        parent=reseller_org,
        owner_email="boss@acme.test",
        actor=reseller_admin,
        link=link,
    )
    assert invitation is not None
    assert (invitation.organization, invitation.role) == (tenant, "owner")
    assert mail.outbox[0].to == ["boss@acme.test"]


def test_a_bad_address_creates_neither_tenant_nor_invitation(
    reseller_org: Organization, reseller_admin: Any
) -> None:
    with pytest.raises(ValidationError):
        services.organization_create_with_owner(
            name="Acme",
            kind=Organization.Kind.TENANT,
            parent=reseller_org,
            owner_email="not an address",
            actor=reseller_admin,
            link=link,
        )
    assert not Organization.objects.filter(name="Acme").exists()
    assert not mail.outbox
