"""``manage.py rotate_encryption_key``: re-encrypt every stored secret under the newest key.

Rotation, step by step (docs/operations.md): put a new key first in
``TOLLGATE_ENCRYPTION_KEYS`` (``new,old``) on every process, run this command, then drop the
old key. Secrets already under the newest key are left alone, so reruns change nothing.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.db.models import Model

from portal import crypto

BATCH_SIZE = 200


def encrypted_fields() -> list[tuple[type[Model], str]]:
    """Every ``*_ciphertext`` column of every installed model: channel secrets, and the
    secrets other apps keep the same way (Stripe keys, SSO client secrets), found through
    the app registry so the portal imports none of those apps."""
    return [
        (model, field.name)
        for model in apps.get_models()
        for field in model._meta.concrete_fields
        if field.name.endswith("_ciphertext")
    ]


def _under_newest(token: str, newest: Fernet) -> bool:
    try:
        newest.decrypt(token.encode())
    except InvalidToken:
        return False
    return True


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret (channels, Stripe keys, SSO client secrets) with the "
        "first key of "
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
        total = stale = rotated = 0
        for model, field in encrypted_fields():
            ids = list(
                model._default_manager.exclude(**{field: ""})
                .order_by("pk")
                .values_list("pk", flat=True)
            )
            total += len(ids)
            for begin in range(0, len(ids), BATCH_SIZE):
                with transaction.atomic():
                    batch = model._default_manager.select_for_update().filter(
                        pk__in=ids[begin : begin + BATCH_SIZE]
                    )
                    for row in batch:
                        token = getattr(row, field)
                        if _under_newest(token, newest):
                            continue
                        stale += 1
                        if check:
                            continue
                        try:
                            setattr(row, field, crypto.rotate_secret(token))
                        except InvalidToken:
                            raise CommandError(
                                f"The {field} of {model._meta.label} {row.pk} ({row}) cannot be "
                                "decrypted with any key in TOLLGATE_ENCRYPTION_KEYS. Its batch "
                                "was rolled back; rerun once the key is restored (done ones are "
                                "skipped)."
                            ) from None
                        # Only the ciphertext changes: cached plaintexts stay right.
                        row.save(update_fields=[field])
                        rotated += 1
        if check:
            self.stdout.write(f"{total} stored secrets, {stale} not under the newest key.")
            if stale:
                raise CommandError("Some secrets still need rotating.", returncode=1)
            return
        self.stdout.write(
            f"Re-encrypted {rotated} of {total} stored secrets (channels, Stripe keys, SSO "
            "client secrets) under the newest key; the older keys can now be removed from "
            "TOLLGATE_ENCRYPTION_KEYS."
        )
