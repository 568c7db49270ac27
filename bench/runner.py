"""The relay benchmark: simulator, bare proxy, Tollgate and LiteLLM, driven by wrk.

Run through ``bench/run`` (see bench/README.md). Everything listens on 127.0.0.1, every
run is bounded by ``--duration``, and every process started here is stopped at the end.

A default run has three sections, each printed as a table and written, with the machine
and the command, to ``bench/results/<stamp>/report.md``:

1. PostgreSQL + Redis: the bare proxy, Tollgate (production server configuration, full
   metering), Tollgate with a key that has limits, Tollgate with metrics off and with JSON
   access logs on (the cost of observability), and LiteLLM's proxy when installed;
2. the embedded default (SQLite, no Redis): Tollgate;
3. scale with data (PostgreSQL): a near-empty database against one with 100,000 keys,
   500 channels and 10 million usage rows.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from bench import issue18, prepare, profiling, report
from bench.measuring import (
    check_metrics,
    machine,
    measure,
    observability_call_costs,
    save,
    translation_costs,
    warm_up,
)
from bench.prepare import BENCH, PYTHON, ROOT, log
from bench.procs import Service, Services, free_port, wait_http
from bench.servers import start_group
from bench.targets import (
    ALL_MODES,
    EMBEDDED,
    OBSERVABILITY_NAMES,
    PASS_THROUGH_OF,
    PG_DATABASE,
    PLAIN_BODY,
    POSTGRES,
    STREAM_BODY,
    SURFACE_MODES,
    UPSTREAM_PREFIX,
    WARMUP_CONCURRENCY,
    Context,
    Target,
    embedded_targets,
    pg_targets,
)


def run_targets(ctx: Context, targets: list[Target], round_index: int) -> None:
    if ctx.args.interleave and not ctx.args.profile:
        run_interleaved(ctx, targets)
        return
    groups = list(dict.fromkeys(t.group for t in targets))
    for group in groups:
        members = [t for t in targets if t.group == group]
        service, url = start_group(ctx, members[0])
        sent = 0  # every request wrk completed against this server, warm-ups included
        cut = 0  # at most one request per connection is cut off when a wrk run ends
        try:
            for mode in ctx.args.modes:
                for target in members:
                    sent += warm_up(ctx, target, url, mode)
                    cut += WARMUP_CONCURRENCY
                # The targets of one server (Tollgate with and without limits) take turns
                # at each concurrency, so that the machine drifting in speed during a run
                # (seen: the simulator's own CPU per request up 1.5x within minutes) weighs
                # on both alike: target 5 compares them.
                for concurrency in ctx.args.concurrency:
                    for target in members:
                        if concurrency not in (target.concurrency or ctx.args.concurrency):
                            continue
                        measurement = measure(ctx, target, service, url, mode, concurrency)
                        sent += measurement.requests
                        cut += concurrency
                        ctx.results.append(measurement)
                        save(ctx)  # as we go, so an interrupted run keeps what it had
            if _counts_metrics(members[0]):
                check_metrics(ctx, group, url, sent, cut)
            if ctx.args.profile and group == "tollgate" and round_index == 0:
                profiling.profile_group(ctx, service, url, targets, group)
        finally:
            ctx.services.stop(service)


def _counts_metrics(target: Target) -> bool:
    """Whether the target's server is Tollgate with metrics on (/metrics to check)."""
    return target.group.startswith("tollgate") and target.env.get("RELAY_METRICS") != "false"


def run_interleaved(ctx: Context, targets: list[Target]) -> None:
    """Every server up at once, and each cell (a mode at a concurrency) measured for every
    target back to back, in turns that alternate in direction: a machine that drifts in
    speed during a run (seen: the simulator's own CPU per request up 1.5x within minutes)
    then weighs on the floors, Tollgate and LiteLLM alike, so the ratios the targets are
    judged by compare runs seconds apart, not minutes."""
    groups = list(dict.fromkeys(t.group for t in targets))
    servers: dict[str, tuple[Service, str]] = {}
    sent = dict.fromkeys(groups, 0)  # as in run_targets, per server
    cut = dict.fromkeys(groups, 0)
    try:
        for group in groups:
            servers[group] = start_group(ctx, next(t for t in targets if t.group == group))
        turn = 0
        for mode in ctx.args.modes:
            for target in targets:
                sent[target.group] += warm_up(ctx, target, servers[target.group][1], mode)
                cut[target.group] += WARMUP_CONCURRENCY
            for concurrency in ctx.args.concurrency:
                order = targets if turn % 2 == 0 else targets[::-1]
                turn += 1
                for target in order:
                    if concurrency not in (target.concurrency or ctx.args.concurrency):
                        continue
                    service, url = servers[target.group]
                    measurement = measure(ctx, target, service, url, mode, concurrency)
                    sent[target.group] += measurement.requests
                    cut[target.group] += concurrency
                    ctx.results.append(measurement)
                    save(ctx)
        for group in groups:
            if _counts_metrics(next(t for t in targets if t.group == group)):
                check_metrics(ctx, group, servers[group][1], sent[group], cut[group])
    finally:
        for service, _ in servers.values():
            ctx.services.stop(service)


