"""``manage.py seed_demo``: everything a newcomer needs to curl a completion at once.

Creates the platform, an operator login, a demo tenant with an owner, two simulated
models, a channel to the built-in simulator and an API key whose secret is kept in a
file (mode 0600). The tenant is prepaid with a demo credit and a monthly budget, so the
key works at once and a little traffic moves the money pages. Safe to re-run: existing
objects are reused, the channel follows --upstream, terms are set only on a tenant that
has none, and a new key is issued only when the file no longer holds a usable one.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import tempfile
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from billing.models import BillingAccount, ModelPrice, PriceList
from billing.services import (
    account_topup,
    billing_account_create,
    model_price_set,
    price_list_create,
)
from portal import services
from portal.crypto import API_KEY_VISIBLE_CHARS
from portal.models import ApiKey, CatalogModel, Channel, Membership, Organization

ACTOR = "cli:seed_demo"
TENANT_SLUG = "demo"
TENANT_NAME = "Demo Tenant"
OWNER_USERNAME = "demo-owner"
CHANNEL_NAME = "Simulator"
KEY_NAME = "demo"
MODELS = ("sim-small", "sim-large", "sim-embed")
EMBEDDING_MODELS = ("sim-embed",)
# Micro-units per million tokens (input, output): $0.15/$0.60, $2.50/$10 and $0.02/0.
DEMO_PRICES = {
    "sim-small": (150_000, 600_000),
    "sim-large": (2_500_000, 10_000_000),
    "sim-embed": (20_000, 0),
}
# The simulator serves the Responses and Messages APIs itself: they pass through, and
# stored responses and previous_response_id work in the demo.
NATIVE_SURFACES = ["responses", "messages"]
# The demo tenant's credit and its monthly budget (alerts at 50, 80 and 100 %, no hard stop).
DEMO_CREDIT_MICROS = 10_000_000
DEMO_BUDGET_MICROS = 1_000_000


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Command(BaseCommand):
    help = "Seed the embedded demo: operator login, tenant, simulated models, channel and key."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--upstream",
            default="http://127.0.0.1:9100/v1",
            help="Base URL of the simulated upstream, up to and including /v1.",
        )
        parser.add_argument("--username", default="admin", help="Operator (superuser) login.")
        parser.add_argument(
            "--password",
            help="Operator password; sets it even if the user exists. Generated when the "
            "user is new and none is given.",
        )
        parser.add_argument(
            "--key-file",
            type=Path,
            default=None,
            help="Where the demo key's secret is kept (default: var/demo-key.txt).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        key_file: Path = options["key_file"] or Path(settings.VAR_DIR) / "demo-key.txt"
        try:
            # One transaction: a failure part-way (even writing the key file) leaves nothing
            # behind, and the next run starts clean.
            with transaction.atomic():
                platform = self._platform()
                operator, password = self._operator(
                    platform, options["username"], options["password"]
                )
                tenant = self._tenant(platform)
                self._models()
                self._prices(platform)
                self._terms(tenant)
                channel = self._channel(options["upstream"])
                secret, new_key = self._api_key(tenant, key_file)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc

        out = self.stdout.write
        out("Tollgate demo is ready.")
        if password:
            out(f"  Operator login:  {operator.get_username()} / {password}")
        else:
            out(f"  Operator login:  {operator.get_username()} (password unchanged)")
        out(f"  Tenant:          {tenant.name} ({tenant.slug}), owner {OWNER_USERNAME}")
        out(f"  Models:          {', '.join(MODELS)} via {channel.name} → {channel.base_url}")
        out(f"  API key:         {secret}")
        out(f"  Key file:        {key_file}" + (" (new key)" if new_key else " (reused)"))
        body = json.dumps({"model": MODELS[0], "messages": [{"role": "user", "content": "Hello"}]})
        out(
            f"  Try:  curl {settings.TOLLGATE_PUBLIC_URL.rstrip('/')}/v1/chat/completions"
            f' -H "Authorization: Bearer $(cat {shlex.quote(str(key_file))})"'
            f" -H 'Content-Type: application/json' -d {shlex.quote(body)}"
        )

    def _platform(self) -> Organization:
        platform = Organization.objects.filter(kind=Organization.Kind.PLATFORM).first()
        return platform or services.organization_create(
            name="Platform", kind=Organization.Kind.PLATFORM, slug="platform", actor=ACTOR
        )

    def _operator(
        self, platform: Organization, username: str, password: str | None
    ) -> tuple[Any, str | None]:
        """The superuser; returns the password only when it was just set."""
        user_model = get_user_model()
        user = user_model.objects.filter(**{user_model.USERNAME_FIELD: username}).first()
        if user is None:
            password = password or secrets.token_urlsafe(12)
            user = user_model.objects.create_superuser(
                **{user_model.USERNAME_FIELD: username}, email="", password=password
            )
        else:
            if not (user.is_staff and user.is_superuser):
                user.is_staff = user.is_superuser = True
                user.save(update_fields=["is_staff", "is_superuser"])
                self.stderr.write(f"Made the existing user {username!r} a superuser.")
            if password:
                user.set_password(password)
                user.save(update_fields=["password"])
        if not Membership.objects.filter(user=user, organization=platform).exists():
            services.membership_add(
                organization=platform, user=user, role=Membership.Role.OWNER, actor=ACTOR
            )
        return user, password

    def _tenant(self, platform: Organization) -> Organization:
        tenant = Organization.objects.filter(slug=TENANT_SLUG).first()
        if tenant is None:
            tenant = services.organization_create(
                name=TENANT_NAME,
                kind=Organization.Kind.TENANT,
                parent=platform,
                slug=TENANT_SLUG,
                actor=ACTOR,
            )
        elif not tenant.is_tenant:
            raise CommandError(f"The organisation {TENANT_SLUG!r} exists but is a {tenant.kind}.")
        user_model = get_user_model()
        owner = user_model.objects.filter(**{user_model.USERNAME_FIELD: OWNER_USERNAME}).first()
        if owner is None:
            # No password: the owner is for the dashboard; set one with `changepassword`.
            owner = user_model.objects.create_user(
                **{user_model.USERNAME_FIELD: OWNER_USERNAME}, email="", password=None
            )
        if not Membership.objects.filter(user=owner, organization=tenant).exists():
            services.membership_add(
                organization=tenant, user=owner, role=Membership.Role.OWNER, actor=ACTOR
            )
        return tenant

    def _models(self) -> None:
        existing = set(
            CatalogModel.objects.filter(public_id__in=MODELS).values_list("public_id", flat=True)
        )
        # Only missing entries are written, so an operator's later edits survive a re-run.
        for public_id in MODELS:
            if public_id not in existing:
                embedding = public_id in EMBEDDING_MODELS
                services.catalog_model_upsert(
                    public_id=public_id,
                    actor=ACTOR,
                    capabilities=["embeddings"] if embedding else ["chat"],
                    surfaces=["embeddings"] if embedding else None,
                    description="Simulated model answered by the built-in upstream simulator.",
                )

    def _prices(self, platform: Organization) -> None:
        """A wholesale list pricing the demo models; the relay serves nothing unpriced."""
        wholesale = PriceList.objects.filter(owner=platform, is_default=True).first()
        if wholesale is None:
            wholesale = price_list_create(
                owner=platform, name="Wholesale", actor=ACTOR, is_default=True
            )
        priced = set(
            ModelPrice.objects.filter(price_list=wholesale).values_list(
                "model__public_id", flat=True
            )
        )
        for public_id, (input_price, output_price) in DEMO_PRICES.items():
            if public_id not in priced:  # an operator's own prices survive a re-run
                model_price_set(
                    price_list=wholesale,
                    model=CatalogModel.objects.get(public_id=public_id),
                    input_per_mtok=input_price,
                    output_per_mtok=output_price,
                    actor=ACTOR,
                )

    def _terms(self, tenant: Organization) -> None:
        """Prepaid with a demo credit and a budget, unless the tenant has terms already."""
        if BillingAccount.objects.filter(organization=tenant).exists():
            return  # an operator's terms (and the balance left) survive a re-run
        account = billing_account_create(
            organization=tenant,
            actor=ACTOR,
            mode=BillingAccount.Mode.PREPAID,
            monthly_budget_micros=DEMO_BUDGET_MICROS,
        )
        account_topup(
            account=account, amount_micros=DEMO_CREDIT_MICROS, actor=ACTOR, memo="Demo credit"
        )

    def _channel(self, upstream: str) -> Channel:
        channel = Channel.objects.filter(name=CHANNEL_NAME).first()
        if channel is None:
            # The simulator accepts any bearer token; a random one keeps secrets out of code.
            channel = services.channel_create(
                name=CHANNEL_NAME,
                base_url=upstream,
                secret=secrets.token_urlsafe(24),
                actor=ACTOR,
                models=MODELS,
            )
            return services.channel_update(
                channel=channel, actor=ACTOR, native_surfaces=NATIVE_SURFACES
            )
        services.channel_edit(
            channel=channel,
            actor=ACTOR,
            models=MODELS,
            base_url=upstream,
            native_surfaces=NATIVE_SURFACES,
        )
        return channel

    def _api_key(self, tenant: Organization, key_file: Path) -> tuple[str, bool]:
        """The demo key's secret, and whether the key was issued just now."""
        try:
            secret = key_file.read_text().strip()
        except FileNotFoundError:
            secret = ""
        if secret:
            candidates = ApiKey.objects.filter(
                tenant=tenant, prefix=secret[:API_KEY_VISIBLE_CHARS], status=ApiKey.Status.ACTIVE
            )
            if any(key.matches(secret) and key.is_usable() for key in candidates):
                key_file.chmod(0o600)
                return secret, False
        _, secret = services.api_key_create(tenant=tenant, name=KEY_NAME, actor=ACTOR)
        _write_private(key_file, secret + "\n")
        return secret, True
