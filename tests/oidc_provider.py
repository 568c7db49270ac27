"""A real OpenID Connect provider for tests: panva's ``oidc-provider`` (npm), run by node on
loopback. It is installed with ``npm ci`` from ``tests/oidc/package-lock.json`` into
``tests/oidc/node_modules`` (git-ignored) the first time a test needs it."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

HERE = Path(__file__).resolve().parent / "oidc"
STARTUP_SECONDS = 20


def install() -> Path:
    """``node``, with oidc-provider installed; skips only where npm or node is missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are needed for the OpenID Connect provider")
    with open(HERE / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers install once
        if not (HERE / "node_modules" / "oidc-provider").is_dir():
            done = subprocess.run(  # noqa: S603 - npm from PATH, fixed arguments
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"npm ci failed: {done.stderr[-500:]}")
    return Path(node)


@dataclass
class Idp:
    issuer: str
    accounts_file: Path

    def set_accounts(self, accounts: dict[str, dict[str, Any]]) -> None:
        self.accounts_file.write_text(json.dumps(accounts))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_provider(
    tmp: Path, clients: list[dict[str, Any]], accounts: dict[str, dict[str, Any]]
) -> Iterator[Idp]:
    node = install()
    port = _free_port()
    idp = Idp(f"http://127.0.0.1:{port}", tmp / "accounts.json")
    idp.set_accounts(accounts)
    env = {
        **os.environ,
        "PORT": str(port),
        "CLIENTS": json.dumps(clients),
        "ACCOUNTS_FILE": str(idp.accounts_file),
        "NODE_ENV": "development",
    }
    process = subprocess.Popen(  # noqa: S603 - our own script, fixed arguments
        [str(node), str(HERE / "provider.mjs")],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                found = httpx.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=1)
                if found.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                raise RuntimeError(f"the OIDC provider did not start: {output[-1000:]}")
            time.sleep(0.1)
        yield idp
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
