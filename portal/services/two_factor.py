"""Optional TOTP two-factor for staff (django-otp): enrol, confirm with a first code,
remove. Each change is audited; the key never reaches an audit entry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ValidationError
from django.db import transaction
from django_otp.plugins.otp_totp.models import TOTPDevice

from portal.models import AuditEntry
from portal.services.common import Actor

if TYPE_CHECKING:
    from django.contrib.auth.models import User

DEVICE_NAME = "Authenticator app"


def has_confirmed_device(user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def pending_device(user: User) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=False).first()


@transaction.atomic
def totp_device_start(*, user: User) -> TOTPDevice:
    """A fresh, unconfirmed device with a new random key (any earlier pending one goes):
    it protects nothing until a code from it confirms it."""
    if not user.is_staff:
        raise ValidationError("Two-factor sign-in is offered to staff.")
    TOTPDevice.objects.filter(user=user, confirmed=False).delete()
    return TOTPDevice.objects.create(user=user, name=DEVICE_NAME, confirmed=False)


@transaction.atomic
def totp_device_confirm(*, device: TOTPDevice, token: str, actor: Actor) -> TOTPDevice:
    """Confirm enrolment with a code the app shows; from then on sign-in asks for one."""
    if device.confirmed:
        return device
    if not device.verify_token("".join(token.split())):
        raise ValidationError({"token": "This code is not right. Check the app's clock and retry."})
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    # One device per person: confirming a new one retires the old.
    TOTPDevice.objects.filter(user=device.user, confirmed=True).exclude(pk=device.pk).delete()
    AuditEntry.record(
        actor=actor,
        action="two_factor.enrol",
        target=device,
        data={"user": device.user.get_username()},
    )
    return device


@transaction.atomic
def totp_device_remove(*, user: User, actor: Actor) -> int:
    """Turn two-factor off for ``user``; returns how many devices went."""
    removed, _ = TOTPDevice.objects.filter(user=user).delete()
    if removed:
        AuditEntry.record(
            actor=actor,
            action="two_factor.remove",
            target=user,
            data={"user": user.get_username()},
        )
    return removed
