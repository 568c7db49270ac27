"""Drive wrk (with bench/wrk/chat.lua) and read back what it measured."""

from __future__ import annotations

# ruff: noqa: S603 - runs wrk with arguments built here
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "chat.lua"


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    errors: int  # socket errors and non-2xx/3xx answers
    status_errors: int
    timeouts: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    output: str

    @property
    def ok(self) -> int:
        return max(self.requests - self.status_errors, 0)

    @property
    def rps(self) -> float:
        return self.ok / self.duration_s if self.duration_s else 0.0


def run_wrk(
    *,
    url: str,
    body_file: Path,
    keys_file: Path | None,
    concurrency: int,
    duration: float,
    timeout: float = 10.0,
    path: str = "/v1/chat/completions",
) -> WrkResult:
    threads = min(2, concurrency)
    env = {
        **os.environ,
        "BENCH_BODY": str(body_file),
        "BENCH_KEYS": str(keys_file or ""),
        "BENCH_PATH": path,
    }
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{max(1, round(duration))}s",  # wrk takes whole seconds
        f"--timeout={timeout:g}s",
        "--latency",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    completed = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration + timeout + 30, check=False
    )
    output = completed.stdout + completed.stderr
    line = next((ln for ln in output.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if completed.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({completed.returncode}):\n{output}")
    data = json.loads(line.removeprefix("BENCH_JSON "))
    socket_errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors"))
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=socket_errors + data["status_errors"] + data["timeouts"],
        status_errors=data["status_errors"],
        timeouts=data["timeouts"],
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        output=output,
    )
