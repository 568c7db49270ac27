"""Invitations on the dashboard and the API: invite, list, revoke, accept by the link."""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from portal.models import AuditEntry, Invitation, Membership, Organization
from tests.conftest import make_user
from tests.console.conftest import api_client_for, client_for

pytestmark = pytest.mark.django_db(transaction=True)
PASSWORD = "a long pass phrase 2026"


def mailed_link() -> str:
    match = re.search(r"https?://\S+/invite/[\w-]+/", mail.outbox[-1].body)
    assert match, mail.outbox[-1].body
    return match.group(0)


def test_owner_invites_sees_it_pending_and_revokes_it(tenant_owner: Any) -> None:
    owner = client_for(tenant_owner)
    page = owner.post(
        reverse("invite", args=["tenant"]), {"email": "new@example.test", "role": "admin"},
        follow=True,
    )  # fmt: skip
    html = page.content.decode()
    assert "Invitation sent to new@example.test." in html
    assert "Revoke the invitation to new@example.test" in html
    link = mailed_link()
    invitation = Invitation.objects.get()
    assert link.rstrip("/").rsplit("/", 1)[1] not in html  # the token is only in the mail
    owner.post(reverse("invitation_revoke", args=["tenant", invitation.pk]))
    invitation.refresh_from_db()
    assert invitation.status == "revoked"
    members = owner.get(reverse("members", args=["tenant"])).content.decode()
    assert "The invitation to new@example.test is revoked." in members
    assert "Revoke the invitation to new@example.test" not in members
    assert Client().get("/invite/" + link.split("/invite/", 1)[1]).status_code == 404


def test_the_answer_is_the_same_for_an_address_with_a_login(tenant_owner: Any) -> None:
    make_user("known")
    owner = client_for(tenant_owner)
    answers = []
    for email in ("known@example.test", "unknown@example.test"):
        response = owner.post(
            reverse("invite", args=["tenant"]), {"email": email, "role": "member"}
        )
        answers.append((response.status_code, response["Location"]))
    assert answers[0] == answers[1]


def test_an_admin_cannot_invite_an_owner(tenant_admin: Any) -> None:
    response = client_for(tenant_admin).post(
        reverse("invite", args=["tenant"]), {"email": "boss@example.test", "role": "owner"}
    )
    assert response.status_code == 403 and not Invitation.objects.exists()


def test_the_hourly_limit_shows_on_the_form(tenant_owner: Any, settings: Any) -> None:
    settings.TOLLGATE_INVITATIONS_PER_HOUR = 1
    owner = client_for(tenant_owner)
    owner.post(reverse("invite", args=["tenant"]), {"email": "a@example.test", "role": "member"})
    response = owner.post(
        reverse("invite", args=["tenant"]), {"email": "b@example.test", "role": "member"}
    )
    assert response.status_code == 400
    assert "At most 1 invitations an hour" in response.content.decode()


def test_a_newcomer_accepts_with_a_new_login_and_is_signed_in(tenant_owner: Any) -> None:
    client_for(tenant_owner).post(
        reverse("invite", args=["tenant"]), {"email": "fresh@example.test", "role": "member"}
    )
    path = "/invite/" + mailed_link().split("/invite/", 1)[1]
    visitor = Client()
    page = visitor.get(path).content.decode()
    assert "Join Tenant" in page and "fresh@example.test" in page and "Sign in" in page
    weak = visitor.post(path, {"username": "fresh", "password1": "abc", "password2": "abc"})
    assert weak.status_code == 400
    joined = visitor.post(
        path, {"username": "fresh", "password1": PASSWORD, "password2": PASSWORD}, follow=True
    )
    assert "Welcome to Tenant." in joined.content.decode()
    user = get_user_model().objects.get(username="fresh")
    assert Membership.objects.get(user=user).role == "member"
    assert visitor.get(reverse("keys", args=["tenant"])).status_code == 200
    assert Client().get(path).status_code == 404  # used


def test_someone_signed_in_accepts_with_their_login(tenant_owner: Any, outsider: Any) -> None:
    client_for(tenant_owner).post(
        reverse("invite", args=["tenant"]), {"email": "outsider@example.test", "role": "member"}
    )
    path = "/invite/" + mailed_link().split("/invite/", 1)[1]
    anonymous = (
        Client()
        .post(path, {"username": "x", "password1": PASSWORD, "password2": PASSWORD})
        .content.decode()
    )
    assert "already has a login: sign in" in anonymous
    visitor = client_for(outsider)
    assert "Accept and join" in visitor.get(path).content.decode()
    visitor.post(path)
    assert Membership.objects.get(user=outsider, organization__slug="tenant").role == "member"
    assert AuditEntry.objects.filter(action="invitation.accept").count() == 1


