"""A fake OpenAI-compatible upstream for the demo, the tests and the benchmarks.

A raw ASGI application, deliberately free of Django so a benchmark can run it in a bare
interpreter. It answers ``POST /v1/chat/completions``, the Responses API (``/v1/responses``
with stored responses), Anthropic's ``/v1/messages`` (and ``count_tokens``),
``/v1/embeddings``, ``/v1/completions`` and ``GET /v1/models[/{id}]`` with deterministic
content and usage, and misbehaves on demand when the path carries a behaviour prefix,
``/sim/<options>/v1/...`` (see ``parse_options``), so one process can stand in for many
channels. ``/_sim/requests`` and ``/_sim/stats`` show tests what a gateway really sent and
how many upstream requests it held open.

Run it with ``python -m relay.simulator --port 9100`` or ``manage.py simulate_upstream``.
"""

from __future__ import annotations

from relay.simulator.app import SimulatorApp, build_app
from relay.simulator.cli import add_arguments, main, serve, serve_from_arguments
from relay.simulator.options import OptionError, SimOptions, parse_options
from relay.simulator.responses import count_prompt_tokens

__all__ = [
    "OptionError",
    "SimOptions",
    "SimulatorApp",
    "add_arguments",
    "build_app",
    "count_prompt_tokens",
    "main",
    "parse_options",
    "serve",
    "serve_from_arguments",
]
