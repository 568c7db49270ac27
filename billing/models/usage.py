"""Usage events: one row per relay request, the source of every bill.

Each event keeps the retail and wholesale prices it was charged at (written by the relay
from ``billing.pricing.event_cost_fields``), so later price changes never rewrite it.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone


def _price_field(help_text: str) -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(null=True, blank=True, help_text=help_text)


class UsageEvent(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True, help_text="When the request arrived.")
    # Every index costs each written event an insertion, at one row per request: the
    # foreign keys below are found through the (key, created_at) indexes of ``Meta``, whose
    # first column serves a lookup by the key alone, rather than by indexes of their own.
    tenant = models.ForeignKey(
        "portal.Organization",
        on_delete=models.PROTECT,
        related_name="usage_events",
        db_index=False,
    )
    api_key = models.ForeignKey(
        "portal.ApiKey", on_delete=models.PROTECT, related_name="usage_events", db_index=False
    )
    model = models.CharField(max_length=200, help_text="Public model id the client asked for.")
    surface = models.CharField(
        max_length=16,
        default="chat",
        help_text="The client API: chat, responses, messages, embeddings or completions.",
    )
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
    # Prompt tokens the provider wrote to its cache (Anthropic's cache_creation_input_tokens);
    # part of prompt_tokens. Those written for an hour are also counted apart.
    cache_write_tokens = models.PositiveIntegerField(default=0)
    cache_write_1h_tokens = models.PositiveIntegerField(default=0)
    # Parts of prompt_tokens and completion_tokens by modality, and images by count.
    audio_input_tokens = models.PositiveIntegerField(default=0)
    audio_output_tokens = models.PositiveIntegerField(default=0)
    image_input_tokens = models.PositiveIntegerField(default=0)
    image_output_tokens = models.PositiveIntegerField(default=0)
    input_images = models.PositiveIntegerField(default=0)
    output_images = models.PositiveIntegerField(default=0)
    # Searches the provider ran for the request (its web search tool), billed per call.
    # A default in the database too: relay processes of the version before, still running
    # while an upgrade migrates, write their events without it.
    web_search_calls = models.PositiveIntegerField(default=0, db_default=0)
    # The service tier the provider served the request on: "", "flex" or "priority".
    service_tier = models.CharField(max_length=16, blank=True)
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
    # When the row was built for writing (not when the request arrived): periodic jobs
    # find newly written events by it, however late they arrive.
    recorded_at = models.DateTimeField(default=timezone.now, db_index=True)
    # --- Price snapshot (blank currency: the event was not priced) --------------------------
    currency = models.CharField(max_length=3, blank=True)
    reseller = models.ForeignKey(
        "portal.Organization",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="resold_usage_events",
        help_text="The reseller that sold this request, when the tenant has one.",
        db_index=False,
    )
    retail_input_per_mtok = _price_field("Micro-units per million uncached prompt tokens.")
    retail_cached_input_per_mtok = _price_field("Micro-units per million cached tokens.")
    retail_output_per_mtok = _price_field("Micro-units per million completion tokens.")
    retail_request_fee_micros = _price_field("Micro-units per request.")
    wholesale_input_per_mtok = _price_field("Micro-units per million uncached prompt tokens.")
    wholesale_cached_input_per_mtok = _price_field("Micro-units per million cached tokens.")
    wholesale_output_per_mtok = _price_field("Micro-units per million completion tokens.")
    wholesale_request_fee_micros = _price_field("Micro-units per request.")
    # Whether the prompt crossed the long-context threshold, so tier prices applied.
    long_context = models.BooleanField(default=False)
    # What each priced dimension charged: {dimension: [quantity, retail unit price, retail
    # micros, wholesale unit price, wholesale micros]}; the costs below are their sums.
    charges = models.JSONField(default=dict, blank=True)
    cost_retail_micros = models.BigIntegerField(default=0)
    cost_wholesale_micros = models.BigIntegerField(default=0)
    # The issued invoices that list this event, retail and wholesale (set at issue): an
    # event recorded after its period's invoice was issued goes on the next one.
    # Blank when written: indexed only once set (partial indexes), so a new event costs
    # neither index an insertion.
    tenant_invoice = models.ForeignKey(
        "billing.Invoice",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )
    reseller_invoice = models.ForeignKey(
        "billing.Invoice",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["tenant", "created_at"]),
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["reseller", "created_at"]),
            models.Index(
                fields=["tenant_invoice"],
                name="usageevent_tenant_invoice",
                condition=models.Q(tenant_invoice__isnull=False),
            ),
            models.Index(
                fields=["reseller_invoice"],
                name="usageevent_reseller_invoice",
                condition=models.Q(reseller_invoice__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.request_id} {self.model} {self.status_code}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def is_priced(self) -> bool:
        return bool(self.currency)
