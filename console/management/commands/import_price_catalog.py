"""``manage.py import_price_catalog``: the shipped price catalog into the wholesale list.

Creates the catalog's models that are missing (with their context windows and
capabilities) and prices those without a wholesale price at the provider's list price.
Every entry was checked against the provider's page on its ``checked`` date; those whose
page was read through a copy held elsewhere are listed with the day that copy read it.
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
        checked = catalog.checked_dates()
        self.stdout.write(
            f"Catalog of {len(catalog.entries)} models ({catalog.currency}), checked against "
            f"the provider's page {checked[0]:%Y-%m-%d} to {checked[-1]:%Y-%m-%d}."
        )
        copies = [
            f"{entry.id} (copy read {entry.source_copy_read:%Y-%m-%d})"
            for entry in catalog.entries
            if entry.source_copy_read is not None
        ]
        if copies:
            self.stdout.write(
                "Checked through a copy of the provider's page (see the catalog's notes): "
                + ", ".join(copies)
            )
        for label, ids in (
            ("Models created", result.models_created),
            ("Models completed", result.models_completed),
            ("Priced", result.priced),
            ("Repriced", result.repriced),
            ("Kept (priced otherwise; --reprice to change)", result.kept),
            ("Announced later prices scheduled", result.scheduled),
        ):
            if ids:
                self.stdout.write(f"{label}: {', '.join(ids)}")
        if not result.changed:
            self.stdout.write("Nothing to change.")
