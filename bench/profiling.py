"""Sampling profiles of the relay under load (py-spy), summarised per request.

For each mode, py-spy samples every worker of the running server (``--subprocesses``)
while wrk drives it at concurrency 64 (or ``--profile-concurrency``): once as collapsed
stacks, which are summarised here (self and inclusive time per function, scaled to CPU
ms per request), and once as a flame graph SVG to look at.
"""

from __future__ import annotations

# ruff: noqa: S603 - runs py-spy, a fixed tool, on processes this bench started
import subprocess
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bench import prepare
from bench.loadgen import run_wrk
from bench.targets import mode_path

if TYPE_CHECKING:
    from bench.procs import Service
    from bench.targets import Context, Target

RATE = 250  # samples per second per process


def _record(
    ctx: Context, service: Service, url: str, target: Target, mode: str, fmt: str, output: Path
) -> tuple[int, float]:
    """Sample while wrk runs; returns (requests, relay CPU seconds) for that run."""
    duration = ctx.args.duration
    spy = subprocess.Popen(
        [
            str(prepare.PY_SPY / "bin" / "py-spy"),
            "record",
            "--pid",
            str(service.pid),
            "--subprocesses",
            "--nonblocking",
            "--gil",  # only the thread holding the GIL: CPU, not threads waiting for it
            "--nolineno",
            "--rate",
            str(RATE),
            "--duration",
            f"{duration + 1:g}",
            "--format",
            fmt,
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        cpu_before = service.cpu_seconds()
        result = run_wrk(
            url=url,
            body_file=ctx.bodies[mode],
            path=mode_path(mode),
            keys_file=target.keys_file,
            concurrency=ctx.args.profile_concurrency,
            duration=duration,
        )
        cpu = service.cpu_seconds() - cpu_before
        spy.wait(timeout=duration + 30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    return result.requests, cpu


def summarise(collapsed: Path, cpu_ms_per_request: float, top: int = 30) -> str:
    """Self and inclusive shares per function, and each as CPU ms per request."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()  # self time by top-level package (httpcore, relay...)
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        # The first frames name the process and thread; the rest are Python frames.
        frames = [f for f in stack.split(";") if "(" in f]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        path = frames[-1].rpartition("(")[2].rstrip(")")
        packages[path.split("/", 1)[0]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples"

    def rows(counter: Counter[str]) -> list[str]:
        return [
            f"  {count / total * 100:5.1f}%  {count / total * cpu_ms_per_request:6.3f} ms  {name}"
            for name, count in counter.most_common(top)
        ]

    return "\n".join(
        [
            f"{total} samples; relay CPU {cpu_ms_per_request:.3f} ms per request",
            "self time by package:",
            *rows(packages)[:15],
            "self time (where the CPU is spent):",
            *rows(self_counts),
            "inclusive time (what the time is spent under):",
            *rows(inclusive),
        ]
    )


def profile_group(
    ctx: Context, service: Service, url: str, targets: list[Target], group: str
) -> None:
    # The fullest path: the key with limits when that target runs, else the plain key.
    candidates = [t for t in targets if t.group == group]
    target = next((t for t in candidates if "limits" in t.name), candidates[0])
    for mode in ctx.args.modes:
        stem = ctx.out / f"profile-{target.name.replace('+', '-')}-{mode}"
        requests, cpu = _record(ctx, service, url, target, mode, "raw", stem.with_suffix(".txt"))
        _record(ctx, service, url, target, mode, "flamegraph", stem.with_suffix(".svg"))
        cpu_ms = cpu * 1000 / max(requests, 1)
        summary = summarise(stem.with_suffix(".txt"), cpu_ms)
        (stem.parent / f"{stem.name}-summary.txt").write_text(summary + "\n")
        conc = ctx.args.profile_concurrency
        prepare.log(f"profile of {target.name} {mode} c={conc} written to {stem}.svg/.txt")
        print(f"\n== profile: {target.name}, {mode}, c={conc} ==\n{summary}")
