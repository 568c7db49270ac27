"""The audit log: who changed which object, and when."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class AuditEntry(models.Model):
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Kept even when the user is deleted, and names scripts and commands that act alone.
    actor_label = models.CharField(max_length=200, blank=True)
    organization = models.ForeignKey(
        "portal.Organization", null=True, blank=True, on_delete=models.SET_NULL
    )
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "audit entries"

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label} {self.action}"

    @classmethod
    def record(
        cls,
        *,
        actor: Any,
        action: str,
        target: models.Model,
        organization: Any = None,
        data: dict[str, Any] | None = None,
    ) -> AuditEntry:
        """Write one entry; call inside the transaction that makes the change."""
        label = actor if isinstance(actor, str) else (actor.get_username() if actor else "")
        return cls.objects.create(
            actor=None if isinstance(actor, str) else actor,
            actor_label=label,
            organization=organization,
            action=action,
            target_type=target._meta.label_lower,
            target_id=str(target.pk),
            data=data or {},
        )
