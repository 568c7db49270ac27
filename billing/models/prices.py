"""Price lists: plain money per million tokens, per model, changing over time.

The platform's default list is the wholesale list: resellers and direct tenants buy at
it. A reseller keeps its own lists for its tenants, with explicit prices per model, a
markup over wholesale, or both (an explicit price wins over the markup for its model).
Prices are never edited in place: a change is a new row with a later ``effective_from``,
so every past usage event can still be explained by the price that was in force.
"""

from __future__ import annotations

from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator
from django.db import models


def default_currency() -> str:
    return settings.BILLING_DEFAULT_CURRENCY


def _optional(help_text: str) -> models.PositiveBigIntegerField:
    return models.PositiveBigIntegerField(null=True, blank=True, help_text=help_text)


class PriceList(models.Model):
    owner = models.ForeignKey(
        "portal.Organization", on_delete=models.PROTECT, related_name="price_lists"
    )
    name = models.CharField(max_length=200)
    currency = models.CharField(
        max_length=3, default=default_currency, help_text="ISO 4217 code, e.g. USD."
    )
    is_default = models.BooleanField(
        default=False,
        help_text="The owner's default list: for the platform, the wholesale list; for a "
        "reseller, the list of tenants that were given none.",
    )
    markup_percent = models.DecimalField(
        max_digits=9,
        decimal_places=4,
        null=True,
        blank=True,
        validators=[MinValueValidator(Decimal("-100"))],
        help_text="Models without an explicit price in this list cost wholesale plus this "
        "percentage; blank: only explicitly priced models are sold.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner"], condition=models.Q(is_default=True), name="one_default_list"
            ),
            models.UniqueConstraint(fields=["owner", "name"], name="unique_price_list_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.currency})"

    def clean(self) -> None:
        self.currency = (self.currency or "").upper()
        if len(self.currency) != 3 or not self.currency.isalpha():
            raise ValidationError({"currency": "Give a three-letter ISO 4217 code."})
        if self.owner_id and self.owner.kind == "tenant":
            raise ValidationError({"owner": "Tenants buy from price lists; they own none."})
        if self.markup_percent is not None and self.owner_id and self.owner.kind == "platform":
            raise ValidationError(
                {"markup_percent": "The platform's lists hold explicit wholesale prices."}
            )


class ModelPrice(models.Model):
    """What one model costs in one list from ``effective_from`` until the next row."""

    price_list = models.ForeignKey(PriceList, on_delete=models.PROTECT, related_name="prices")
    model = models.ForeignKey(
        "portal.CatalogModel", on_delete=models.PROTECT, related_name="prices"
    )
    input_per_mtok = models.PositiveBigIntegerField(
        help_text="Micro-units per million uncached prompt tokens."
    )
    cached_input_per_mtok = models.PositiveBigIntegerField(
        help_text="Micro-units per million cached prompt tokens."
    )
    output_per_mtok = models.PositiveBigIntegerField(
        help_text="Micro-units per million completion tokens (reasoning included)."
    )
    request_fee_micros = models.PositiveBigIntegerField(
        default=0, help_text="Micro-units per billed request, on top of tokens."
    )
    # The dimensions below are blank for "as the text price" (cache writes and audio and
    # image tokens) or "nothing" (per image): a price set before they existed still reads
    # as it did. ``billing.pricing`` resolves them.
    cache_write_5m_per_mtok = _optional(
        "Micro-units per million prompt tokens written to a 5-minute cache; blank: the input price."
    )
    cache_write_1h_per_mtok = _optional(
        "Micro-units per million prompt tokens written to a 1-hour cache; blank: the input price."
    )
    audio_input_per_mtok = _optional(
        "Micro-units per million audio prompt tokens; blank: the input price."
    )
    audio_output_per_mtok = _optional(
        "Micro-units per million audio completion tokens; blank: the output price."
    )
    image_input_per_mtok = _optional(
        "Micro-units per million image prompt tokens; blank: the input price."
    )
    image_output_per_mtok = _optional(
        "Micro-units per million image completion tokens; blank: the output price."
    )
    input_image_micros = _optional("Micro-units per input image, on top of its tokens.")
    output_image_micros = _optional("Micro-units per generated image, on top of its tokens.")
    # Blank: the provider's web search tool is refused for this model (relay.dialects.fees).
    web_search_micros = _optional(
        "Micro-units per web search the provider runs; blank: web search is not offered."
    )
    long_context_above_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Above this many prompt tokens the whole request is priced at the "
        "long-context prices; blank: no tier.",
    )
    long_context_prices = models.JSONField(
        default=dict,
        blank=True,
        help_text="The long-context prices by dimension (as the columns, without the "
        "suffix); a dimension left out keeps its normal price.",
    )
    flex_percent = models.PositiveIntegerField(
        null=True, blank=True, help_text="Token prices on the flex service tier, in percent."
    )
    priority_percent = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Token prices on the priority service tier, in percent.",
    )
    effective_from = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["price_list", "model", "-effective_from"]
        constraints = [
            models.UniqueConstraint(
                fields=["price_list", "model", "effective_from"], name="unique_price_version"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} in {self.price_list} from {self.effective_from:%Y-%m-%d %H:%M}"
