"""The production layout as written in deploy/: the Procfile's processes (web, worker, beat)
started the way a Procfile runner starts them, on loopback, with PostgreSQL and a private
Redis; and the docker-compose file describing the same processes."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from django.conf import settings
from django.db import connection
from redis.exceptions import ConnectionError as RedisConnectionError

from billing.models import BillingAccount, UsageEvent, UsageRollup
from portal import crypto
from portal.models import ApiKey, CatalogModel, Channel, ChannelModel, Organization
from relay.simulator import build_app
from tests.servers import serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
PROCFILE = ROOT / "deploy" / "Procfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"
# Bounds on waiting for readiness, generous for a loaded 2-core machine; never fixed sleeps.
WAIT_SECONDS = 60
PROBE_SECONDS = 10


def procfile() -> dict[str, str]:
    entries = {}
    for line in PROCFILE.read_text().splitlines():
        match = re.match(r"^([a-z]+):\s*(.+)$", line)
        if match:
            entries[match.group(1)] = match.group(2)
    return entries


def test_procfile_and_compose_describe_the_same_processes() -> None:
    entries = procfile()
    assert set(entries) == {"web", "worker", "beat"}
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert {"postgres", "redis", "migrate", "web", "worker", "beat"} <= set(services)
    for name in ("web", "worker", "beat"):
        command = " ".join(services[name]["command"])
        words = shlex.split(re.sub(r"\$\{[^}]+\}", "X", entries[name]))
        # The same program and sub-command in both: uvicorn's app, celery's role.
        assert " ".join(words[:4]) in command or " ".join(words[1:5]) in command, name
    assert services["migrate"]["command"][-2:] == ["migrate", "--noinput"]
    assert "--forwarded-allow-ips" not in " ".join(services["web"]["command"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=PROBE_SECONDS)


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            if check():
                return
        except (httpx.TransportError, OSError, RedisConnectionError):
            pass
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_SECONDS} s"
        time.sleep(0.2)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test's own: the worker consumes the default queue, and beat
    schedules real jobs, which must never reach a shared Redis."""
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603 - fixed arguments
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    _until(lambda: redis.Redis.from_url(url).ping(), "private redis")
    yield url
    process.kill()
    process.wait(10)


@pytest.mark.services
@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_the_procfile_runs_tollgate_on_one_machine(
    private_redis: str, tmp_path: Path, platform_org: Organization
) -> None:
    sim_url, stop_sim = serve_in_thread(build_app())
    tenant = Organization.objects.create(name="T", slug="t", kind="tenant", parent=platform_org)
    BillingAccount.objects.create(organization=tenant, mode="postpaid")  # explicit terms
    model = CatalogModel.objects.create(public_id="deploy-model")
    channel = Channel(name="sim", base_url=f"{sim_url}/v1")
    channel.secret = "sk-upstream-deploy"
    channel.save()
    ChannelModel.objects.create(channel=channel, model=model)
    from billing.services import model_price_set, price_list_create

    prices = price_list_create(owner=platform_org, name="W", actor="test", is_default=True)
    model_price_set(
        price_list=prices, model=model, input_per_mtok=1, output_per_mtok=1, actor="test"
    )
    secret = crypto.generate_api_key()
    key = ApiKey(tenant=tenant, name="deploy")
    key.set_secret(secret)
    key.save()

    db = connection.settings_dict
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "DATABASE_URL": (
            f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
        ),
        "REDIS_URL": private_redis,
        "CELERY_BROKER_URL": private_redis,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "SECRET_KEY": settings.SECRET_KEY,
        "TOLLGATE_KEY_HMAC_SECRET": settings.TOLLGATE_KEY_HMAC_SECRET,
        "TOLLGATE_ENCRYPTION_KEYS": ",".join(settings.TOLLGATE_ENCRYPTION_KEYS),
        "TOLLGATE_VAR_DIR": str(tmp_path),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "CELERY_CONCURRENCY": "1",
        "LOG_LEVEL": "WARNING",
        "RELAY_USAGE_FLUSH_SECONDS": "0.1",
    }
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in procfile().items():  # as a Procfile runner does: one shell each
            processes[name] = subprocess.Popen(  # noqa: S603 - the project's own Procfile
                ["/bin/sh", "-c", f"exec {command}"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=(tmp_path / f"{name}.log").open("wb"),
                start_new_session=True,
            )
        web = f"http://127.0.0.1:{port}"
        try:
            # Ready, not merely listening: each probe may itself be slow on a loaded machine
            # (a timed-out probe is retried, only the overall wait is bounded).
            _until(lambda: _get(web + "/readyz").status_code == 200, "web readiness")
            _until(lambda: _get(web + "/account/login/").status_code == 200, "the dashboard")
        except AssertionError:
            print((tmp_path / "web.log").read_text())
            raise
        reply = httpx.post(
            web + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {secret}"},
            json={"model": "deploy-model", "messages": [{"role": "user", "content": "hi"}]},
            timeout=WAIT_SECONDS,
        )
        assert reply.status_code == 200, reply.text
        _until(lambda: UsageEvent.objects.filter(api_key=key).exists(), "usage recorded")

        from celery import Celery

        # Not the current app: shared tasks of later tests must keep the project's broker.
        client = Celery("deploy-test", broker=private_redis, set_as_current=False)
        client.send_task("billing.rollups_advance")
        client.close()
        _until(lambda: UsageRollup.objects.filter(tenant=tenant).exists(), "the worker's rollups")
        # (shelve may add a suffix to the file name, depending on the dbm module)
        _until(lambda: any(tmp_path.glob("celerybeat-schedule*")), "beat's schedule")
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited"
    finally:
        stop_sim()
        for process in processes.values():
            with_group = os.getpgid(process.pid) if process.poll() is None else None
            if with_group is not None:
                os.killpg(with_group, signal.SIGTERM)
        for name, process in processes.items():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
                pytest.fail(f"{name} did not stop within 30 s of SIGTERM")
