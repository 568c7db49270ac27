"""One measured run: wrk against a server, with CPU, memory, load and metering read around it."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict
from datetime import UTC, datetime

from bench import report
from bench.loadgen import run_wrk
from bench.prepare import BENCH, PYTHON, ROOT, log
from bench.procs import Service, cpu_seconds, pids_named
from bench.targets import (
    POSTGRES,
    STORE_PROCESSES,
    WARMUP_CONCURRENCY,
    Context,
    Target,
    mode_path,
    wire_mode,
)


def measure(
    ctx: Context, target: Target, service: Service, url: str, mode: str, concurrency: int
) -> report.Measurement:
    if target.metered:
        ctx.counter.settle()  # the warm-up's writes land before the CPU is read
        floor = ctx.counter.mark()
    cpu_before, sim_before = service.cpu_seconds(), ctx.simulator.cpu_seconds()
    workers_before = {pid: cpu_seconds(pid) for pid in service.workers()}
    # The database and Redis servers (shared with anything else on the machine: noisy).
    # Not the bench's own counting connection (a backend of its own, kept open).
    stores = (
        [p for p in pids_named(STORE_PROCESSES) if p != ctx.counter.backend_pid]
        if target.metered and ctx.store == POSTGRES
        else []
    )
    stores_before = {pid: cpu_seconds(pid) for pid in stores}
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = datetime.now(UTC)
    result = run_wrk(
        url=url,
        body_file=ctx.bodies[wire_mode(target.name, mode)],
        path=mode_path(wire_mode(target.name, mode)),
        keys_file=target.keys_file,
        concurrency=concurrency,
        duration=ctx.args.duration,
    )
    ended = datetime.now(UTC)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    sim_after = ctx.simulator.cpu_seconds()
    load_after = os.getloadavg()[0]
    events = events_ok = estimated = None
    if target.metered:
        # After the writers have flushed, so the CPU of the writes is counted too.
        events, events_ok, estimated = ctx.counter.settle_run(floor, started, ended, result.ok)
    cpu_after = service.cpu_seconds()
    # How the load split over the workers: wrk's connections are kept alive, so whichever
    # worker accepted more of them serves more of the run (a large source of noise).
    split = sorted(
        max(cpu_seconds(pid) - before, 0.0) / max(cpu_after - cpu_before, 1e-9)
        for pid, before in workers_before.items()
    )
    if set(service.workers()) != set(workers_before):
        log(f"{service.name}: workers changed during the run (one died or was replaced)")
    # Only processes alive at both ends: one that exited meanwhile took its CPU with it.
    stores_cpu = sum(
        max(cpu_seconds(pid) - before, 0.0)
        for pid, before in stores_before.items()
        if os.path.exists(f"/proc/{pid}")
    )
    requests = max(result.requests, 1)
    wrk_cpu = (wrk_after.ru_utime - wrk_before.ru_utime) + (
        wrk_after.ru_stime - wrk_before.ru_stime
    )
    measurement = report.Measurement(
        target=target.name,
        mode=mode,
        concurrency=concurrency,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        cpu_ms_per_request=(cpu_after - cpu_before) * 1000 / requests,
        peak_rss_mb=service.peak_rss_mb(),
        helpers_peak_rss_mb=service.helpers_peak_rss_mb(),
        shared_peak_rss_mb=service.shared_peak_rss_mb(),
        requests=result.requests,
        ok=result.ok,
        errors=result.errors,
        upstream_cpu_ms_per_request=(sim_after - sim_before) * 1000 / requests,
        loadgen_cpu_share=wrk_cpu / result.duration_s if result.duration_s else 0.0,
        events=events,
        events_ok=events_ok,
        events_estimated=estimated,
        stores_cpu_ms_per_request=stores_cpu * 1000 / requests,
        store=ctx.store if target.metered else "",
        load1=load_after,
        extra={"worker_cpu_split": [round(x, 3) for x in split]},
    )
    log(
        f"{target.name:<24} {mode:<6} c={concurrency:<3} {measurement.rps:8.0f} req/s "
        f"p50 {measurement.p50_ms:7.2f} ms  p99 {measurement.p99_ms:7.2f} ms  "
        f"cpu {measurement.cpu_ms_per_request:5.2f} ms/req  rss {measurement.peak_rss_mb:4.0f} MB"
        + (f"  errors {result.errors}" if result.errors else "")
        + (f"  events {events}/{result.ok}" if events is not None else "")
        + (f" ({estimated} estimated)" if estimated else "")
        + (f"  split {'/'.join(f'{x * 100:.0f}' for x in split)}" if len(split) > 1 else "")
        + f"  load {load_after:.2f}"
    )
    return measurement


def warm_up(ctx: Context, target: Target, url: str, mode: str) -> int:
    """Connections, key and routing caches, and the interpreter warm before measuring.
    Returns the requests it made."""
    return run_wrk(
        url=url,
        body_file=ctx.bodies[wire_mode(target.name, mode)],
        path=mode_path(wire_mode(target.name, mode)),
        keys_file=target.keys_file,
        concurrency=WARMUP_CONCURRENCY,
        duration=ctx.args.warmup,
    ).requests


def metrics_requests(url: str) -> float | None:
    """The sum of ``tollgate_requests_total`` on the server's /metrics (all its workers)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # noqa: S310
            text = response.read().decode()
    except OSError:
        return None
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tollgate_requests_total"
    )


