"""``manage.py create_user``: a login for a person, optionally with a role somewhere.

The password comes from ``--password``, else from standard input when it is not a
terminal (for scripts: ``echo "$PW" | manage.py create_user …``), else from a prompt.
"""

from __future__ import annotations

import getpass
import sys
from argparse import ArgumentParser
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from portal.models import Membership, Organization
from portal.services import membership_add, user_create

ACTOR = "cli:create_user"


class Command(BaseCommand):
    help = (
        "Create a login (username = the e-mail address unless --username is given); "
        "--staff makes an operator; --org and --role give it a role in an organisation."
    )

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("email", help="The person's e-mail address.")
        parser.add_argument("--username", help="Sign-in name (default: the e-mail address).")
        parser.add_argument("--password", help="Avoid on shared machines: prefer stdin.")
        parser.add_argument("--staff", action="store_true", help="An operator (platform staff).")
        parser.add_argument("--org", metavar="SLUG", help="Organisation to give a role in.")
        parser.add_argument(
            "--role",
            choices=Membership.Role.values,
            default=Membership.Role.MEMBER,
            help="Role in --org (default: member).",
        )

    def _password(self, given: str | None) -> str:
        if given is not None:
            return given
        if not sys.stdin.isatty():
            return sys.stdin.readline().rstrip("\n")
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != first:
            raise CommandError("The passwords differ.")
        return first

    def handle(
        self,
        *args: Any,
        email: str,
        username: str | None,
        password: str | None,
        staff: bool,
        org: str | None,
        role: str,
        **options: Any,
    ) -> None:
        organization = None
        if org:
            organization = Organization.objects.filter(slug=org).first()
            if organization is None:
                raise CommandError(f"No organisation with slug {org!r}.")
        secret = self._password(password)
        try:
            with transaction.atomic():
                user = user_create(
                    username=username or email,
                    email=email,
                    password=secret,
                    is_staff=staff,
                    actor=ACTOR,
                )
                if organization is not None:
                    membership_add(organization=organization, user=user, role=role, actor=ACTOR)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        where = f", {role} of {organization.slug}" if organization is not None else ""
        self.stderr.write(f"Created {'operator' if staff else 'user'} {user.username}{where}.")
        self.stdout.write(user.username)
