"""Integer money: micro-units (1e-6 of a currency unit), exact rounding and display."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

MICROS = 1_000_000
PER_MILLION = 1_000_000


def div_round_half_up(numerator: int, denominator: int) -> int:
    """``numerator / denominator`` rounded to the nearest integer, halves away from zero."""
    if denominator <= 0:
        raise ValueError("denominator must be positive")
    quotient, remainder = divmod(abs(numerator), denominator)
    if 2 * remainder >= denominator:
        quotient += 1
    return quotient if numerator >= 0 else -quotient


def div_ceil(numerator: int, denominator: int) -> int:
    return -((-numerator) // denominator)


def percent_of(amount_micros: int, percent: Decimal) -> int:
    """``amount * percent / 100`` in whole micro-units, rounded half-up (away from zero)."""
    exact = Decimal(amount_micros) * Decimal(percent) / 100
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def to_micros(amount: str | Decimal | int) -> int:
    """Parse an amount in currency units (``"12.50"``) into micro-units, exactly.

    More than six decimals is refused rather than rounded: money is not silently changed.
    """
    value = Decimal(str(amount)) * MICROS
    if value != value.to_integral_value():
        raise ValueError(f"{amount} has more precision than a micro-unit")
    return int(value)


def format_micros(micros: int, *, min_decimals: int = 2, grouping: bool = True) -> str:
    """``1234567800`` → ``"1,234.5678"``: exact, trailing zeros dropped down to
    ``min_decimals``; without ``grouping`` no thousands separators (for CSV)."""
    sign = "-" if micros < 0 else ""
    units, fraction = divmod(abs(micros), MICROS)
    digits = f"{fraction:06d}".rstrip("0").ljust(min_decimals, "0")
    whole = f"{units:,}" if grouping else str(units)
    return f"{sign}{whole}.{digits}" if digits else f"{sign}{whole}"