def check_metrics(ctx: Context, group: str, url: str, sent: int, cut: int) -> None:
    """/metrics (summed over the workers) counts every request wrk completed, plus at most
    ``cut`` requests cut off when runs ended (one per connection and run)."""
    counted = metrics_requests(url)
    ok = counted is not None and sent <= counted <= sent + cut
    ctx.checks.append(
        {"check": f"/metrics counts every request ({group}, {ctx.store})", "counted": counted,
         "completed_by_wrk": sent, "ok": ok}
    )  # fmt: skip
    log(f"/metrics of {group}: {counted} requests counted, wrk completed {sent}: "
        f"{'ok' if ok else 'MISMATCH'}")  # fmt: skip


def observability_call_costs(ctx: Context, rounds: int = 3) -> dict[str, float]:
    """bench/observability_cost.py, a few times; the fastest round of each (the least
    disturbed by whatever else runs on the machine)."""
    best: dict[str, float] = {}
    for index in range(rounds):
        metrics_dir = ctx.out / f"prometheus-calls-{index}"
        metrics_dir.mkdir(exist_ok=True)
        completed = subprocess.run(  # noqa: S603 - the bench's own script
            [str(PYTHON), str(BENCH / "observability_cost.py")],
            env={**ctx.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        for name, us in json.loads(completed.stdout.strip().splitlines()[-1]).items():
            best[name] = min(us, best.get(name, us))
    for name, us in best.items():
        log(f"{name}: {us:.1f} us per request")
    return best


def translation_costs(ctx: Context) -> dict[str, float]:
    """bench/translation_cost.py: the dialect's and adapter's work per request by mode,
    microseconds (medians of alternating rounds, in one process)."""
    completed = subprocess.run(  # noqa: S603 - the bench's own script
        [str(PYTHON), str(BENCH / "translation_cost.py")],
        env=ctx.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    costs: dict[str, float] = json.loads(completed.stdout.strip().splitlines()[-1])
    for name, us in costs.items():
        log(f"translation cost, {name}: {us:.0f} us per request")
    return costs


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout  # noqa: S607
    except OSError:
        lscpu = ""
    wanted = (
        "Architecture",
        "CPU(s)",
        "Model name",
        "Thread(s) per core",
        "CPU MHz",
        "L3 cache",
        "Hypervisor vendor",
    )
    summary = "; ".join(
        " ".join(line.split())
        for line in lscpu.splitlines()
        if line.split(":", 1)[0].strip() in wanted
    )
    with open("/proc/meminfo") as handle:
        memory = handle.readline().split(":", 1)[1].strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "lscpu": summary,
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def save(ctx: Context, **extra: object) -> None:
    payload = {
        "command": " ".join(["bench/run", *sys.argv[1:]]),
        "machine": machine(),
        "measurements": [asdict(m) for m in ctx.results],
        "checks": ctx.checks,
        "sizes": ctx.sizes,
        "observability_call_costs_us": ctx.call_costs,
        **extra,
    }
    (ctx.out / "results.json").write_text(json.dumps(payload, indent=2))
