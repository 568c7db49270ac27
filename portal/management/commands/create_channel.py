"""``manage.py create_channel``: connect an upstream provider and the models it serves."""

from __future__ import annotations

import json
import os
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from portal.models import Channel
from portal.models.channels import (
    NATIVE_SURFACE_CHOICES,
    NATIVE_SURFACE_PROVIDERS,
    validate_native_surfaces,
)
from portal.services import channel_create

ACTOR = "cli:create_channel"


def parse_models(spec: str) -> dict[str, str]:
    """``a,b=upstream-b`` → {"a": "a", "b": "upstream-b"}."""
    names: dict[str, str] = {}
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        public_id, _, upstream = item.partition("=")
        public_id, upstream = public_id.strip(), upstream.strip()
        if not public_id:
            raise CommandError(f"Bad --models entry {item!r}: expected public[=upstream].")
        if public_id in names:
            raise CommandError(f"Model {public_id!r} is listed twice in --models.")
        names[public_id] = upstream or public_id
    if not names:
        raise CommandError("--models needs at least one model id.")
    return names


def parse_native_surfaces(spec: str, provider_type: str) -> list[str]:
    """``responses,messages`` → ["responses", "messages"]: the dashboard form's choices,
    and, as there, only for the provider types that show them. The form drops ticks left
    in its hidden field; a flag given on the command line is refused instead."""
    surfaces = list(dict.fromkeys(item.strip() for item in spec.split(",") if item.strip()))
    try:
        validate_native_surfaces(surfaces)
    except ValidationError as exc:
        raise CommandError(f"--native-surfaces: {' '.join(exc.messages)}") from None
    if surfaces and provider_type not in NATIVE_SURFACE_PROVIDERS:
        raise CommandError(
            "--native-surfaces is for OpenAI-compatible channels only; a "
            f"{provider_type} channel's requests are all translated to its own protocol."
        )
    return surfaces


class Command(BaseCommand):
    help = "Create an upstream channel; its secret is stored encrypted."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("--name", required=True)
        parser.add_argument(
            "--base-url",
            default="",
            help="Up to and including /v1, e.g. https://api.openai.com/v1 (optional for "
            "providers with a well-known endpoint)",
        )
        secret = parser.add_mutually_exclusive_group(required=True)
        secret.add_argument(
            "--secret-env",
            metavar="VAR",
            help="Name of the environment variable holding the upstream API key (preferred).",
        )
        secret.add_argument(
            "--secret-file",
            metavar="PATH",
            help="A file holding the secret, e.g. a Vertex service-account JSON key.",
        )
        secret.add_argument(
            "--secret",
            metavar="S",
            help="The upstream API key itself (visible in the process list and shell history).",
        )
        parser.add_argument(
            "--models",
            required=True,
            metavar="PUBLIC[=UPSTREAM],...",
            help="Public model ids, each optionally with the name the provider uses.",
        )
        parser.add_argument("--priority", type=int, default=0)
        parser.add_argument("--weight", type=int, default=1)
        parser.add_argument(
            "--provider-type",
            choices=Channel.ProviderType.values,
            default=Channel.ProviderType.OPENAI,
        )
        parser.add_argument(
            "--provider-settings",
            metavar="JSON",
            default="{}",
            help='Not secret, e.g. {"region": "us-east-1"} for Bedrock, {"location": '
            '"us-central1"} for Vertex, {"resource": "contoso", "api_version": "2024-10-21", '
            '"deployments": {"gpt-4o": "prod-gpt4o"}} for Azure.',
        )

        parser.add_argument(
            "--native-surfaces",
            metavar="SURFACE,...",
            default="",
            help=f"APIs the upstream serves itself ({', '.join(NATIVE_SURFACE_CHOICES)}); "
            "requests on the others are translated to chat completions. OpenAI-compatible "
            "channels only.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["secret_env"]:
            secret = os.environ.get(options["secret_env"], "")
            if not secret:
                raise CommandError(
                    f"Environment variable {options['secret_env']} is unset or empty "
                    "(use --secret '' for an upstream that needs no key)."
                )
        elif options["secret_file"]:
            try:
                with open(options["secret_file"], encoding="utf-8") as handle:
                    secret = handle.read().strip()
            except OSError as exc:
                raise CommandError(f"Cannot read {options['secret_file']}: {exc}") from exc
        else:
            secret = options["secret"]
            if secret:
                self.stderr.write("Note: --secret-env keeps the secret out of shell history.")
        models = parse_models(options["models"])
        surfaces = parse_native_surfaces(options["native_surfaces"], options["provider_type"])
        try:
            settings = json.loads(options["provider_settings"])
        except ValueError:
            raise CommandError("--provider-settings must be a JSON object.") from None
        try:
            channel = channel_create(
                name=options["name"],
                base_url=options["base_url"],
                secret=secret,
                actor=ACTOR,
                models=models,
                priority=options["priority"],
                weight=options["weight"],
                provider_type=options["provider_type"],
                provider_settings=settings if isinstance(settings, dict) else {"": settings},
                native_surfaces=surfaces,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        served = ", ".join(
            public if public == upstream else f"{public} (as {upstream})"
            for public, upstream in models.items()
        )
        where = channel.base_url or f"{channel.provider_type}'s endpoint"
        native = f" (natively: {', '.join(surfaces)})" if surfaces else ""
        self.stderr.write(f"Channel {channel.name!r} → {where} serves {served}{native}.")
        self.stdout.write(channel.name)