def headline(args: argparse.Namespace) -> str:
    return "tollgate+limits" if args.limits else "tollgate"


def summarise(ctx: Context, started: dict[str, str]) -> None:
    """Print every table and the acceptance checks, and write them to report.md."""
    args = ctx.args
    results = ctx.results
    finished = machine()
    floor = {m.target: "bare" for m in results if m.target.startswith("tollgate")}
    rival = "litellm" if args.litellm else None
    sections: list[tuple[str, str]] = []
    main = [m for m in results if not m.extra.get("phase")]
    if main:
        sections.append(("Throughput, latency, CPU and memory", "table"))
        print()
        print(report.table(main, floor=floor, rival=rival))
    accept: list[tuple[str, list[tuple[str, str, bool | None]]]] = []
    names = {m.target for m in main}
    for name in dict.fromkeys([headline(args), "tollgate", "tollgate/embedded"]):
        if name not in names:
            continue
        store = "embedded SQLite" if name.endswith("/embedded") else "PostgreSQL + Redis"
        title = f"issue 6 acceptance, {name} (uvicorn, {args.workers} workers, {store})"
        checks = report.acceptance(main, tollgate=name, bare="bare", litellm=rival)
        accept.append((title, checks))
        print(title + ":")
        print(report.format_acceptance(checks))
        surfaces = report.surface_acceptance(
            main, tollgate=name, bare="bare", pass_through_of=PASS_THROUGH_OF
        )
        if surfaces:
            title = f"issues 14 and 15 acceptance, other surfaces, {name}"
            accept.append((title, surfaces))
            print(title + ":")
            print(report.format_acceptance(surfaces))
    if args.bare_aiohttp and "tollgate" in names:
        limited = headline(args)
        title = f"issue 18 targets, {limited} (floor: bare-aiohttp)"
        checks = issue18.acceptance(
            main, limited=limited, unlimited="tollgate", rival=rival, translation=ctx.translation
        )
        accept.append((title, checks))
        print(title + ":")
        print(report.format_acceptance(checks))
    if ctx.translation:
        title = "issues 15 and 18: translated over pass-through, the differing work timed directly"
        checks = report.translation_acceptance(ctx.translation, PASS_THROUGH_OF)
        accept.append((title, checks))
        print(title + ":")
        print(report.format_acceptance(checks))
    observability = report.observability(
        main, base="tollgate", variants=OBSERVABILITY_NAMES, call_costs=ctx.call_costs
    )
    if observability:
        print("\n" + observability)
    scale_text = ""
    if any(m.extra.get("phase") for m in results):
        from bench import scale

        scale_text = scale.scale_table(
            [m for m in results if m.extra.get("phase")], ctx.sizes or {}
        )
        print("\n" + scale_text)
    for check in ctx.checks:
        mark = "PASS" if check["ok"] else "FAIL"
        print(
            f"  [{mark}] {check['check']}: {check['counted']} counted, "
            f"{check['completed_by_wrk']} completed by wrk"
        )
    save(ctx)
    markdown = report.markdown(
        command=" ".join(["bench/run", *sys.argv[1:]]),
        machine_before=started,
        machine_after=finished,
        measurements=main,
        floor=floor,
        rival=rival,
        acceptance=accept,
        observability=observability,
        scale=scale_text,
        checks=ctx.checks,
    )
    (ctx.out / "report.md").write_text(markdown)
    print(f"\nreport: {(ctx.out / 'report.md').relative_to(ROOT)}")
    print(f"raw results: {(ctx.out / 'results.json').relative_to(ROOT)}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    parser.add_argument(
        "--stores",
        default=[POSTGRES, EMBEDDED],
        type=lambda s: s.split(","),
        help="postgres (PostgreSQL + Redis, with the bare proxy and LiteLLM), embedded "
        "(SQLite, no Redis), or both (the default)",
    )
    parser.add_argument("--postgres", action="store_true", help="same as --stores postgres")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument(
        "--server",
        dest="servers",
        default="uvicorn",
        type=lambda s: s.split(","),
        help="uvicorn, granian or uvicorn,granian",
    )
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up")
    parser.add_argument(
        "--concurrency", default=[1, 8, 64], type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--modes",
        default=["plain", "stream"],
        type=lambda s: s.split(","),
        help="plain,stream (chat completions), and responses, messages, each with "
        "-translated and/or -stream (e.g. responses-translated-stream), chat-anthropic, "
        "chat-anthropic-stream and embeddings",
    )
    parser.add_argument(
        "--surfaces",
        action="store_true",
        help="every mode of every client API (chat completions, Responses, Messages, "
        "embeddings), in place of --modes: issue 18's target 6",
    )
    parser.add_argument("--repeat", type=int, default=1, help="rounds, to show the noise")
    parser.add_argument(
        "--with-litellm",
        action="store_true",
        help=f"set-up: create bench/.venv-litellm with litellm[proxy]=={prepare.LITELLM_VERSION} "
        "from PyPI if missing, and compare (once it exists, it is used without this flag)",
    )
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM even if present")
    parser.add_argument(
        "--no-limits",
        dest="limits",
        action="store_false",
        help="skip the tollgate+limits target (a key with limits: the Redis Lua path)",
    )
    parser.add_argument(
        "--no-observability",
        dest="observability",
        action="store_false",
        help="skip the metrics-off and JSON-access-log variants",
    )
    parser.add_argument(
        "--no-translation",
        dest="translation",
        action="store_false",
        help="skip timing translated against pass-through work (bench/translation_cost.py)",
    )
    parser.add_argument(
        "--no-interleave",
        dest="interleave",
        action="store_false",
        help="one server at a time, all its cells together (the order before interleaving; "
        "--profile always runs so)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the relay at c=64")
    parser.add_argument(
        "--profile-concurrency",
        type=int,
        default=64,
        help="the concurrency --profile samples at (1 shows the single-client path)",
    )
    parser.add_argument(
        "--ahead-ab",
        action="store_true",
        help="add tollgate+limits-waiting: the limited key on a relay whose requests all "
        "wait for their admission (RELAY_FORWARD_AHEAD=false), interleaved with the others",
    )
    parser.add_argument(
        "--redis-delay-ms",
        type=float,
        default=0.0,
        help="put Redis behind a proxy that delays each byte this long each way "
        "(bench/delay_proxy.py): a Redis on another host. The relay, the seeding and the "
        "usage counter all go through it; 0 (the default) is Redis on loopback",
    )
    parser.add_argument(
        "--no-bare-aiohttp",
        dest="bare_aiohttp",
        action="store_false",
        help="skip the bare proxy with aiohttp (the floor of issue 18's targets)",
    )
    parser.add_argument(
        "--bare-1client",
        action="store_true",
        help="also run the bare proxy with one httpx client instead of 8 (what the "
        "connection pool costs)",
    )
    parser.add_argument(
        "--scale-only", action="store_true", help="only the scale-with-data section"
    )
    parser.add_argument(
        "--no-scale", dest="scale", action="store_false", help="skip the scale-with-data section"
    )
    parser.add_argument("--scale-keys", type=int, default=100_000)
    parser.add_argument("--scale-rows", type=int, default=10_000_000)
    parser.add_argument("--scale-channels", type=int, default=500)
    parser.add_argument(
        "--scale-concurrency", default=[64], type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--scale-repeat", type=int, default=2, help="alternating rounds")
    args = parser.parse_args(argv)
    if args.postgres:
        args.stores = [POSTGRES]
    if args.surfaces:
        args.modes = list(ALL_MODES)
    for mode in args.modes:
        if mode not in ALL_MODES:
            parser.error(f"unknown mode {mode!r} (known: {', '.join(ALL_MODES)})")
    if args.scale_only:
        args.stores, args.scale = [POSTGRES], True
    for store in args.stores:
        if store not in {POSTGRES, EMBEDDED}:
            parser.error(f"unknown store {store!r}")
    if POSTGRES not in args.stores:
        args.scale = False
    for server in args.servers:
        if server not in {"uvicorn", "granian"}:
            parser.error(f"unknown server {server!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = BENCH / "results" / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    services = Services(out)
    starts = prepare.ServiceStarts()

    def interrupted(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)
    try:
        prepare.ensure_wrk()
        if args.with_litellm:
            prepare.ensure_litellm()
        args.litellm = (
            prepare.litellm_installed()
            and not args.no_litellm
            and POSTGRES in args.stores
            and not args.scale_only
        )
        if "granian" in args.servers:
            prepare.ensure_granian()
        if args.profile:
            prepare.ensure_py_spy()
        started = machine()
        log(f"machine: {started}")
        run(args, out, services, starts, started)
    finally:
        services.stop_all()
        starts.stop()
    return 0


def _delayed_redis(services: Services, url: str, delay_ms: float) -> str:
    """Start ``bench/delay_proxy.py`` in front of the Redis at ``url``; its URL."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    port = free_port()
    proxy = services.start(
        "redis-delay",
        [str(PYTHON), str(BENCH / "delay_proxy.py"), str(port), str(parts.port or 6379),
         str(delay_ms)],
        env={},
        cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if not proxy.alive() or time.monotonic() > deadline:
                raise RuntimeError("the Redis delay proxy did not start") from None
            time.sleep(0.05)
    log(f"Redis reached through a {delay_ms:g} ms delay each way (port {port})")
    return f"redis://127.0.0.1:{port}{parts.path}"


def run(
    args: argparse.Namespace,
    out: Path,
    services: Services,
    starts: prepare.ServiceStarts,
    started: dict[str, str],
) -> None:
    sim_port = free_port()
    simulator = services.start(
        "simulator",
        [str(PYTHON), "-m", "relay.simulator", "--host", "127.0.0.1", "--port", str(sim_port)],
        env=prepare.project_env(postgres_db=None, var_dir=BENCH / "results" / "var-sqlite"),
        cwd=ROOT,
    )
    wait_http(f"http://127.0.0.1:{sim_port}/v1/models", simulator)
    upstream = f"http://127.0.0.1:{sim_port}{UPSTREAM_PREFIX}"
    bodies = {"plain": out / "plain.json", "stream": out / "stream.json"}
    bodies["plain"].write_text(json.dumps(PLAIN_BODY))
    bodies["stream"].write_text(json.dumps(STREAM_BODY))
    for mode, (_, body) in SURFACE_MODES.items():
        bodies[mode] = out / f"{mode}.json"
        bodies[mode].write_text(json.dumps(body))
    contexts: dict[str, tuple[Context, Path, Path]] = {}
    for store in args.stores:
        if store == POSTGRES:
            starts.ensure()
            prepare.ensure_database(PG_DATABASE)
            var_dir = BENCH / "results" / "var-pg"
        else:
            var_dir = BENCH / "results" / "var-sqlite"
            for stale in var_dir.glob("tollgate.sqlite3*"):
                stale.unlink()
        var_dir.mkdir(parents=True, exist_ok=True)
        env = prepare.project_env(postgres_db=PG_DATABASE if store == POSTGRES else None,
                                  var_dir=var_dir)  # fmt: skip
        if store == POSTGRES and args.redis_delay_ms > 0:
            env["REDIS_URL"] = _delayed_redis(services, env["REDIS_URL"], args.redis_delay_ms)
        key_file, limited_key_file = var_dir / "bench-key.txt", var_dir / "bench-limited-key.txt"
        prepare.prepare_database(
            env, upstream=upstream, key_file=key_file, limited_key_file=limited_key_file
        )
        counter = prepare.UsageCounter(env)
        counter.reset()
        ctx = Context(args, services, env, out, upstream, bodies, simulator, counter, store)
        contexts[store] = (ctx, key_file, limited_key_file)
    # One list of results for every section.
    shared = next(iter(contexts.values()))[0]
    for ctx, _, _ in contexts.values():
        ctx.results = shared.results
        ctx.checks = shared.checks
    if not args.scale_only:
        plans = []
        if POSTGRES in contexts:
            ctx, key_file, limited = contexts[POSTGRES]
            plans.append((ctx, pg_targets(ctx, key_file, limited)))
        if EMBEDDED in contexts:
            ctx, key_file, _ = contexts[EMBEDDED]
            plans.append((ctx, embedded_targets(key_file)))
        for round_index in range(args.repeat):
            if args.repeat > 1:
                log(f"round {round_index + 1}/{args.repeat}")
            for ctx, targets in plans:
                log(f"section: {ctx.store}")
                run_targets(ctx, targets, round_index)
    if args.observability and not args.scale_only:
        shared.call_costs = observability_call_costs(shared)
    if args.translation and not args.scale_only:
        shared.translation = translation_costs(shared)
    if args.scale:
        from bench import scale

        ctx, key_file, _ = contexts[POSTGRES]
        shared.sizes = scale.run_scale(ctx, key_file)
    summarise(shared, started)


if __name__ == "__main__":
    sys.exit(main())
