"""Billing's models, one module per concern."""

from __future__ import annotations

from billing.models.usage import UsageEvent

__all__ = ["UsageEvent"]
