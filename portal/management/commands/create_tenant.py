"""``manage.py create_tenant``: add a tenant (or, with --reseller, a reseller) to the tree."""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portal.models import Organization
from portal.services import organization_create

ACTOR = "cli:create_tenant"


class Command(BaseCommand):
    help = (
        "Create a tenant (or a reseller) and print its slug. The platform organisation is "
        "created first if there is none."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", required=True, help="Display name; the slug derives from it.")
        parser.add_argument(
            "--parent", metavar="SLUG", help="Parent organisation (default: the platform)."
        )
        parser.add_argument(
            "--reseller", action="store_true", help="Create a reseller instead of a tenant."
        )

    def handle(
        self, *args: Any, name: str, parent: str | None, reseller: bool, **options: Any
    ) -> None:
        kind = Organization.Kind.RESELLER if reseller else Organization.Kind.TENANT
        try:
            with transaction.atomic():
                platform = Organization.objects.filter(kind=Organization.Kind.PLATFORM).first()
                if platform is None:
                    platform = organization_create(
                        name="Platform",
                        kind=Organization.Kind.PLATFORM,
                        slug="platform",
                        actor=ACTOR,
                    )
                    self.stderr.write(f"Created the platform organisation ({platform.slug}).")
                if parent:
                    parent_org = Organization.objects.filter(slug=parent).first()
                    if parent_org is None:
                        raise CommandError(f"No organisation with slug {parent!r}.")
                else:
                    parent_org = platform
                organization = organization_create(
                    name=name, kind=kind, parent=parent_org, actor=ACTOR
                )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        self.stderr.write(
            f"Created {organization.kind} {organization.name!r} under {parent_org.slug}."
        )
        self.stdout.write(organization.slug)
