"""Scale with data (issue 6, item 3): the cost per request must not grow with the data.

Two PostgreSQL databases, measured in alternation with the same relay configuration:

- ``bench``: the seed (the bench key and the limited key, one channel) and no
  usage rows;
- ``bench_scale``: topped up by bench/seed.py to ``--scale-keys`` keys,
  ``--scale-channels`` channels and ``--scale-rows`` usage rows (bulk SQL, kept between
  runs), with wrk cycling through 200 real keys of it.

Both write their usage events as usual, so the large run also pays for inserting into
the large table and its indexes.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench import prepare, report
from bench.loadgen import run_wrk

if TYPE_CHECKING:
    from bench.targets import Context

SCALE_DB = "bench_scale"


def _truncate_usage(env: dict[str, str]) -> None:
    import psycopg

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("TRUNCATE billing_usageevent")


def _phase_context(ctx: Context, env: dict[str, str]) -> Context:
    counter = prepare.UsageCounter(env)
    counter.reset()
    return dataclasses.replace(ctx, env=env, counter=counter)


def run_scale(ctx: Context, key_file: Path) -> dict[str, dict[str, int]]:
    """Measure both databases in alternating rounds; returns their sizes."""
    from bench.measuring import measure, save
    from bench.servers import start_group
    from bench.targets import Target

    args = ctx.args
    _truncate_usage(ctx.env)
    prepare.ensure_database(SCALE_DB)
    var_dir = Path(ctx.env["TOLLGATE_VAR_DIR"])
    large_env = prepare.project_env(postgres_db=SCALE_DB, var_dir=var_dir)
    sample_file = var_dir / "bench-scale-sample-keys.txt"
    prepare.prepare_database(
        large_env,
        upstream=ctx.upstream,
        key_file=var_dir / "bench-scale-key.txt",
        limited_key_file=var_dir / "bench-scale-limited-key.txt",
    )
    started = time.monotonic()
    prepare.log(
        f"scale data: topping up to {args.scale_keys} keys, {args.scale_channels} channels, "
        f"{args.scale_rows} usage rows (kept between runs)"
    )
    prepare.seed(
        large_env,
        "scale",
        "--keys", str(args.scale_keys),
        "--rows", str(args.scale_rows),
        "--channels", str(args.scale_channels),
        "--sample-out", str(sample_file),
    )  # fmt: skip
    prepare.log(f"scale data ready in {time.monotonic() - started:.0f}s")
    sizes = {"small": _sizes(ctx.env), "large": _sizes(large_env)}
    ctx.sizes = sizes
    phases = {
        "small": (_phase_context(ctx, ctx.env), Target("tollgate", "tollgate", key_file, True)),
        "large": (
            _phase_context(ctx, large_env),
            Target("tollgate/scaled", "tollgate", sample_file, True),
        ),
    }
    for round_index in range(args.scale_repeat):
        prepare.log(f"scale round {round_index + 1}/{args.scale_repeat}")
        for phase in ("small", "large"):
            phase_ctx, target = phases[phase]
            service, url = start_group(phase_ctx, target)
            try:
                for mode in args.modes:
                    # ~25 requests a key: both workers have loaded every sample key.
                    run_wrk(
                        url=url,
                        body_file=ctx.bodies[mode],
                        keys_file=target.keys_file,
                        concurrency=8,
                        duration=max(args.warmup, 5),
                    )
                    for concurrency in args.scale_concurrency:
                        measurement = measure(phase_ctx, target, service, url, mode, concurrency)
                        measurement.extra.update(phase=phase, **sizes[phase])
                        ctx.results.append(measurement)
                        save(ctx)
            finally:
                ctx.services.stop(service)
    return sizes


def _sizes(env: dict[str, str]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(env["DATABASE_URL"], autocommit=True) as conn:

        def count(table: str) -> int:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # noqa: S608

        return {
            "keys": count("portal_apikey"),
            "channels": count("portal_channel"),
            "usage_rows": count("billing_usageevent"),
        }


def _normalised(m: report.Measurement) -> float:
    """Relay CPU per request over the simulator's CPU per request in the same run.

    The simulator does the same work for every request in every run, so its CPU per
    request moves only with the machine's speed (other tenants of the host, other jobs);
    dividing by it takes most of that noise out of the comparison.
    """
    return (
        m.cpu_ms_per_request / m.upstream_cpu_ms_per_request
        if m.upstream_cpu_ms_per_request
        else 0.0
    )


def scale_table(results: list[report.Measurement], sizes: dict[str, dict[str, int]]) -> str:
    lines = [
        "scale with data: "
        + "; ".join(
            f"{phase} = {s['keys']:,} keys, {s['channels']:,} channels, "
            f"{s['usage_rows']:,} usage rows"
            for phase, s in sizes.items()
        ),
        f"{'mode':<6} {'conc':>4}  {'phase':<6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'CPU ms/req':>10} {'runs':<22} {'CPU/sim':>8} {'runs':<22} {'RSS MB':>7}  usage events",
    ]
    grouped: dict[tuple[str, int, str], list[report.Measurement]] = {}
    for m in results:
        grouped.setdefault((m.mode, m.concurrency, str(m.extra["phase"])), []).append(m)
    verdicts = []
    for mode, concurrency in sorted({(m.mode, m.concurrency) for m in results}):
        medians: dict[str, tuple[float, float, float]] = {}
        for phase in ("small", "large"):
            runs = grouped.get((mode, concurrency, phase), [])
            if not runs:
                continue
            cell = report.Cell(runs)
            norm = [_normalised(m) for m in runs]
            norm_median = statistics.median(norm)
            spread = (max(norm) - min(norm)) / norm_median if norm_median else 0.0
            medians[phase] = (cell.cpu, norm_median, spread)
            each = ", ".join(f"{m.cpu_ms_per_request:.2f}" for m in runs)
            each_norm = ", ".join(f"{x:.1f}" for x in norm)
            lines.append(
                f"{mode:<6} {concurrency:>4}  {phase:<6} {cell.rps:>8.0f} {cell.p50:>8.2f} "
                f"{cell.p99:>8.2f} {cell.cpu:>10.2f} {each:<22} {norm_median:>8.1f} "
                f"{each_norm:<22} {cell.rss:>7.0f}  {cell.metering}"
            )
        if "small" in medians and "large" in medians:
            (cpu_s, norm_s, spread_s), (cpu_l, norm_l, spread_l) = (
                medians["small"],
                medians["large"],
            )
            verdicts.append(
                f"  {mode} c={concurrency}: CPU per request {(cpu_l / cpu_s - 1) * 100:+.1f}%, "
                f"normalised by the simulator {(norm_l / norm_s - 1) * 100:+.1f}% "
                f"(run-to-run spread of the normalised figure: small {spread_s * 100:.0f}%, "
                f"large {spread_l * 100:.0f}%)"
            )
    return "\n".join([*lines, "", "large vs small (median of the rounds):", *verdicts])
