"""What the bench needs before it measures: tools, services, databases and seed data.

Kept apart from the runner so that installing and seeding never mixes with measuring.
"""

from __future__ import annotations

# ruff: noqa: S603, S607 - runs fixed system tools (apt-get, pip, pg_ctlcluster, redis)
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
TOOLS = BENCH / ".tools"  # granian, installed with pip --target
# py-spy in a target of its own: pip --target will not add to a bin/ that granian made.
PY_SPY = BENCH / ".tools-py-spy"
LITELLM_VENV = BENCH / ".venv-litellm"
LITELLM_VERSION = "1.106.2"  # the version issue 6 measured
PG_URL = "postgres://postgres@127.0.0.1:5432/{name}"
REDIS_URL = "redis://127.0.0.1:6379/5"


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    log("installing wrk from Debian")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True)


def _pip() -> list[str]:
    """pip for this interpreter: the project's venv is made by uv and has none, so fall
    back to the base interpreter's (same Python, same ABI)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    return [getattr(sys, "_base_executable", sys.executable), "-m", "pip"]


def _pip_target(*packages: str, target: Path = TOOLS) -> None:
    subprocess.run(
        [
            *_pip(),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--target",
            str(target),
            *packages,
        ],
        check=True,
    )


def ensure_py_spy() -> Path:
    binary = PY_SPY / "bin" / "py-spy"
    if not binary.exists():
        log("installing py-spy into bench/.tools-py-spy")
        _pip_target("py-spy==0.4.3", target=PY_SPY)
    return binary


def ensure_granian() -> None:
    if not (TOOLS / "granian").exists():
        log("installing granian into bench/.tools")
        _pip_target("granian==2.8.7")


def ensure_litellm() -> Path:
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary
    log(f"creating bench/.venv-litellm with litellm[proxy]=={LITELLM_VERSION} (large, once)")
    subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
    subprocess.run(
        [
            str(LITELLM_VENV / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"litellm[proxy]=={LITELLM_VERSION}",
        ],
        check=True,
    )
    return binary


def litellm_installed() -> bool:
    return (LITELLM_VENV / "bin" / "litellm").exists()


# --- PostgreSQL and Redis ---------------------------------------------------------------------


class ServiceStarts:
    """PostgreSQL and Redis started by the bench (as .ci/run does), stopped again at the end."""

    def __init__(self) -> None:
        self.postgres_cluster: str | None = None
        self.redis = False

    def ensure(self) -> None:
        if subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode:
            version = sorted(os.listdir("/etc/postgresql"))[-1]
            log(f"starting PostgreSQL {version}")
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
                check=True,
            )
            self.postgres_cluster = version
            _wait(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"])
        ping = ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"]
        if subprocess.run(ping, capture_output=True).returncode:
            log("starting Redis")
            subprocess.run(
                [
                    "redis-server",
                    "--daemonize",
                    "yes",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "6379",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                check=True,
            )
            self.redis = True
            _wait(ping)

    def stop(self) -> None:
        if self.redis:
            subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
                capture_output=True,
            )
        if self.postgres_cluster:
            subprocess.run(
                [
                    "pg_ctlcluster",
                    "--skip-systemctl-redirect",
                    self.postgres_cluster,
                    "main",
                    "stop",
                ],
                capture_output=True,
            )


def _wait(argv: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(argv, capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} did not come up in {timeout:.0f}s")
        time.sleep(0.5)


def ensure_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_URL.format(name="postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            log(f"creating database {name}")
            conn.execute(f'CREATE DATABASE "{name}"')


# --- the project's side -----------------------------------------------------------------------


BENCH_SECRETS = {
    "SECRET_KEY": "Ymt6NnzM86DiMoayTQNmmcUqPQk8DJbswyAqmeLj4AUvMHFEm8s3-0Z37LdKhfREsvo",
    "TOLLGATE_KEY_HMAC_SECRET": "ZzVA5Ya-VzYn7pN0rf7_cijaRT5gzr4PZBZVRRXq7k8",
    "TOLLGATE_ENCRYPTION_KEYS": "0W1FHFnX45MUvm-EeQu1qxuzUzbfTOfooVxbiyBfLUM=",
}


def project_env(*, postgres_db: str | None, var_dir: Path) -> dict[str, str]:
    """The environment the relay and the seed commands run with."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "CELERY_TASK_ALWAYS_EAGER"}
    }
    env["TOLLGATE_VAR_DIR"] = str(var_dir)
    env["PYTHONPATH"] = str(ROOT)
    if postgres_db:
        # The bench's PostgreSQL databases outlive any checkout's var/ (the scale set takes
        # ten minutes to build), so their keys and channel secrets are made with these
        # fixed, bench-only secrets, readable from every clone. Never use them elsewhere.
        env.update(BENCH_SECRETS)
        env["DATABASE_URL"] = PG_URL.format(name=postgres_db)
        env["REDIS_URL"] = REDIS_URL
        # Redis is shared with whatever else runs here: keep the bench's keys apart.
        env["CACHE_KEY_PREFIX"] = "tollgate-bench"
    return env


