"""``manage.py rotate_encryption_key`` re-encrypts every channel secret under the newest key."""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.management import CommandError, call_command

from portal.models import Channel

pytestmark = pytest.mark.django_db

OLD, NEW, STRANGER = (Fernet.generate_key().decode() for _ in range(3))


def make_channels(count: int) -> dict[int, str]:
    plain = {}
    for n in range(count):
        channel = Channel(name=f"c{n}", base_url="http://u.test/v1")
        channel.secret = f"sk-upstream-rotation-{n}"
        channel.save()
        plain[channel.pk] = f"sk-upstream-rotation-{n}"
    return plain


def rotate(*args: str) -> str:
    out = StringIO()
    call_command("rotate_encryption_key", *args, stdout=out)
    return out.getvalue()


def test_rotation_moves_every_secret_to_the_new_key(settings: Any) -> None:
    settings.TOLLGATE_ENCRYPTION_KEYS = [OLD]
    plain = make_channels(3)
    Channel.objects.create(name="no-secret", base_url="http://u.test/v1")
    before = dict(Channel.objects.values_list("pk", "secret_ciphertext"))

    settings.TOLLGATE_ENCRYPTION_KEYS = [NEW, OLD]
    with pytest.raises(CommandError, match="need rotating"):
        rotate("--check")
    assert "Re-encrypted 3 of 3" in rotate()
    rotate("--check")  # now clean: no error

    after = dict(Channel.objects.values_list("pk", "secret_ciphertext"))
    for pk, secret in plain.items():
        assert after[pk] != before[pk]
        assert Fernet(NEW.encode()).decrypt(after[pk].encode()).decode() == secret
        with pytest.raises(InvalidToken):
            Fernet(OLD.encode()).decrypt(after[pk].encode())
        assert secret not in after[pk]

    # The old key can go: every secret still reads with the new one alone.
    settings.TOLLGATE_ENCRYPTION_KEYS = [NEW]
    assert {c.pk: c.secret for c in Channel.objects.exclude(secret_ciphertext="")} == plain
    assert "Re-encrypted 0 of 3" in rotate()  # a rerun changes nothing
    assert dict(Channel.objects.values_list("pk", "secret_ciphertext")) == after


def test_a_secret_no_key_can_read_stops_the_rotation_loudly(settings: Any) -> None:
    settings.TOLLGATE_ENCRYPTION_KEYS = [STRANGER]
    make_channels(1)
    settings.TOLLGATE_ENCRYPTION_KEYS = [NEW, OLD]
    with pytest.raises(CommandError, match="cannot be decrypted"):
        rotate()


def test_generate_prints_a_usable_key() -> None:
    key = rotate("--generate").strip()
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"


def test_stripe_keys_and_sso_secrets_rotate_too(settings: Any, reseller_org: Any) -> None:
    from billing.models import StripeAccount
    from portal.models import SsoProvider

    settings.TOLLGATE_ENCRYPTION_KEYS = [OLD]
    stripe = StripeAccount(seller=reseller_org)
    stripe.secret_key = "sk_test_rotation"
    stripe.webhook_secret = "whsec_rotation"
    stripe.save()
    sso = SsoProvider(organization=reseller_org, key="r", issuer="https://id.test", client_id="c")
    sso.client_secret = "sso-rotation"
    sso.save()
    settings.TOLLGATE_ENCRYPTION_KEYS = [NEW, OLD]
    assert "Re-encrypted 3 of 3" in rotate()
    settings.TOLLGATE_ENCRYPTION_KEYS = [NEW]
    stripe.refresh_from_db()
    sso.refresh_from_db()
    assert (stripe.secret_key, stripe.webhook_secret) == ("sk_test_rotation", "whsec_rotation")
    assert sso.client_secret == "sso-rotation"
