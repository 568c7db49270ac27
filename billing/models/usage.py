"""Usage events: one row per relay request, the source of every bill."""

from __future__ import annotations

from django.db import models


class UsageEvent(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True, help_text="When the request arrived.")
    tenant = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="usage_events"
    )
    api_key = models.ForeignKey(
        "portal.ApiKey", on_delete=models.PROTECT, related_name="usage_events"
    )
    model = models.CharField(max_length=200, help_text="Public model id the client asked for.")
    channel = models.ForeignKey(
        "portal.Channel",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_events",
    )
    upstream_model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    cached_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(default=0)
    # True when the upstream reported no usage and the counts come from our tokenizer.
    estimated = models.BooleanField(default=False)
    stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    error_code = models.CharField(max_length=64, blank=True)
    # Whether the client received the whole response (a stream may be cut short).
    completed = models.BooleanField(default=True)
    upstream_latency_ms = models.PositiveIntegerField(null=True, blank=True)
    total_latency_ms = models.PositiveIntegerField()
    attempts = models.JSONField(
        default=list, blank=True, help_text="Each upstream attempt: channel, status, latency."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status_code}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens
