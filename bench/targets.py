"""What the bench measures: the requests, the targets and the state one section shares."""

from __future__ import annotations

import argparse
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from bench import issue18, prepare, report
from bench.procs import Service, Services

PLAIN_BODY = {
    "model": "sim-small",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Write two sentences about toll roads."},
    ],
    "max_tokens": 64,
}
STREAM_BODY = {**PLAIN_BODY, "stream": True, "stream_options": {"include_usage": True}}
# The other surfaces (``--modes``): Responses and Anthropic Messages, passed through to the
# demo channel (which serves both natively) or, on ``sim-translated`` (a channel without
# native surfaces, ``bench/seed.py translated-model``), translated to chat completions.
TRANSLATED_MODEL = "sim-translated"
_RESPONSES = {"input": PLAIN_BODY["messages"], "max_output_tokens": 64}
_MESSAGES = {
    "system": "You are a helpful assistant.",
    "messages": [PLAIN_BODY["messages"][1]],
    "max_tokens": 64,
}
SURFACE_MODES: dict[str, tuple[str, dict[str, object]]] = {}
for _name, _path, _body in (
    ("responses", "/v1/responses", _RESPONSES),
    ("messages", "/v1/messages", _MESSAGES),
):
    for _model, _suffix in (("sim-small", ""), (TRANSLATED_MODEL, "-translated")):
        _base = {"model": _model, **_body}
        SURFACE_MODES[_name + _suffix] = (_path, _base)
        SURFACE_MODES[_name + _suffix + "-stream"] = (_path, {**_base, "stream": True})
# Chat completions on ``sim-anthropic`` (an Anthropic channel, ``bench/seed.py
# translated-model``): translated to Anthropic's Messages API and back.
ANTHROPIC_MODEL = "sim-anthropic"
SURFACE_MODES["chat-anthropic"] = ("/v1/chat/completions", {**PLAIN_BODY, "model": ANTHROPIC_MODEL})
SURFACE_MODES["chat-anthropic-stream"] = (
    "/v1/chat/completions",
    {**STREAM_BODY, "model": ANTHROPIC_MODEL},
)
# Embeddings on ``sim-embed`` (the demo's embedding model), passed through; never streamed.
EMBEDDING_MODEL = "sim-embed"
SURFACE_MODES["embeddings"] = (
    "/v1/embeddings",
    {"model": EMBEDDING_MODEL, "input": PLAIN_BODY["messages"][1]["content"]},
)
# Each translated mode against the pass-through mode of the same client API.
PASS_THROUGH_OF = report.PASS_THROUGH_OF_REPORT
# ``--surfaces``: every mode of every client API, as issue 18's target 6 asks.
ALL_MODES = tuple(mode for modes in issue18.SURFACES.values() for mode in modes)


def mode_path(mode: str) -> str:
    return SURFACE_MODES[mode][0] if mode in SURFACE_MODES else "/v1/chat/completions"


def floor_mode(mode: str) -> str:
    """What a bare proxy runs as the floor of ``mode``: the exchange the relay itself has
    with the upstream. A translated mode's upstream exchange is in the channel's format
    (chat completions, or Anthropic's Messages), so its floor forwards that one."""
    stream = mode.endswith("-stream")
    if mode.startswith("chat-anthropic"):
        return "messages-stream" if stream else "messages"
    if "-translated" in mode:
        return "stream" if stream else "plain"
    return mode


def wire_mode(target_name: str, mode: str) -> str:
    """The mode whose body and path ``target_name`` is sent for ``mode``."""
    return floor_mode(mode) if target_name.startswith("bare") else mode


# The simulator answers 20 completion tokens: 20 content chunks plus the usage chunk.
UPSTREAM_PREFIX = "/sim/tokens=20/v1"
STORE_PROCESSES = frozenset({"postgres", "redis-server"})
POSTGRES, EMBEDDED = "postgres", "embedded"
WARMUP_CONCURRENCY = 8
# Observability variants: what metrics and JSON access logs cost, against "tollgate".
METRICS_OFF = {"RELAY_METRICS": "false"}
JSON_ACCESS_LOG = {"LOG_FORMAT": "json", "RELAY_ACCESS_LOG": "true"}
# The limits path as it was before requests went ahead of their admission (relay.ahead).
WAITING = {"RELAY_FORWARD_AHEAD": "false"}


PG_DATABASE = "bench"
OBSERVABILITY_NAMES = ("tollgate-metrics-off", "tollgate+json-log")


@dataclass
class Target:
    name: str
    group: str  # targets of one group share one running server
    keys_file: Path | None
    metered: bool
    env: dict[str, str] = field(default_factory=dict)  # on top of the project's, for the server
    concurrency: list[int] | None = None  # None: --concurrency


@dataclass
class Context:
    args: argparse.Namespace
    services: Services
    env: dict[str, str]
    out: Path
    upstream: str
    bodies: dict[str, Path]
    simulator: Service
    counter: prepare.UsageCounter
    store: str = POSTGRES
    results: list[report.Measurement] = field(default_factory=list)
    checks: list[dict[str, object]] = field(default_factory=list)
    sizes: dict[str, dict[str, int]] | None = None  # of the scale section's databases
    call_costs: dict[str, float] | None = None  # bench/observability_cost.py, microseconds
    translation: dict[str, float] | None = None  # bench/translation_cost.py, microseconds


def pg_targets(ctx: Context, key_file: Path, limited_key_file: Path) -> list[Target]:
    args = ctx.args
    chosen: list[Target] = []
    for server in args.servers:
        suffix = "" if server == "uvicorn" else f"@{server}"
        chosen.append(Target(f"bare{suffix}", f"bare{suffix}", key_file, metered=False))
        chosen.append(Target(f"tollgate{suffix}", f"tollgate{suffix}", key_file, metered=True))
        if args.limits:
            chosen.append(
                Target(f"tollgate+limits{suffix}", f"tollgate{suffix}", limited_key_file, True)
            )
    if args.limits and args.ahead_ab:
        chosen.append(
            Target("tollgate+limits-waiting", "tollgate-waiting", limited_key_file, True, WAITING)
        )
    if args.observability:
        top = [max(args.concurrency)]
        chosen.append(
            Target("tollgate-metrics-off", "tollgate-metrics-off", key_file, True, METRICS_OFF, top)
        )
        chosen.append(
            Target("tollgate+json-log", "tollgate+json-log", key_file, True, JSON_ACCESS_LOG, top)
        )
    if args.bare_aiohttp:
        chosen.insert(1, Target("bare-aiohttp", "bare-aiohttp", key_file, metered=False))
    if args.bare_1client:
        chosen.insert(1, Target("bare-1client", "bare-1client", key_file, metered=False))
    if args.litellm:
        # LiteLLM refuses to start without a master key; clients send it as their key.
        master = ctx.out / "litellm-master-key.txt"
        master.write_text("sk-bench-" + secrets.token_hex(16) + "\n")
        chosen.append(Target("litellm", "litellm", master, metered=False))
    return chosen


def embedded_targets(key_file: Path) -> list[Target]:
    return [Target("tollgate/embedded", "tollgate/embedded", key_file, metered=True)]
