"""``manage.py rotate_encryption_key``: re-encrypt every channel secret under the newest key.

Rotation, step by step (docs/operations.md): put a new key first in
``TOLLGATE_ENCRYPTION_KEYS`` (``new,old``) on every process, run this command, then drop the
old key. Secrets already under the newest key are left alone, so reruns change nothing.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portal import crypto
from portal.models import Channel

BATCH_SIZE = 200


def _under_newest(token: str, newest: Fernet) -> bool:
    try:
        newest.decrypt(token.encode())
    except InvalidToken:
        return False
    return True


class Command(BaseCommand):
    help = (
        "Re-encrypt every channel's upstream secret with the first key of "
        "TOLLGATE_ENCRYPTION_KEYS. --check only reports; --generate prints a new key."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="Change nothing; exit with status 1 if any secret is not under the newest key.",
        )
        parser.add_argument(
            "--generate", action="store_true", help="Print a new Fernet key and exit."
        )

    def handle(self, *args: Any, check: bool, generate: bool, **options: Any) -> None:
        if generate:
            self.stdout.write(Fernet.generate_key().decode())
            return
        keys = [key for key in settings.TOLLGATE_ENCRYPTION_KEYS if key]
        try:
            newest = Fernet(keys[0].encode())
        except (IndexError, ValueError) as exc:
            raise CommandError("TOLLGATE_ENCRYPTION_KEYS has no valid first key.") from exc
        ids = list(
            Channel.objects.exclude(secret_ciphertext="")
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        stale = rotated = 0
        for start in range(0, len(ids), BATCH_SIZE):
            with transaction.atomic():
                batch = Channel.objects.select_for_update().filter(
                    pk__in=ids[start : start + BATCH_SIZE]
                )
                for channel in batch:
                    if _under_newest(channel.secret_ciphertext, newest):
                        continue
                    stale += 1
                    if check:
                        continue
                    try:
                        channel.secret_ciphertext = crypto.rotate_secret(channel.secret_ciphertext)
                    except InvalidToken:
                        raise CommandError(
                            f"The secret of channel {channel.pk} ({channel.name}) cannot be "
                            "decrypted with any key in TOLLGATE_ENCRYPTION_KEYS. Its batch was "
                            "rolled back; rerun once the key is restored (done ones are skipped)."
                        ) from None
                    # Only the ciphertext changes: the relay's cached plaintext stays right.
                    channel.save(update_fields=["secret_ciphertext"])
                    rotated += 1
        if check:
            self.stdout.write(f"{len(ids)} channel secrets, {stale} not under the newest key.")
            if stale:
                raise CommandError("Some secrets still need rotating.", returncode=1)
            return
        self.stdout.write(
            f"Re-encrypted {rotated} of {len(ids)} channel secrets under the newest key; "
            "the older keys can now be removed from TOLLGATE_ENCRYPTION_KEYS."
        )
