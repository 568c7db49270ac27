"""Two (or more) versions of the relay, measured alternately on the same machine.

A bench run's cells drift by 10-50 % on a shared 2-core VM, more than most single changes
buy. This compares versions minute by minute instead: each round starts each version's
server in turn (the production command, ``--workers`` processes), warms it, loads it with
wrk for ``--duration`` seconds and reads its CPU from /proc; the order alternates round by
round, and the medians are printed at the end. Every version talks to the same simulator,
PostgreSQL database and Redis (those of ``bench/run --postgres``, prepared here).

    .venv/bin/python bench/ab.py [--mode plain|stream] [--key limits|nolimits] [--concurrency 64]
                                 [--rounds 4] [--duration 5] [--workers 1] VERSION VERSION [...]

A VERSION is a directory holding a checkout (a ``git worktree``), or a git revision (a
worktree of it is made in a temporary directory and removed at the end), optionally
followed by ``:NAME=VALUE,...`` to set environment variables for its server, e.g.
``HEAD~1 HEAD`` or ``HEAD:RELAY_GC_THRESHOLD=0 HEAD``. The database is migrated and
seeded by this checkout, so the versions must share its migrations.
"""

from __future__ import annotations

# ruff: noqa: S603, S607 - runs git, the servers and wrk with arguments built here
import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from bench import prepare  # noqa: E402
from bench.loadgen import run_wrk  # noqa: E402
from bench.procs import Services, descendants, free_port, wait_http  # noqa: E402
from bench.procs import cpu_seconds as process_cpu  # noqa: E402
from bench.servers import _server_argv  # noqa: E402
from bench.targets import PLAIN_BODY, STREAM_BODY, UPSTREAM_PREFIX  # noqa: E402

ROOT = BENCH.parent
DATABASE = "bench"


@dataclass
class Version:
    spec: str
    checkout: Path
    env: dict[str, str]
    samples: list[tuple[float, float, float]] = field(default_factory=list)


def _versions(specs: list[str], scratch: Path) -> list[Version]:
    versions: list[Version] = []
    for spec in specs:
        where, _, extra = spec.partition(":")
        env = dict(item.split("=", 1) for item in extra.split(",") if item)
        checkout = Path(where)
        if not checkout.is_dir():
            checkout = scratch / f"v{len(versions)}"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(checkout), where],
                check=True,
            )
        versions.append(Version(spec, checkout.resolve(), env))
    return versions


def _server_cpu(pid: int) -> float:
    return process_cpu(pid, reaped_children=True) + sum(process_cpu(p) for p in descendants(pid))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs="+", help="checkouts or git revisions [:ENV=V,...]")
    parser.add_argument("--mode", choices=("plain", "stream"), default="plain")
    parser.add_argument("--key", choices=("limits", "nolimits"), default="limits")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    args = parser.parse_args()
    if len(args.versions) < 2:
        parser.error("give two versions or more")
    prepare.ensure_wrk()
    out = Path(tempfile.mkdtemp(prefix="tollgate-ab-"))
    services = Services(out)
    starts = prepare.ServiceStarts()
    scratch = Path(tempfile.mkdtemp(prefix="tollgate-ab-trees-"))
    versions: list[Version] = []
    try:
        versions = _versions(args.versions, scratch)
        starts.ensure()
        var_dir = BENCH / "results" / "var-pg"
        var_dir.mkdir(parents=True, exist_ok=True)
        env = prepare.project_env(postgres_db=DATABASE, var_dir=var_dir)
        sim_port = free_port()
        simulator = services.start(
            "simulator",
            [
                str(prepare.PYTHON),
                "-m",
                "relay.simulator",
                "--host",
                "127.0.0.1",
                "--port",
                str(sim_port),
            ],
            env=env,
            cwd=ROOT,
        )
        wait_http(f"http://127.0.0.1:{sim_port}/v1/models", simulator)
        prepare.ensure_database(DATABASE)
        keys = {"nolimits": var_dir / "bench-key.txt", "limits": var_dir / "bench-limited-key.txt"}
        prepare.prepare_database(
            env,
            upstream=f"http://127.0.0.1:{sim_port}{UPSTREAM_PREFIX}",
            key_file=keys["nolimits"],
            limited_key_file=keys["limits"],
        )
        body = out / f"{args.mode}.json"
        body.write_text(json.dumps(PLAIN_BODY if args.mode == "plain" else STREAM_BODY))
        for round_ in range(args.rounds):
            for version in versions if round_ % 2 == 0 else versions[::-1]:
                _measure(version, args, env, services, body, keys[args.key], round_)
    finally:
        services.stop_all()
        starts.stop()
        for version in versions:
            if version.checkout.is_relative_to(scratch):
                with contextlib.suppress(subprocess.CalledProcessError):
                    subprocess.run(
                        ["git", "-C", str(ROOT), "worktree", "remove", "--force", version.checkout],
                        check=True,
                    )
        with contextlib.suppress(OSError):
            scratch.rmdir()
    print(f"\n{args.mode} {args.key} c={args.concurrency}, medians of {args.rounds} rounds:")
    for version in versions:
        rps, p50, cpu = (statistics.median(s[i] for s in version.samples) for i in range(3))
        print(
            f"  {version.spec[-48:]:48} {rps:8.0f} req/s  p50 {p50:6.2f} ms  cpu {cpu:.3f} ms/req"
        )
    print(f"servers' logs: {out}")


def _measure(
    version: Version,
    args: argparse.Namespace,
    env: dict[str, str],
    services: Services,
    body: Path,
    keys: Path,
    round_: int,
) -> None:
    port = free_port()
    server_env = {**env, "PYTHONPATH": str(version.checkout), **version.env}
    argv = _server_argv("uvicorn", "config.asgi:application", port, args.workers)
    server = services.start(f"relay-{port}", argv, env=server_env, cwd=version.checkout)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", server)
        run_wrk(url=url, body_file=body, keys_file=keys, concurrency=args.concurrency, duration=1)
        before = _server_cpu(server.pid)
        result = run_wrk(
            url=url,
            body_file=body,
            keys_file=keys,
            concurrency=args.concurrency,
            duration=args.duration,
        )
        cpu_ms = (_server_cpu(server.pid) - before) * 1000 / max(result.requests, 1)
    finally:
        services.stop(server)
    version.samples.append((result.rps, result.p50_ms, cpu_ms))
    print(
        f"round {round_} {version.spec[-48:]:48} {result.rps:8.0f} req/s  "
        f"p50 {result.p50_ms:6.2f} ms  cpu {cpu_ms:.3f} ms/req",
        flush=True,
    )


if __name__ == "__main__":
    main()
