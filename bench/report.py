"""The bench's results: one measurement per wrk run, the table, and issue 6's checks."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field

# Translated modes and their pass-through twins (bench.targets.PASS_THROUGH_OF, repeated
# here because bench.targets imports this module).
PASS_THROUGH_OF_REPORT = {
    "responses-translated": "responses",
    "responses-translated-stream": "responses-stream",
    "messages-translated": "messages",
    "messages-translated-stream": "messages-stream",
    "chat-anthropic": "plain",
    "chat-anthropic-stream": "stream",
}


# One acceptance line: (check, measured, passed); passed is None where it is informational
# or its inputs were not measured.
Check = tuple[str, str, bool | None]


@dataclass
class Measurement:
    target: str
    mode: str  # "plain" or "stream"
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_request: float
    peak_rss_mb: float
    requests: int
    ok: int
    errors: int
    upstream_cpu_ms_per_request: float = 0.0
    loadgen_cpu_share: float = 0.0  # wrk's CPU seconds per wall second (out of 2 cores)
    # PostgreSQL + Redis server CPU during a metered run (includes the usage writes; the
    # servers are shared with anything else running, so this is indicative only).
    stores_cpu_ms_per_request: float = 0.0
    events: int | None = None  # usage events written for the run
    events_ok: int | None = None
    # Events whose tokens the relay counted itself (a stream cut off before its usage chunk,
    # as wrk does to the streams in flight when a run ends): this loads the tokenizer.
    events_estimated: int | None = None
    store: str = ""  # "postgres" or "embedded" for Tollgate, "" for the others
    # Peak RSS of the workers' own children (Tollgate's workers start none now; 0: none).
    helpers_peak_rss_mb: float = 0.0
    # Peak RSS of the deployment's one shared token counter (relay.token_server), which
    # the workers start when they must count, instead of a child each (0 when none ran).
    shared_peak_rss_mb: float = 0.0
    load1: float = 0.0  # the machine's 1-minute load average when the run ended
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def metering_ok(self) -> bool | None:
        """Every answered request has its event; the few still in flight when wrk stopped
        (at most one per connection) may add theirs."""
        if self.events is None:
            return None
        return self.ok <= self.events <= self.requests + self.concurrency


@dataclass
class Cell:
    """The repeated runs of one (target, mode, concurrency), summarised."""

    runs: list[Measurement]

    def _median(self, name: str) -> float:
        return statistics.median(getattr(m, name) for m in self.runs)

    @property
    def rps(self) -> float:
        return self._median("rps")

    @property
    def rps_spread(self) -> float:
        """(max - min) / median of req/s over the repeats, the run-to-run noise."""
        values = [m.rps for m in self.runs]
        median = statistics.median(values)
        return (max(values) - min(values)) / median if median else 0.0

    @property
    def p50(self) -> float:
        return self._median("p50_ms")

    @property
    def p99(self) -> float:
        return self._median("p99_ms")

    @property
    def cpu(self) -> float:
        return self._median("cpu_ms_per_request")

    @property
    def rss(self) -> float:
        return max(m.peak_rss_mb for m in self.runs)

    @property
    def errors(self) -> int:
        return sum(m.errors for m in self.runs)

    @property
    def load(self) -> float:
        return max(m.load1 for m in self.runs)

    @property
    def metering(self) -> str:
        states = [m.metering_ok for m in self.runs]
        if all(s is None for s in states):
            return ""
        written = sum(m.events or 0 for m in self.runs)
        ok = sum(m.ok for m in self.runs)
        estimated = sum(m.events_estimated or 0 for m in self.runs)
        note = f" ({estimated} est.)" if estimated else ""
        return f"{'ok' if all(states) else 'MISMATCH'} {written}/{ok}{note}"


def cells(measurements: Iterable[Measurement]) -> dict[tuple[str, str, int], Cell]:
    grouped: dict[tuple[str, str, int], Cell] = {}
    for m in measurements:
        grouped.setdefault((m.target, m.mode, m.concurrency), Cell([])).runs.append(m)
    return grouped


def _ratio(a: Cell | None, b: Cell | None) -> str:
    if a is None or b is None or not b.rps:
        return ""
    return f"{a.rps / b.rps:.2f}x"


def table(measurements: list[Measurement], *, floor: dict[str, str], rival: str | None) -> str:
    """One row per (mode, concurrency, target). ``floor`` maps a Tollgate target to the bare
    proxy it is compared with (same server); ``rival`` is LiteLLM's target name."""
    grouped = cells(measurements)
    # Wide enough for the longest mode run (e.g. responses-translated-stream).
    width = max([6, *(len(m.mode) for m in measurements)])
    header = (
        f"{'mode':<{width}} {'conc':>4}  {'target':<22} {'req/s':>8} {'noise':>6} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'CPU ms/req':>10} {'RSS MB':>7} {'errors':>6}  {'vs bare':>7} "
        f"{'vs LiteLLM':>10} {'load':>5}  usage events"
    )
    lines = [header, "-" * len(header)]
    order = sorted({(m.mode, m.concurrency) for m in measurements})
    targets = list(dict.fromkeys(m.target for m in measurements))
    for mode, concurrency in order:
        for target in targets:
            cell = grouped.get((target, mode, concurrency))
            if cell is None:
                continue
            bare = grouped.get((floor.get(target, ""), mode, concurrency))
            litellm = grouped.get((rival or "", mode, concurrency))
            is_tollgate = target in floor
            lines.append(
                f"{mode:<{width}} {concurrency:>4}  {target:<22} {cell.rps:>8.0f} "
                f"{cell.rps_spread * 100:>5.0f}% {cell.p50:>8.2f} {cell.p99:>8.2f} "
                f"{cell.cpu:>10.2f} {cell.rss:>7.0f} {cell.errors:>6}  "
                f"{_ratio(cell, bare) if is_tollgate else '':>7} "
                f"{_ratio(cell, litellm) if is_tollgate else '':>10} {cell.load:>5.2f}  "
                f"{cell.metering}"
            )
        lines.append("")
    return "\n".join(lines)


