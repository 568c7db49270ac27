"""Starting the servers the bench compares, as their production configuration runs them."""

from __future__ import annotations

import os
import shutil

from bench import prepare
from bench.prepare import PYTHON, ROOT
from bench.procs import Service, free_port, wait_http
from bench.targets import ANTHROPIC_MODEL, EMBEDDING_MODEL, TRANSLATED_MODEL, Context, Target


def _server_argv(server: str, app: str, port: int, workers: int) -> list[str]:
    if server == "granian":
        return [
            str(PYTHON),
            "-m",
            "granian",
            "--interface",
            "asgi",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "1",
            "--no-ws",
            "--log-level",
            "warning",
            app,
        ]
    # The production command of the README ("Running in production"), on loopback.
    return [
        str(PYTHON),
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--loop",
        "uvloop",
        "--http",
        "relay.server:HttpToolsProtocol" if app.startswith("config.") else "httptools",
        "--no-access-log",
        "--log-level",
        "warning",
        # As deploy/Procfile: a worker slow to start on a loaded machine is not replaced.
        "--timeout-worker-healthcheck",
        "20",
    ]


def _server_env(ctx: Context, server: str) -> dict[str, str]:
    env = dict(ctx.env)
    if server == "granian":
        env["PYTHONPATH"] = f"{prepare.TOOLS}:{env['PYTHONPATH']}"
    return env


def _litellm_config(upstream: str) -> str:
    """Every model a bench mode asks for, on the same simulator as Tollgate's channels.
    ``sim-translated`` is served like ``sim-small`` (LiteLLM decides itself how to call
    the upstream for each client API); ``sim-anthropic`` goes to the simulator's Anthropic
    Messages API, as Tollgate's Anthropic channel does."""
    models = [
        ("sim-small", "openai/sim-small", upstream),
        (TRANSLATED_MODEL, "openai/sim-small", upstream),
        (EMBEDDING_MODEL, f"openai/{EMBEDDING_MODEL}", upstream),
        # LiteLLM's Anthropic client adds /v1/messages to its base.
        (ANTHROPIC_MODEL, "anthropic/sim-small", upstream.removesuffix("/v1")),
    ]
    entries = "".join(
        f"  - model_name: {name}\n"
        "    litellm_params:\n"
        f"      model: {model}\n"
        f"      api_base: {base}\n"
        "      api_key: sk-bench-upstream\n"
        for name, model, base in models
    )
    return f"model_list:\n{entries}litellm_settings:\n  telemetry: false\n"


def start_group(ctx: Context, target: Target) -> tuple[Service, str]:
    """Start the server behind a target's group; returns it and its base URL."""
    group = target.group
    port = free_port()
    workers = ctx.args.workers
    if group == "bare-aiohttp":
        env = {**ctx.env, "BARE_UPSTREAM": ctx.upstream}
        argv = _server_argv("uvicorn", "bench.bare_proxy_aiohttp:app", port, workers)
        service = ctx.services.start(group, argv, env=env, cwd=ROOT)
        health = "/healthz"
    elif group.startswith("bare"):
        server = group.partition("@")[2] or "uvicorn"
        env = {**_server_env(ctx, server), "BARE_UPSTREAM": ctx.upstream}
        if group == "bare-1client":
            env["BARE_CLIENTS"] = "1"
        service = ctx.services.start(
            group, _server_argv(server, "bench.bare_proxy:app", port, workers), env=env, cwd=ROOT
        )
        health = "/healthz"
    elif group.startswith("tollgate"):
        server = group.partition("@")[2] or "uvicorn"
        env = {**_server_env(ctx, server), **target.env}
        # Metrics in prometheus-client's multiprocess mode: one fresh directory per server.
        metrics_dir = ctx.out / f"prometheus-{group.replace('/', '-')}"
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir()
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        service = ctx.services.start(
            group.replace("/", "-"),
            _server_argv(server, "config.asgi:application", port, workers),
            env=env,
            cwd=ROOT,
        )
        health = "/healthz"
    elif group == "litellm":
        config = ctx.out / "litellm.yaml"
        config.write_text(_litellm_config(ctx.upstream))
        # As issue 6 measured it: 2 workers, no database, no spend tracking.
        env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
        env["LITELLM_LOG"] = "ERROR"
        env["LITELLM_MASTER_KEY"] = (ctx.out / "litellm-master-key.txt").read_text().strip()
        service = ctx.services.start(
            group,
            [
                str(prepare.LITELLM_VENV / "bin" / "litellm"),
                "--config",
                str(config),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--num_workers",
                str(workers),
                # uvicorn (0.54 in LiteLLM's venv) kills a worker that does not answer its
                # health check within 5 s; importing LiteLLM takes longer than that on a
                # loaded machine, so the workers were replaced forever and never served.
                "--timeout_worker_healthcheck",
                "60",
            ],
            env=env,
            cwd=ctx.out,
        )
        health = "/health/liveliness"
    else:
        raise ValueError(group)
    url = f"http://127.0.0.1:{port}"
    wait_http(url + health, service, timeout=180 if group == "litellm" else 60)
    return service, url
