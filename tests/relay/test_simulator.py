"""The simulated upstream speaks OpenAI's schema and misbehaves exactly as asked.

Everything goes over real HTTP to a simulator on a loopback port, and every body and
stream chunk is checked against OpenAI's published OpenAPI schemas.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from relay.simulator import build_app, count_prompt_tokens
from tests.openai_schema import ValidationError, parse_sse_data, validate, validate_chat_stream
from tests.servers import running_server

MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": [{"type": "text", "text": "What is  a gateway?"}]},
]
PROMPT_TOKENS = (2 + 4) + (4 + 4) + 3  # words + 4 per message, + 3
WEATHER_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    with running_server(build_app(completion_tokens=5)) as base_url:
        yield base_url


@pytest.fixture
def client(sim_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=sim_url, headers={"Authorization": "Bearer sk-test"}, timeout=5
    ) as http:
        http.delete("/_sim/requests").raise_for_status()
        yield http


def chat(client: httpx.Client, prefix: str = "", **fields: Any) -> httpx.Response:
    body = {"model": "sim-small", "messages": MESSAGES, **fields}
    return client.post(f"{prefix}/v1/chat/completions", json=body)


def stream_chunks(client: httpx.Client, prefix: str = "", **fields: Any) -> list[dict[str, Any]]:
    response = chat(client, prefix, stream=True, **fields)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return validate_chat_stream(response.text)


def stats(client: httpx.Client) -> dict[str, Any]:
    return client.get("/_sim/stats").json()


def wait_for(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def assert_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status
    body = response.json()
    validate(body, "ErrorResponse")
    return body["error"]


def test_completion_matches_schema_and_echoes_model(client: httpx.Client) -> None:
    response = chat(client, model="Vendor/Some-Model:2024")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    validate(body, "CreateChatCompletionResponse")
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == "Vendor/Some-Model:2024"
    [choice] = body["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "tok0 tok1 tok2 tok3 tok4",
        "refusal": None,
    }
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == PROMPT_TOKENS == count_prompt_tokens(MESSAGES)
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == PROMPT_TOKENS + 5
    assert usage["prompt_tokens_details"]["cached_tokens"] == 0
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 0


def test_max_tokens_truncates_with_finish_reason_length(client: httpx.Client) -> None:
    body = chat(client, max_completion_tokens=2, max_tokens=4).json()

    validate(body, "CreateChatCompletionResponse")
    assert body["choices"][0]["message"]["content"] == "tok0 tok1"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2


def test_n_choices_and_logprobs(client: httpx.Client) -> None:
    body = chat(client, n=2, logprobs=True, top_logprobs=3).json()

    validate(body, "CreateChatCompletionResponse")
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    assert body["usage"]["completion_tokens"] == 10
    entries = body["choices"][1]["logprobs"]["content"]
    assert [entry["token"] for entry in entries] == ["tok0", " tok1", " tok2", " tok3", " tok4"]
    assert all(len(entry["top_logprobs"]) == 3 for entry in entries)


def test_stream_chunks_match_schema(client: httpx.Client) -> None:
    chunks = stream_chunks(client, "/sim/tokens=3", model="Upstream-Name")

    assert len({chunk["id"] for chunk in chunks}) == 1
    assert {chunk["model"] for chunk in chunks} == {"Upstream-Name"}
    assert all("usage" not in chunk for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "tok0"},
        {"content": " tok1"},
        {"content": " tok2"},
        {},
    ]
    assert [chunk["choices"][0]["finish_reason"] for chunk in chunks][-2:] == [None, "stop"]


def test_stream_include_usage_adds_final_usage_chunk(client: httpx.Client) -> None:
    chunks = stream_chunks(client, stream_options={"include_usage": True})

    *content, last = chunks
    assert last["choices"] == []
    assert last["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert last["usage"]["completion_tokens"] == 5
    assert all(chunk["usage"] is None for chunk in content)
    assert content[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_with_two_choices(client: httpx.Client) -> None:
    chunks = stream_chunks(client, "/sim/tokens=2", n=2)

    texts: dict[int, str] = {0: "", 1: ""}
    finishes = {}
    for chunk in chunks:
        [choice] = chunk["choices"]
        texts[choice["index"]] += choice["delta"].get("content") or ""
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "tok0 tok1", 1: "tok0 tok1"}
    assert finishes == {0: "stop", 1: "stop"}


def test_tool_call_non_stream_uses_named_tool(client: httpx.Client) -> None:
    choice_of_tool = {"type": "function", "function": {"name": "get_time"}}
    body = chat(client, tools=WEATHER_TOOLS, tool_choice=choice_of_tool).json()

    validate(body, "CreateChatCompletionResponse")
    [choice] = body["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    [call] = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_")
    assert call["function"] == {"name": "get_time", "arguments": "{}"}


def test_tool_choice_none_answers_with_text(client: httpx.Client) -> None:
    body = chat(client, tools=WEATHER_TOOLS, tool_choice="none").json()

    assert body["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4"


def test_tool_call_stream_uses_first_function(client: httpx.Client) -> None:
    chunks = stream_chunks(client, tools=WEATHER_TOOLS)

    calls = [
        call for chunk in chunks for call in chunk["choices"][0]["delta"].get("tool_calls", [])
    ]
    for call in calls:
        validate(call, "ChatCompletionMessageToolCallChunk")
    first, second = calls
    assert first["index"] == 0 and first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": ""}
    assert second == {"index": 0, "function": {"arguments": "{}"}}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, "server_error"), (503, "server_error"), (400, "invalid_request_error")],
)
def test_fail_answers_with_error_envelope(client: httpx.Client, status: int, kind: str) -> None:
    response = chat(client, f"/sim/fail={status}")

    error = assert_error(response, status)
    assert error["type"] == kind


def test_fail_429_sets_retry_after(client: httpx.Client) -> None:
    response = chat(client, "/sim/fail=429", stream=True)

    assert_error(response, 429)
    assert response.headers["retry-after"] == "1"


def test_fail_first_fails_then_recovers_per_prefix(client: httpx.Client) -> None:
    statuses = [chat(client, "/sim/fail_first=2").status_code for _ in range(3)]
    other = chat(client, "/sim/fail_first=2,fail=503")

    assert statuses == [500, 500, 200]
    assert_error(other, 503)  # a different prefix string counts afresh
    client.delete("/_sim/requests")
    assert chat(client, "/sim/fail_first=2").status_code == 500


def test_reset_after_cuts_the_stream(client: httpx.Client) -> None:
    received: list[str] = []
    body = {"model": "sim-small", "messages": MESSAGES, "stream": True}
    url = "/sim/reset_after=2/v1/chat/completions"
    with (
        client.stream("POST", url, json=body) as response,
        pytest.raises(httpx.RemoteProtocolError),
    ):
        assert response.status_code == 200
        received.extend(response.iter_lines())

    payloads = parse_sse_data("\n".join(received))
    assert "[DONE]" not in payloads
    assert [json.loads(p)["choices"][0]["delta"].get("content") for p in payloads] == [
        "",
        "tok0",
        " tok1",
    ]
    assert stats(client)["by_prefix"]["/sim/reset_after=2"]["in_flight"] == 0


def test_hang_after_stalls_until_the_client_leaves(client: httpx.Client) -> None:
    body = {"model": "sim-small", "messages": MESSAGES, "stream": True}
    with client.stream("POST", "/sim/hang_after=1/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")  # role chunk
        wait_for(lambda: stats(client)["in_flight"] == 1)
    # Leaving the block closes the connection: the simulator must notice and let go.
    wait_for(lambda: stats(client)["by_prefix"]["/sim/hang_after=1"]["in_flight"] == 0)
    assert stats(client)["by_prefix"]["/sim/hang_after=1"]["disconnects"] == 1


def test_hang_never_answers(client: httpx.Client) -> None:
    with pytest.raises(httpx.ReadTimeout):
        client.post("/sim/hang/v1/chat/completions", json={}, timeout=0.3)
    wait_for(lambda: stats(client)["in_flight"] == 0)
    assert stats(client)["disconnects"] == 1


def test_nousage_omits_usage(client: httpx.Client) -> None:
    body = chat(client, "/sim/nousage").json()
    chunks = stream_chunks(client, "/sim/nousage", stream_options={"include_usage": True})

    validate(body, "CreateChatCompletionResponse")
    assert "usage" not in body
    assert all(chunk["choices"] for chunk in chunks)
    assert all("usage" not in chunk for chunk in chunks)


def test_cached_and_reasoning_details(client: httpx.Client) -> None:
    usage = chat(client, "/sim/cached=7,reasoning=3").json()["usage"]

    assert usage["prompt_tokens_details"]["cached_tokens"] == 7
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert usage["completion_tokens"] == 5 + 3
    assert usage["total_tokens"] == PROMPT_TOKENS + 8


def test_key_option_and_missing_authorization(client: httpx.Client) -> None:
    wrong = chat(client, "/sim/key=s3cret")
    right = client.post(
        "/sim/key=s3cret/v1/chat/completions",
        json={"model": "m", "messages": MESSAGES},
        headers={"Authorization": "Bearer s3cret"},
    )
    anonymous = httpx.post(
        f"{client.base_url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES}
    )

    assert assert_error(wrong, 401)["code"] == "invalid_api_key"
    assert right.status_code == 200
    assert assert_error(anonymous, 401)["code"] == "invalid_api_key"


def test_requests_are_recorded(client: httpx.Client) -> None:
    chat(client, "/sim/fail=500", temperature=0.5)
    client.post("/v1/chat/completions", content=b"{not json")

    first, second = client.get("/_sim/requests").json()["data"]
    assert first["path"] == "/sim/fail=500/v1/chat/completions"
    assert first["headers"]["authorization"] == "Bearer sk-test"
    assert first["body"]["temperature"] == 0.5
    assert json.loads(first["raw"]) == first["body"]
    assert second["body"] is None and second["raw"] == "{not json"


def test_bad_requests_name_the_problem(client: httpx.Client) -> None:
    not_json = client.post("/v1/chat/completions", content=b"{")
    no_model = client.post("/v1/chat/completions", json={"messages": MESSAGES})
    no_messages = client.post("/v1/chat/completions", json={"model": "m"})
    bad_option = chat(client, "/sim/explode=1")

    assert_error(not_json, 400)
    assert assert_error(no_model, 400)["param"] == "model"
    assert assert_error(no_messages, 400)["param"] == "messages"
    assert "explode" in assert_error(bad_option, 400)["message"]


def test_bad_json_and_error_body(client: httpx.Client) -> None:
    broken = chat(client, "/sim/bad_json")
    envelope = chat(client, "/sim/error_body")

    assert broken.status_code == 200
    assert broken.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(broken.text)
    assert envelope.status_code == 200
    validate(envelope.json(), "ErrorResponse")


def test_models_list_and_retrieve(client: httpx.Client) -> None:
    listing = client.get("/v1/models")
    one = client.get("/sim/latency=1/v1/models/sim-large")
    missing = client.get("/v1/models/nope")
    failing = client.get("/sim/fail=502/v1/models")

    validate(listing.json(), "ListModelsResponse")
    assert [model["id"] for model in listing.json()["data"]] == ["sim-small", "sim-large"]
    assert listing.json()["data"][0]["owned_by"] == "simulator"
    validate(one.json(), "Model")
    assert one.json()["id"] == "sim-large"
    assert assert_error(missing, 404)["code"] == "model_not_found"
    assert_error(failing, 502)


def test_schema_helper_rejects_invalid_data() -> None:
    with pytest.raises(ValidationError):
        validate({"object": "list"}, "ListModelsResponse")
    with pytest.raises(ValidationError):  # an error code must be a string or null
        validate(
            {"error": {"message": "x", "type": "t", "param": None, "code": 500}}, "ErrorResponse"
        )


def test_stats_measure_peak_concurrency(client: httpx.Client) -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(lambda _: chat(client, "/sim/latency=300").status_code, range(4)))

    assert statuses == [200] * 4
    current = stats(client)
    assert current["by_prefix"]["/sim/latency=300"] == {
        "in_flight": 0,
        "peak_in_flight": 4,
        "total": 4,
        "disconnects": 0,
    }
    assert current["peak_in_flight"] == 4 and current["in_flight"] == 0


def test_tps_paces_the_stream(client: httpx.Client) -> None:
    started = time.monotonic()
    stream_chunks(client, "/sim/tps=50,tokens=5")

    assert time.monotonic() - started >= 5 / 50 * 0.9


def test_openai_sdk_reads_simulator(sim_url: str) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url=f"{sim_url}/v1", api_key="sk-test", max_retries=0)

    completion = sdk.chat.completions.create(model="any-name", messages=MESSAGES)
    stream = sdk.chat.completions.create(
        model="any-name", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)

    assert completion.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "tok0 tok1 tok2 tok3 tok4"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(
            base_url=f"{sim_url}/sim/fail=429/v1", api_key="k", max_retries=0
        ).chat.completions.create(model="m", messages=MESSAGES)


def test_simulator_imports_without_django() -> None:
    code = "import sys, relay.simulator; sys.exit('django' in sys.modules)"
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", code], cwd=root, check=False)  # noqa: S603

    assert result.returncode == 0