def acceptance(
    measurements: list[Measurement], *, tollgate: str, bare: str, litellm: str | None
) -> list[tuple[str, str, bool | None]]:
    """Issue 6's acceptance list as (check, measured, passed); None: not measured."""
    grouped = cells(measurements)

    def get(target: str | None, mode: str, concurrency: int) -> Cell | None:
        return grouped.get((target or "", mode, concurrency))

    checks: list[tuple[str, str, bool | None]] = []
    for mode, label in (("plain", "non-streaming"), ("stream", "streaming")):
        t, b, lt = get(tollgate, mode, 64), get(bare, mode, 64), get(litellm, mode, 64)
        if t and lt and lt.rps and lt.errors <= sum(m.requests for m in lt.runs) // 100:
            ratio = t.rps / lt.rps
            checks.append((f"{label} c64 >= 5x LiteLLM", f"{ratio:.2f}x", ratio >= 5))
        elif t and lt:
            failed = "completed no request" if not lt.rps else "answered errors"
            checks.append((f"{label} c64 >= 5x LiteLLM", f"LiteLLM {failed}", None))
        else:
            checks.append((f"{label} c64 >= 5x LiteLLM", "LiteLLM not run", None))
        if t and b:
            ratio = t.rps / b.rps if b.rps else 0.0
            checks.append((f"{label} c64 >= 50% of bare", f"{ratio * 100:.0f}%", ratio >= 0.5))
            # The same comparison by CPU per request, which load from other work on the
            # machine disturbs far less than req/s (informational).
            cpu_ratio = b.cpu / t.cpu if t.cpu else 0.0
            checks.append(
                (
                    f"{label} c64, CPU per request: bare / Tollgate",
                    f"{b.cpu:.2f} / {t.cpu:.2f} ms = {cpu_ratio * 100:.0f}%",
                    None,
                )
            )
    for mode in ("plain", "stream"):
        t, b = get(tollgate, mode, 1), get(bare, mode, 1)
        if t and b:
            added = t.p50 - b.p50
            checks.append(
                (f"single client ({mode}) adds <= 2 ms p50", f"{added:+.2f} ms", added <= 2.0)
            )
    rss = [m.peak_rss_mb for m in measurements if m.target == tollgate]
    if rss:
        checks.append(("peak RSS per worker <= 150 MB", f"{max(rss):.0f} MB", max(rss) <= 150))
    counter = max((m.shared_peak_rss_mb for m in measurements if m.target == tollgate), default=0)
    if counter:
        checks.append(
            ("token counter process (one per host, only while needed)", f"{counter:.0f} MB", None)
        )
    metered = [m.metering_ok for m in measurements if m.target == tollgate]
    if metered and all(s is not None for s in metered):
        checks.append(("usage events written for every request", "", all(metered)))
    return checks


