"""Periods of whole UTC days, half-open: calendar months (the unit of budgets and
invoices) and the last N days (the usage pages). The one period type of the project."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.utils import timezone

_LABEL = re.compile(r"^(\d{4})-(\d{2})$")
# How many days the usage pages and the usage API show when not told otherwise.
DEFAULT_PERIOD_DAYS = 30


@dataclass(frozen=True, slots=True)
class Period:
    """A half-open range of whole UTC days, ``[start, end)``; normally one month."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise ValueError("a period ends after it starts")

    @classmethod
    def month(cls, year: int, month: int) -> Period:
        start = date(year, month, 1)
        end = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
        return cls(start, end)

    @classmethod
    def containing(cls, moment: datetime | date) -> Period:
        if isinstance(moment, datetime):
            moment = moment.astimezone(UTC).date()
        return cls.month(moment.year, moment.month)

    @classmethod
    def current(cls) -> Period:
        return cls.containing(timezone.now())

    @classmethod
    def last_days(cls, days: int = DEFAULT_PERIOD_DAYS, *, today: date | None = None) -> Period:
        """The ``days`` whole days that end with today (UTC), today included."""
        today = today or timezone.now().astimezone(UTC).date()
        return cls(today - timedelta(days=days - 1), today + timedelta(days=1))

    @classmethod
    def days_through(cls, first: date, last: date) -> Period:
        """The days from ``first`` to ``last``, both included (how people name a range)."""
        return cls(first, last + timedelta(days=1))

    @classmethod
    def parse(cls, label: str) -> Period:
        """``"2026-03"`` → March 2026."""
        match = _LABEL.match(label)
        if not match:
            raise ValueError(f"not a month: {label!r} (expected YYYY-MM)")
        return cls.month(int(match[1]), int(match[2]))

    def previous(self) -> Period:
        """The month before this period's first month."""
        if self.start.month == 1:
            return Period.month(self.start.year - 1, 12)
        return Period.month(self.start.year, self.start.month - 1)

    @property
    def start_at(self) -> datetime:
        return datetime.combine(self.start, time.min, tzinfo=UTC)

    @property
    def end_at(self) -> datetime:
        return datetime.combine(self.end, time.min, tzinfo=UTC)

    @property
    def last_day(self) -> date:
        """The last day inside the period (the one before ``end``)."""
        return self.end - timedelta(days=1)

    def days(self) -> list[date]:
        """Every day of the period, in order."""
        return [self.start + timedelta(days=n) for n in range((self.end - self.start).days)]

    @property
    def label(self) -> str:
        if self == Period.month(self.start.year, self.start.month):
            return f"{self.start:%Y-%m}"
        return f"{self.start:%Y-%m-%d}..{self.end:%Y-%m-%d}"
