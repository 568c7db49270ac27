"""``bin/demo`` as the README tells a newcomer to run it: periodic work runs for real.

The demo is started with its own ports and its own ``var/`` (a temporary directory), waited
for until ready, sent traffic with its printed key, and then, within a minute, must show
what the Celery worker and beat produce: usage charged to the ledger, revenue in the
rollups, a budget alert at a crossed threshold, a health-checked channel and a draft
invoice for the current month. Its SQLite database is read directly, read-only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# bin/demo installs (a no-op when .venv matches uv.lock), migrates, seeds and starts five
# processes: generous on a loaded 2-core machine. What the issue asks is the second bound.
START_SECONDS = 240
MONEY_SECONDS = 60
# Settings the test process may carry that would take the demo out of its embedded mode.
OUTSIDE = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "TOLLGATE_KEY_HMAC_SECRET")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _until(check: Callable[[], Any], seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        try:
            result = check()
        except (httpx.TransportError, sqlite3.OperationalError):
            result = None
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.5)


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A running ``bin/demo``: its URL and its var directory."""
    port, sim_port = _free_port(), _free_port()
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in OUTSIDE and not name.startswith(("CELERY_", "TOLLGATE_", "DJANGO_"))
    }
    env.update(PORT=str(port), SIM_PORT=str(sim_port), TOLLGATE_VAR_DIR=str(tmp_path))
    log = (tmp_path / "demo.log").open("wb")
    process = subprocess.Popen(  # noqa: S603 - the project's own script
        [str(ROOT / "bin" / "demo")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            _until(
                lambda: (
                    process.poll() is None
                    and httpx.get(url + "/readyz", timeout=10).status_code == 200
                ),
                START_SECONDS,
                "the demo's readiness",
            )
        except AssertionError:
            print((tmp_path / "demo.log").read_text(errors="replace")[-5000:])
            raise
        yield url, tmp_path
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            pytest.fail("bin/demo did not stop within 60 s of SIGTERM")
        log.close()


def _rows(var: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{var / 'tollgate.sqlite3'}?mode=ro", uri=True, timeout=10) as db:
        return db.execute(sql, params).fetchall()


@pytest.mark.timeout(START_SECONDS + MONEY_SECONDS + 180)
def test_the_demo_shows_its_money_within_a_minute_of_traffic(demo: tuple[str, Path]) -> None:
    url, var = demo
    key = (var / "demo-key.txt").read_text().strip()
    headers = {"Authorization": f"Bearer {key}"}
    small = {"model": "sim-small", "messages": [{"role": "user", "content": "Hello"}]}
    # Two long prompts to the dearer model cost about 0.60 USD: past half the demo budget.
    long_prompt = " ".join(["word"] * 120_000)
    large = {
        "model": "sim-large",
        "messages": [{"role": "user", "content": long_prompt}],
        "max_tokens": 8,
    }
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        for body in (small, small, large, large):
            reply = client.post("/v1/chat/completions", json=body)
            assert reply.status_code == 200, reply.text
    month = datetime.now(UTC).strftime("%Y-%m-01")
    seen: dict[str, Any] = {}

    def money() -> bool:
        events = _rows(var, "SELECT COUNT(*), SUM(cost_retail_micros) FROM billing_usageevent")
        count, retail = events[0]
        if count != 4:
            return False
        state = seen["state"] = {
            "charged": _rows(
                var,
                "SELECT COUNT(*), -SUM(amount_micros) FROM billing_ledgerentry WHERE kind='usage'",
            )[0],
            "revenue": _rows(
                var,
                "SELECT SUM(requests), SUM(cost_retail_micros) FROM billing_usagerollup "
                "WHERE granularity='day'",
            )[0],
            "alerts": _rows(
                var,
                "SELECT threshold_percent FROM billing_budgetalert "
                "WHERE notified_at IS NOT NULL ORDER BY threshold_percent",
            ),
            "health": _rows(
                var, "SELECT last_check_ok FROM portal_channel WHERE last_check_at IS NOT NULL"
            ),
            "drafts": _rows(
                var,
                "SELECT total_micros FROM billing_invoice WHERE status='draft' AND period_start=?",
                month,
            ),
        }
        done = (
            state["charged"] == (4, retail)
            and state["revenue"] == (4, retail)
            and state["alerts"] == [(50,)]
            and state["health"] == [(1,)]
            and state["drafts"] == [(retail,)]
        )
        return done

    try:
        _until(money, MONEY_SECONDS, "charges, revenue, a budget alert, health and a draft")
    except AssertionError:
        print(json.dumps(seen, default=str))
        print((var / "demo.log").read_text(errors="replace")[-5000:])
        raise
