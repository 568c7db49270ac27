"""Usage limits shared by API keys and tenants, enforced by the relay across processes."""

from __future__ import annotations

from django.db import models

# The caps a key and a tenant each may have, by field name (blank: no cap of that kind).
LIMIT_NAMES = ("rpm_limit", "tpm_limit", "concurrency_limit", "daily_token_limit")
# The largest value each column takes on every database (PositiveIntegerField on
# PostgreSQL is a 32-bit integer; the daily count a 64-bit one, kept under 2**62 as the
# relay's counters are).
LIMIT_MAX = 2**31 - 1
DAILY_LIMIT_MAX = 2**62


def tightest(*caps: int | None) -> int | None:
    """The lowest of several caps, where None is no cap."""
    given = [cap for cap in caps if cap is not None]
    return min(given) if given else None


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


class SellerLimitFields(models.Model):
    """A tenant's limits as its seller sets them, beneath the operator's (``LimitFields``).

    A reseller sets these on its own tenants; the operator sets the others in the admin,
    for any tenant. The relay enforces the lower of the two, field by field, so neither
    can lift what the other set.
    """

    seller_rpm_limit = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="seller's limit: requests per minute"
    )
    seller_tpm_limit = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="seller's limit: tokens per minute"
    )
    seller_concurrency_limit = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="seller's limit: concurrent requests"
    )
    seller_daily_token_limit = models.PositiveBigIntegerField(
        null=True, blank=True, verbose_name="seller's limit: tokens per day (UTC)"
    )

    class Meta:
        abstract = True

    def enforced_limit(self, name: str) -> int | None:
        """What the relay enforces of limit ``name`` (one of ``LIMIT_NAMES``)."""
        return tightest(getattr(self, name), getattr(self, f"seller_{name}"))

    def enforced_limits(self) -> dict[str, int | None]:
        """Every limit the relay enforces on this tenant as a whole, by name."""
        return {name: self.enforced_limit(name) for name in LIMIT_NAMES}
