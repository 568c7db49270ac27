"""``manage.py create_api_key``: issue a relay key; only the secret goes to stdout.

Scripts capture it with ``KEY=$(manage.py create_api_key ...)``; everything else is
written to stderr.
"""

from __future__ import annotations

from argparse import ArgumentParser
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from portal.models import CatalogModel, Organization
from portal.services import api_key_create

ACTOR = "cli:create_api_key"


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


class Command(BaseCommand):
    help = "Create an API key for a tenant and print its secret (shown only this once)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--tenant", required=True, metavar="SLUG")
        parser.add_argument("--name", required=True, help="A label to tell keys apart.")
        parser.add_argument(
            "--models",
            default="",
            metavar="A,B",
            help="Comma-separated public model ids the key may use (default: all).",
        )
        parser.add_argument(
            "--expires-days", type=_positive_int, metavar="N", help="Expire after N days."
        )

    def handle(
        self,
        *args: Any,
        tenant: str,
        name: str,
        models: str,
        expires_days: int | None,
        **options: Any,
    ) -> None:
        organization = Organization.objects.filter(slug=tenant).first()
        if organization is None:
            raise CommandError(f"No organisation with slug {tenant!r}.")
        allowed = list(dict.fromkeys(m.strip() for m in models.split(",") if m.strip()))
        known = set(
            CatalogModel.objects.filter(public_id__in=allowed).values_list("public_id", flat=True)
        )
        for model_id in allowed:
            if model_id not in known:
                # A warning, not an error: the catalog may be filled in after the keys.
                self.stderr.write(f"Warning: {model_id!r} is not in the model catalog (yet).")
        expires_at = timezone.now() + timedelta(days=expires_days) if expires_days else None
        try:
            key, secret = api_key_create(
                tenant=organization,
                name=name,
                actor=ACTOR,
                expires_at=expires_at,
                allowed_models=allowed,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        expiry = f", expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else ""
        self.stderr.write(
            f"Created key {key.name!r} ({key.prefix}…) for {organization.slug}{expiry}. "
            "Its secret, on stdout, is not stored and cannot be shown again."
        )
        self.stdout.write(secret)
