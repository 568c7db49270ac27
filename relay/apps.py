"""Django app configuration for relay."""

from __future__ import annotations

from django.apps import AppConfig


class RelayConfig(AppConfig):
    name = "relay"
    default_auto_field = "django.db.models.BigAutoField"