def own_cpu(
    grouped: dict[tuple[str, str, int], Cell], tollgate: str, bare: str, mode: str, concurrency: int
) -> float | None:
    """Tollgate's own CPU per request in ``mode``: its CPU minus its floor's (the bare
    proxy forwarding the same upstream exchange)."""
    t, b = grouped.get((tollgate, mode, concurrency)), grouped.get((bare, mode, concurrency))
    return t.cpu - b.cpu if t and b else None


def surface_acceptance(
    measurements: list[Measurement],
    *,
    tollgate: str,
    bare: str,
    pass_through_of: dict[str, str],
    translated_extra_ms: float = 1.0,
) -> list[tuple[str, str, bool | None]]:
    """The chat completions targets for every other surface mode that ran (issue 14), and
    what translation costs over pass-through (issue 15): at c=64 each mode reaches 50 % of
    its floor's req/s, at c=1 it adds at most 2 ms p50, and a translated mode's own CPU per
    request exceeds its pass-through mode's by at most ``translated_extra_ms``."""
    grouped = cells(measurements)
    modes = sorted({m.mode for m in measurements if m.mode not in ("plain", "stream")})
    checks: list[tuple[str, str, bool | None]] = []
    for mode in modes:
        t, b = grouped.get((tollgate, mode, 64)), grouped.get((bare, mode, 64))
        if t and b and b.rps:
            ratio = t.rps / b.rps
            checks.append((f"{mode} c64 >= 50% of bare", f"{ratio * 100:.0f}%", ratio >= 0.5))
        t, b = grouped.get((tollgate, mode, 1)), grouped.get((bare, mode, 1))
        if t and b:
            added = t.p50 - b.p50
            checks.append((f"{mode} c1 adds <= 2 ms p50", f"{added:+.2f} ms", added <= 2.0))
    for mode in modes:
        passed = pass_through_of.get(mode)
        if passed is None:
            continue
        concurrency = max((c for (n, m, c) in grouped if n == tollgate and m == mode), default=0)
        mine = own_cpu(grouped, tollgate, bare, mode, concurrency)
        base = own_cpu(grouped, tollgate, bare, passed, concurrency)
        if mine is None or base is None:
            continue
        extra = mine - base
        checks.append(
            (
                f"{mode} c{concurrency}: own CPU over {passed}'s <= {translated_extra_ms:g} ms",
                f"{mine:.2f} - {base:.2f} = {extra:+.2f} ms",
                extra <= translated_extra_ms,
            )
        )
    return checks


def translation_acceptance(
    costs: dict[str, float], pass_through_of: dict[str, str]
) -> list[tuple[str, str, bool | None]]:
    """Translated against pass-through, the differing work timed directly (microseconds
    per request): issue 15 allows 1 ms more, issue 18 0.3 ms."""
    checks: list[tuple[str, str, bool | None]] = []
    for mode, passed in pass_through_of.items():
        if mode not in costs or passed not in costs:
            continue
        extra_ms = (costs[mode] - costs[passed]) / 1000
        measured = f"{costs[mode]:.0f} - {costs[passed]:.0f} us = {extra_ms:+.3f} ms"
        checks.append((f"{mode} over {passed}: <= +1 ms CPU (issue 15)", measured, extra_ms <= 1))
        checks.append(
            (f"{mode} over {passed}: <= +0.3 ms CPU (issue 18)", measured, extra_ms <= 0.3)
        )
    return checks


def format_acceptance(checks: list[tuple[str, str, bool | None]]) -> str:
    marks = {True: "PASS", False: "FAIL", None: "info"}
    return "\n".join(f"  [{marks[ok]}] {name}: {value}" for name, value, ok in checks)


