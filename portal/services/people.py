"""Logins: creating a person's account, for ``manage.py create_user`` and invitations."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction

from portal.models import AuditEntry
from portal.services.common import Actor


def email_has_login(email: str) -> bool:
    """Whether a login already uses ``email``. Only for the holder of an invitation to
    that address (it tells them to sign in), never for whoever sent it."""
    return get_user_model().objects.filter(email__iexact=email.strip()).exists()


@transaction.atomic
def user_create(
    *,
    username: str,
    email: str,
    password: str,
    actor: Actor,
    is_staff: bool = False,
) -> User:
    """A login with a password checked by the configured validators.

    ``is_staff`` makes an operator (staff and superuser: the Django admin, every
    organisation). ValidationError when the username is taken or the password too weak.
    """
    model = get_user_model()
    username = username.strip()
    if not username:
        raise ValidationError({"username": "A username is needed."})
    if model.objects.filter(username__iexact=username).exists():
        raise ValidationError({"username": "That username is taken: choose another."})
    user = model(username=username, email=email.strip(), is_staff=is_staff, is_superuser=is_staff)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise ValidationError({"password": exc.messages}) from exc
    user.set_password(password)
    user.full_clean(exclude=["password"])
    user.save()
    AuditEntry.record(
        actor=actor,
        action="user.create",
        target=user,
        data={"username": user.username, "email": user.email, "staff": is_staff},
    )
    return user