def test_a_reseller_creates_a_tenant_and_invites_its_owner(reseller_admin: Any) -> None:
    response = client_for(reseller_admin).post(
        reverse("tenants", args=["reseller"]),
        {"name": "Acme", "owner_email": "boss@acme.test"},
        follow=True,
    )
    html = response.content.decode()
    assert "Tenant “Acme” created; invitation sent to boss@acme.test." in html
    invitation = Invitation.objects.get()
    assert (invitation.organization.slug, invitation.role) == ("acme", "owner")
    assert mail.outbox[0].to == ["boss@acme.test"]


def test_the_operator_invites_a_reseller(operator_user: Any, platform_org: Organization) -> None:
    response = client_for(operator_user).post(
        reverse("operator_orgs"),
        {
            "name": "Resell Co",
            "kind": "reseller",
            "parent": platform_org.pk,
            "owner_email": "founder@resell.test",
        },
        follow=True,
    )
    assert "invitation sent to founder@resell.test" in response.content.decode()
    invitation = Invitation.objects.get()
    assert invitation.organization.kind == "reseller" and invitation.role == "owner"


def test_the_api_invites_lists_and_revokes(tenant_owner: Any, settings: Any) -> None:
    api = api_client_for(tenant_owner)
    url = reverse("api:invitations", args=["tenant"])
    created = api.post(url, {"email": "api@example.test", "role": "billing"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "pending" and "token" not in body and "digest" not in body
    assert [i["email"] for i in api.get(url).json()["results"]] == ["api@example.test"]
    gone = api.delete(reverse("api:invitation-detail", args=["tenant", body["id"]]))
    assert gone.status_code == 204
    assert api.get(url).json()["results"] == []
    settings.TOLLGATE_INVITATIONS_PER_HOUR = 1
    limited = api.post(url, {"email": "more@example.test"}, format="json")
    assert limited.status_code == 429


def test_the_api_creates_a_tenant_with_its_owner(reseller_admin: Any) -> None:
    response = api_client_for(reseller_admin).post(
        reverse("api:organization-list"),
        {"name": "Api Tenant", "parent": "reseller", "owner_email": "o@api.test"},
        format="json",
    )
    assert response.status_code == 201
    assert Invitation.objects.get().organization.slug == response.json()["slug"]


def _queries_and(call: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """The number of SQL queries ``call(*args, **kwargs)`` made, and its result."""
    with CaptureQueriesContext(connection) as queries:
        result = call(*args, **kwargs)
    return len(queries), result


def _neutral(text: str, email: str) -> str:
    """``text`` with the address and anything per-invitation (ids, times, links) masked."""
    text = text.replace(email, "<email>")
    text = re.sub(r"/invite/[\w-]+/", "/invite/<token>/", text)
    text = re.sub(r"\d{4}-\d\d-\d\d[T ][\d:.+Z]+", "<time>", text)
    return re.sub(r'"id": ?\d+|/invitations/\d+/', "<id>", text)


@pytest.mark.parametrize("via", ["dashboard", "api"])
def test_adding_a_member_answers_the_same_with_or_without_a_login(
    via: str, tenant_owner: Any
) -> None:
    """The old "Add member" form (and ``POST /api/.../members/``) answered "no such user" for
    an unknown address: it told who has a login. Both now invite: the same status, message,
    mail and amount of work (no user is looked up) whether the address has a login or not."""
    make_user("known")  # known@example.test has a login; nobody@example.test has none
    answers = []
    for email in ("known@example.test", "nobody@example.test"):
        if via == "dashboard":
            client = client_for(tenant_owner)
            url = reverse("members", args=["tenant"])
            count, response = _queries_and(client.post, url, {"email": email, "role": "member"})
            page = client.get(response["Location"]).content.decode()
            shown = re.findall(r"Invitation sent to [^<]+", page)
            answer = (response.status_code, response["Location"], _neutral(str(shown), email))
        else:
            api = api_client_for(tenant_owner)
            url = "/api/organizations/tenant/members/"
            body = {"email": email, "role": "member"}
            count, response = _queries_and(api.post, url, body, format="json")
            answer = (response.status_code, _neutral(response.content.decode(), email))
        answers.append((count, answer, _neutral(mail.outbox[-1].body, email)))
    assert answers[0] == answers[1]
    status = answers[0][1][0]
    assert status == (302 if via == "dashboard" else 201)
    assert Invitation.objects.filter(email="known@example.test").exists()
    assert not Membership.objects.filter(user__username="known").exists()  # not added: invited
