"""``manage.py import_price_catalog``: the shipped price catalog into the wholesale list.

Creates the catalog's models that are missing (with their context windows and
capabilities) and prices those without a wholesale price at the provider's list price.
Entries no provider page confirmed (``"checked": null`` in the catalog) are imported too,
and listed as unverified so the operator checks them before relying on them.
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
        unverified = catalog.unverified_ids()
        span = (
            f"{len(checked)} checked against the provider's page {checked[0]:%Y-%m-%d} to "
            f"{checked[-1]:%Y-%m-%d}"
            if checked
            else "none checked against a provider's page"
        )
        self.stdout.write(f"Catalog of {len(catalog.entries)} models ({catalog.currency}): {span}.")
        if unverified:
            self.stdout.write(
                f"Unverified (no provider page confirmed these figures; they are as first "
                f"published, check them before relying on them): {', '.join(unverified)}"
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
