"""The bench's modes: what each sends, what its floor forwards, and how a run picks them."""

from __future__ import annotations

import pytest
import yaml

from bench import issue18
from bench.runner import parse_args
from bench.servers import _litellm_config
from bench.targets import (
    ALL_MODES,
    PLAIN_BODY,
    SURFACE_MODES,
    UPSTREAM_PREFIX,
    floor_mode,
    mode_path,
    wire_mode,
)


def test_embeddings_go_to_the_demo_embedding_model_and_its_floor_forwards_the_same() -> None:
    path, body = SURFACE_MODES["embeddings"]
    assert path == "/v1/embeddings"
    assert body["model"] == "sim-embed"  # seed_demo's embedding model, on the Simulator channel
    assert isinstance(body["input"], str)
    assert "stream" not in body
    # Pass-through: both floors send the client's own exchange to the simulator.
    assert floor_mode("embeddings") == "embeddings"
    for floor in ("bare", "bare-aiohttp"):
        assert mode_path(wire_mode(floor, "embeddings")) == "/v1/embeddings"


def test_all_modes_cover_every_surface_mode_once() -> None:
    assert sorted(ALL_MODES) == sorted({"plain", "stream", *SURFACE_MODES})
    assert len(ALL_MODES) == len(set(ALL_MODES))
    assert set(issue18.SURFACES) == {"chat completions", "Responses", "Messages", "embeddings"}


def test_litellm_serves_the_model_of_every_mode_from_the_same_simulator() -> None:
    """LiteLLM is compared on every mode, so its configuration names each mode's model."""
    upstream = "http://127.0.0.1:9100" + UPSTREAM_PREFIX
    config = yaml.safe_load(_litellm_config(upstream))
    served = {entry["model_name"]: entry["litellm_params"] for entry in config["model_list"]}
    for mode in ALL_MODES:
        body = SURFACE_MODES[mode][1] if mode in SURFACE_MODES else PLAIN_BODY
        assert body["model"] in served, mode
    assert served["sim-embed"] == {
        "model": "openai/sim-embed",
        "api_base": upstream,
        "api_key": "sk-bench-upstream",
    }
    # Anthropic's client adds /v1/messages itself, so its base stops before /v1.
    assert served["sim-anthropic"]["model"] == "anthropic/sim-small"
    assert served["sim-anthropic"]["api_base"] == "http://127.0.0.1:9100/sim/tokens=20"


def test_surfaces_flag_runs_every_mode() -> None:
    assert parse_args(["--surfaces"]).modes == list(ALL_MODES)
    assert "embeddings" in parse_args(["--surfaces"]).modes
    assert parse_args([]).modes == ["plain", "stream"]
    assert parse_args(["--modes", "embeddings,responses"]).modes == ["embeddings", "responses"]


def test_an_unknown_mode_is_refused_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_args(["--modes", "plain,embedding"])
    assert "unknown mode 'embedding'" in capsys.readouterr().err
