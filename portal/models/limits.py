"""Usage limits shared by API keys and tenants, enforced by the relay across processes."""

from __future__ import annotations

from django.db import models


class LimitFields(models.Model):
    """Per-minute, concurrency and daily caps; blank means no limit at this level."""

    rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="requests per minute"
    )
    tpm_limit = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens per minute")
    concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="concurrent requests"
    )
    daily_token_limit = models.PositiveBigIntegerField(
        null=True, blank=True, verbose_name="tokens per day (UTC)"
    )
    channel_groups = models.JSONField(
        default=list,
        blank=True,
        help_text='Channel groups allowed, e.g. ["default", "premium"]; empty means any.',
    )

    class Meta:
        abstract = True
