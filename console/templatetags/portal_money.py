"""Template filters for money: integer micro-units shown exactly, in currency units."""

from __future__ import annotations

from django import template

from billing.money import format_micros

register = template.Library()


@register.filter
def micros(value: int | None) -> str:
    """``12_500_000`` → ``"12.50"``; None → an em dash."""
    return "—" if value is None or value == "" else format_micros(int(value))
