"""Django app configuration for portal."""

from __future__ import annotations

from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Portal"

    def ready(self) -> None:
        from portal import invalidation

        invalidation.connect()