def observability(
    measurements: list[Measurement],
    *,
    base: str,
    variants: Iterable[str],
    call_costs: dict[str, float] | None = None,
) -> str:
    """What metrics and JSON access logs cost: CPU per request against ``base``, same
    mode and concurrency (``base`` has metrics on and no access log), and the calls
    themselves timed in one process (``call_costs``, microseconds per request)."""
    grouped = cells(measurements)
    lines = []
    for name, us in (call_costs or {}).items():
        lines.append(f"  {name}: {us:.1f} us per request (timed directly)")
    for variant in variants:
        for mode, concurrency in sorted(
            {(m.mode, m.concurrency) for m in measurements if m.target == variant}
        ):
            on, other = (
                grouped.get((base, mode, concurrency)),
                grouped[(variant, mode, concurrency)],
            )
            if on is None or not other.cpu:
                continue
            # What the feature costs: "off" variants lack the metrics that base has,
            # the JSON-log variant adds the access log to base.
            if "off" in variant:
                feature, cost = "the metrics", on.cpu / other.cpu - 1
            else:
                feature, cost = "the JSON access log", other.cpu / on.cpu - 1
            lines.append(
                f"  {variant:<22} {mode:<6} c={concurrency:<3} CPU {other.cpu:.2f} ms/req vs "
                f"{base} {on.cpu:.2f} ({cost * 100:+.1f}% for {feature}); "
                f"req/s {other.rps:.0f} vs {on.rps:.0f}"
            )
    if not lines:
        return ""
    return "\n".join(["observability cost (CPU per request, same section):", *lines])


def markdown(
    *,
    command: str,
    machine_before: dict[str, str],
    machine_after: dict[str, str],
    measurements: list[Measurement],
    floor: dict[str, str],
    rival: str | None,
    acceptance: list[tuple[str, list[tuple[str, str, bool | None]]]],
    observability: str,
    scale: str,
    checks: list[dict[str, object]],
) -> str:
    """The whole run as markdown, for bench/README.md and for the record."""
    grouped = cells(measurements)
    out = [
        "# Bench report",
        "",
        f"Command: `{command}`",
        "",
        f"- started {machine_before['date']}, finished {machine_after['date']}",
        f"- machine: {machine_before['lscpu'] or machine_before['cpu']}; "
        f"{machine_before['memory']} RAM",
        f"- kernel {machine_before['kernel']}, Python {machine_before['python']}",
        f"- load average (1, 5, 15 min) before: {machine_before['load']}, "
        f"after: {machine_after['load']} (2 cores: above ~0.5 other work shares the CPU)",
        "",
    ]
    if measurements:
        out += [
            "| mode | conc | target | req/s | p50 ms | p99 ms | CPU ms/req | peak RSS MB/worker "
            "| errors | vs bare | vs LiteLLM | load | usage events |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
            "| --- |",
        ]
        targets = list(dict.fromkeys(m.target for m in measurements))
        for mode, concurrency in sorted({(m.mode, m.concurrency) for m in measurements}):
            for target in targets:
                cell = grouped.get((target, mode, concurrency))
                if cell is None:
                    continue
                is_tollgate = target in floor
                bare = grouped.get((floor.get(target, ""), mode, concurrency))
                litellm = grouped.get((rival or "", mode, concurrency))
                out.append(
                    f"| {mode} | {concurrency} | {target} | {cell.rps:.0f} | {cell.p50:.2f} | "
                    f"{cell.p99:.2f} | {cell.cpu:.2f} | {cell.rss:.0f} | {cell.errors} | "
                    f"{_ratio(cell, bare) if is_tollgate else ''} | "
                    f"{_ratio(cell, litellm) if is_tollgate else ''} | {cell.load:.2f} | "
                    f"{cell.metering} |"
                )
        out.append("")
    for title, items in acceptance:
        out += [f"**{title}**", "", "```", format_acceptance(items), "```", ""]
    for text in (observability, scale):
        if text:
            out += ["```", text, "```", ""]
    if checks:
        out += ["```"]
        out += [
            f"[{'PASS' if c['ok'] else 'FAIL'}] {c['check']}: {c['counted']} counted, "
            f"{c['completed_by_wrk']} completed by wrk"
            for c in checks
        ]
        out += ["```", ""]
    return "\n".join(out)
