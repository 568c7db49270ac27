"""Bar charts as plain geometry, drawn as inline SVG by ``portal/_bar_chart.html``.

Server-side, so pages need no charting script and nothing is fetched at run time; each
bar carries a text title for tooltips and screen readers, and pages show the numbers
in a table as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from billing.money import MICROS

WIDTH = 720
HEIGHT = 220
LEFT = 56  # room for the y-axis labels
BOTTOM = 24  # room for the x-axis labels
TOP = 8
MAX_X_LABELS = 8


@dataclass(frozen=True)
class Segment:
    y: float
    height: float
    css_class: str


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    segments: tuple[Segment, ...]
    title: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class XLabel:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    left: int
    baseline: float
    bars: tuple[Bar, ...]
    ticks: tuple[Tick, ...]
    x_labels: tuple[XLabel, ...]
    legend: tuple[tuple[str, str], ...]
    empty: bool
    empty_text: str = "No requests in this period yet."


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times 10^n at or above ``value``; 1 for nothing at all,
    fractions of 1 for charts of small amounts of money."""
    if value <= 0 or value == 1:
        return 1
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        candidate = step * 10**exponent
        if candidate >= value:
            return candidate
    return 10 ** (exponent + 1)  # pragma: no cover - the loop always returns


def _fraction(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _figure(value: float) -> str:
    """A bar's exact figure for its title: ``1,234`` or ``0.001792`` (never ``1e-05``)."""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.6f}".rstrip("0").rstrip(".")
    return f"{int(value):,}"


def compact(value: float) -> str:
    """12_300 → "12.3k", 4_000_000 → "4M"."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            text = f"{value / size:.1f}".rstrip("0").rstrip(".")
            return f"{text}{suffix}"
    if value and abs(value) < 1:
        return _fraction(value)
    return f"{value:g}"


def stacked_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[float]]],
    *,
    unit: str = "",
    empty_text: str = "No requests in this period yet.",
) -> Chart:
    """A bar per label, stacking each series (name, css class, values) bottom-up."""
    count = len(labels)
    totals = [sum(values[i] for _, _, values in series) for i in range(count)]
    top = nice_ceiling(max(totals, default=0))
    plot_height = HEIGHT - TOP - BOTTOM
    plot_width = WIDTH - LEFT
    slot = plot_width / max(count, 1)
    bar_width = max(slot * 0.7, 1.0)
    baseline = float(TOP + plot_height)
    bars = []
    for i, label in enumerate(labels):
        y = baseline
        segments = []
        parts = []
        for name, css_class, values in series:
            height = plot_height * values[i] / top
            y -= height
            segments.append(Segment(y=round(y, 2), height=round(height, 2), css_class=css_class))
            parts.append(f"{name} {_figure(values[i])}")
        bars.append(
            Bar(
                x=round(LEFT + i * slot + (slot - bar_width) / 2, 2),
                width=round(bar_width, 2),
                segments=tuple(segments),
                title=f"{label}: " + ", ".join(parts) + (f" {unit}" if unit else ""),
            )
        )
    ticks = tuple(
        Tick(y=round(baseline - plot_height * f, 2), label=compact(top * f))
        for f in (0, 0.25, 0.5, 0.75, 1)
    )
    every = max(1, math.ceil(count / MAX_X_LABELS))
    x_labels = tuple(
        XLabel(x=round(LEFT + i * slot + slot / 2, 2), label=labels[i])
        for i in range(0, count, every)
    )
    return Chart(
        title=title,
        width=WIDTH,
        height=HEIGHT,
        left=LEFT,
        baseline=baseline,
        bars=tuple(bars),
        ticks=ticks,
        x_labels=x_labels,
        legend=tuple((name, css_class) for name, css_class, _ in series),
        empty=not any(totals),
        empty_text=empty_text,
    )


def money_bars(
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, str, Sequence[int]]],
    *,
    currency: str,
) -> Chart:
    """Bars of amounts given in integer micro-units, never rounded to cents: a day of
    0.001792 USD is a visible bar, not an empty chart. Floats only place the bars."""
    return stacked_bars(
        title,
        labels,
        [(name, css, [micros / MICROS for micros in values]) for name, css, values in series],
        unit=currency,
        empty_text="No priced usage in this period yet.",
    )
