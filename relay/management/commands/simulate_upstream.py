"""``manage.py simulate_upstream``: serve the built-in fake OpenAI-compatible upstream.

A thin wrapper over ``relay.simulator`` so the demo can start everything through manage.py;
the options are the same as ``python -m relay.simulator``.
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.core.management.base import BaseCommand

from relay import simulator


class Command(BaseCommand):
    help = "Serve a simulated OpenAI-compatible upstream (see relay/simulator/)."
    # The simulator touches neither models nor the database; skipping the checks lets it
    # start even before migrations have run.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: ArgumentParser) -> None:
        simulator.add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        simulator.serve_from_arguments(options)
