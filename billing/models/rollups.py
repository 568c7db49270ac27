"""Usage rollups (hourly and daily aggregates of usage events) and the watermarks that
record how far each periodic job has gone."""

from __future__ import annotations

from django.db import models


class UsageRollup(models.Model):
    """Sums over the usage events of one bucket and one (tenant, key, model, channel).

    Rows are only ever written by ``billing.services.rollups``, which recomputes whole
    buckets under a lock, so a bucket and key appear at most once.
    """

    class Granularity(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"

    granularity = models.CharField(max_length=4, choices=Granularity.choices)
    bucket_start = models.DateTimeField(help_text="UTC start of the hour or day.")
    tenant = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="usage_rollups"
    )
    # The reseller that sold the usage (from the events' snapshot), for margin reports.
    reseller = models.ForeignKey(
        "portal.Organization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="resold_usage_rollups",
    )
    api_key = models.ForeignKey(
        "portal.ApiKey", on_delete=models.PROTECT, related_name="usage_rollups"
    )
    model = models.CharField(max_length=200)
    channel = models.ForeignKey(
        "portal.Channel",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="usage_rollups",
    )
    currency = models.CharField(max_length=3, blank=True)
    requests = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveBigIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cached_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    cost_retail_micros = models.BigIntegerField(default=0)
    cost_wholesale_micros = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["-bucket_start"]
        indexes = [
            models.Index(fields=["granularity", "bucket_start"]),
            models.Index(fields=["tenant", "granularity", "bucket_start"]),
            models.Index(fields=["reseller", "granularity", "bucket_start"]),
        ]

    def __str__(self) -> str:
        return f"{self.granularity} {self.bucket_start:%Y-%m-%d %H:00} {self.model}"


class BillingWatermark(models.Model):
    """How far a periodic job has gone; its row is also the job's lock."""

    ROLLUPS = "rollups"
    USAGE_CHARGES = "usage_charges"
    PRICE_CHANGES = "price_changes"
    # Raw usage events older than this were pruned: nothing before it can be recomputed.
    PRUNED_BEFORE = "pruned_before"

    name = models.CharField(max_length=50, unique=True)
    position = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"