def manage(env: dict[str, str], *args: str) -> None:
    subprocess.run(
        [str(PYTHON), "manage.py", *args], cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL
    )


def seed(env: dict[str, str], *args: str) -> None:
    subprocess.run([str(PYTHON), str(BENCH / "seed.py"), *args], cwd=ROOT, env=env, check=True)


def prepare_database(
    env: dict[str, str], *, upstream: str, key_file: Path, limited_key_file: Path
) -> None:
    log("migrating and seeding the bench database")
    manage(env, "migrate", "--noinput")
    manage(env, "seed_demo", "--upstream", upstream, "--key-file", str(key_file))
    seed(env, "limited-key", "--out", str(limited_key_file))
    seed(env, "translated-model")


class UsageCounter:
    """Counts billing_usageevent rows written since ``reset``, to check full metering.

    Rows are counted above a watermark id (an index range scan), so counting stays cheap
    when the table holds millions of rows.
    """

    TABLE = "billing_usageevent"

    def __init__(self, env: dict[str, str]) -> None:
        self.url = env.get("DATABASE_URL")
        self.sqlite_path = Path(env["TOLLGATE_VAR_DIR"]) / "tollgate.sqlite3"
        self.floor = 0
        self._conn: Any = None  # one kept PostgreSQL connection: see backend_pid

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend serving this counter's queries (None before the first,
        or on SQLite): the bench leaves its CPU out of the stores' CPU per request."""
        return self._conn.info.backend_pid if self._conn is not None else None

    def _query(self, sql: str, params: tuple[object, ...] = ()) -> tuple[int, ...]:
        if self.url:
            import psycopg

            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.url, autocommit=True)
            try:
                row = self._conn.execute(sql.replace("?", "%s"), params).fetchone()
            except psycopg.OperationalError:
                self._conn.close()
                self._conn = psycopg.connect(self.url, autocommit=True)
                row = self._conn.execute(sql.replace("?", "%s"), params).fetchone()
        else:
            import sqlite3

            with sqlite3.connect(self.sqlite_path, timeout=30) as conn:
                row = conn.execute(sql, params).fetchone()
        return tuple(int(v or 0) for v in row or ())

    def reset(self) -> None:
        """Count from here on: rows already written are left out."""
        self.floor = self._query(f"SELECT max(id) FROM {self.TABLE}")[0]  # noqa: S608

    def counts(self) -> tuple[int, int, int]:
        """(events since the reset, of which answered 200, of which counted locally)."""
        return self._counts(f"id > {int(self.floor)}", ())

    def _counts(self, where: str, params: tuple[object, ...]) -> tuple[int, int, int]:
        all_rows, ok_rows, estimated = self._query(
            f"SELECT count(*), sum(CASE WHEN status_code = 200 THEN 1 ELSE 0 END), "  # noqa: S608
            f"sum(CASE WHEN estimated THEN 1 ELSE 0 END) FROM {self.TABLE} WHERE {where}",
            params,
        )
        return all_rows, ok_rows, estimated

    def mark(self) -> int:
        """The newest event id now: a run's events come after it."""
        return self._query(f"SELECT coalesce(max(id), 0) FROM {self.TABLE}")[0]  # noqa: S608

    def run_counts(self, floor: int, started: datetime, ended: datetime) -> tuple[int, int, int]:
        """Counts of the events of requests that arrived between ``started`` and ``ended``
        (the relay stamps each event with its request's arrival): a warm-up's events
        written late never count for the run that follows it."""
        if self.url:
            bounds: tuple[object, ...] = (started, ended)
        else:  # Django keeps SQLite datetimes as naive UTC text
            bounds = tuple(
                t.astimezone(UTC).replace(tzinfo=None).isoformat(" ") for t in (started, ended)
            )
        return self._counts(f"id > {int(floor)} AND created_at >= ? AND created_at <= ?", bounds)

    def settle(self, quiet_for: float = 1.5, timeout: float = 20.0) -> tuple[int, int, int]:
        """The counts once the relay's writers have flushed (no change for ``quiet_for``)."""
        return self._settle(self.counts, 0, quiet_for, timeout)

    def settle_run(
        self,
        floor: int,
        started: datetime,
        ended: datetime,
        answered: int,
        quiet_for: float = 1.5,
        timeout: float = 30.0,
    ) -> tuple[int, int, int]:
        """A run's counts once every answered request has its event and the count has
        not changed for ``quiet_for`` (or ``timeout`` passed: a shortfall then shows)."""
        return self._settle(
            lambda: self.run_counts(floor, started, ended), answered, quiet_for, timeout
        )

    @staticmethod
    def _settle(
        count: Callable[[], tuple[int, int, int]],
        at_least: int,
        quiet_for: float,
        timeout: float,
    ) -> tuple[int, int, int]:
        deadline = time.monotonic() + timeout
        last = count()
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = count()
            if now != last:
                last, stable_since = now, time.monotonic()
            elif time.monotonic() - stable_since >= quiet_for and last[0] >= at_least:
                break
        return last
