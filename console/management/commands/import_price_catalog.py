"""``manage.py import_price_catalog``: the shipped price catalog into the wholesale list.

Creates the catalog's models that are missing (with their context windows and
capabilities) and prices those without a wholesale price at the provider's list price.
No network is used: the catalog ships in ``billing/catalog/models.json``. Running it
again changes nothing; ``--reprice`` brings models priced otherwise to the catalog.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from billing.catalog import load
from billing.services import price_catalog_import

ACTOR = "cli:import_price_catalog"


class Command(BaseCommand):
    help = "Import the shipped price catalog into the platform's wholesale price list."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--reprice",
            action="store_true",
            help="Also give models priced otherwise the catalog's price, from now on.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        catalog = load()
        try:
            result = price_catalog_import(actor=ACTOR, reprice=options["reprice"])
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        checked = sorted({entry.checked for entry in catalog.entries})
        self.stdout.write(
            f"Catalog of {len(catalog.entries)} models ({catalog.currency}), figures checked "
            f"{checked[0]:%Y-%m-%d} to {checked[-1]:%Y-%m-%d}."
        )
        for label, ids in (
            ("Models created", result.models_created),
            ("Models completed", result.models_completed),
            ("Priced", result.priced),
            ("Repriced", result.repriced),
            ("Kept (priced otherwise; --reprice to change)", result.kept),
        ):
            if ids:
                self.stdout.write(f"{label}: {', '.join(ids)}")
        if not result.changed:
            self.stdout.write("Nothing to change.")
