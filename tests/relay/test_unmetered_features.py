"""What a provider bills apart from tokens (web search, file search, code containers,
Anthropic's fast mode and inference geography) is refused on every surface unless the
operator lets it through: nothing the relay meters would carry its cost, so the operator
would pay for a tenant's searches. So are background responses, generated where nothing
is metered, and the provider's stored conversations and prompts, which are not the
tenant's."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from tests.relay.conftest import PUBLIC_MODEL, Gateway, Simulator, price_model

CHAT = {"model": PUBLIC_MODEL, "messages": [{"role": "user", "content": "Find the news"}]}
RESPONSES = {"model": PUBLIC_MODEL, "input": "Find the news"}
MESSAGES = {
    "model": PUBLIC_MODEL,
    "max_tokens": 50,
    "messages": [{"role": "user", "content": "Find the news"}],
}
FUNCTION = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}

REFUSED = [
    (
        "/v1/chat/completions",
        {**CHAT, "web_search_options": {}},
        "web_search_options",
        "web_search",
    ),
    (
        "/v1/responses",
        {**RESPONSES, "tools": [FUNCTION, {"type": "web_search_preview"}]},
        "tools[1].type",
        "web_search",
    ),
    (
        "/v1/responses",
        {**RESPONSES, "tools": [{"type": "web_search"}]},
        "tools[0].type",
        "web_search",
    ),
    (
        "/v1/responses",
        {**RESPONSES, "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]},
        "tools[0].type",
        "file_search",
    ),
    (
        "/v1/responses",
        {**RESPONSES, "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]},
        "tools[0].type",
        "code_interpreter",
    ),
    (
        "/v1/messages",
        {**MESSAGES, "tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        "tools[0].type",
        "web_search",
    ),
    (
        "/v1/messages",
        {**MESSAGES, "tools": [{"type": "code_execution_20250825", "name": "code_execution"}]},
        "tools[0].type",
        "code_execution",
    ),
    (
        "/v1/messages",
        {**MESSAGES, "tools": [{"type": "advisor_20260301", "name": "advisor", "model": "x"}]},
        "tools[0].type",
        "advisor",
    ),
    (
        "/v1/responses",
        {
            **RESPONSES,
            "tools": [FUNCTION, {"type": "shell", "environment": {"type": "container_auto"}}],
        },
        "tools[1].type",
        "hosted_shell",
    ),
    (
        "/v1/responses",
        {
            **RESPONSES,
            "tools": [
                {
                    "type": "shell",
                    "environment": {"type": "container_reference", "container_id": "c"},
                }
            ],
        },
        "tools[0].type",
        "hosted_shell",
    ),
    (  # an environment that does not say it is the client's
        "/v1/responses",
        {**RESPONSES, "tools": [{"type": "shell", "environment": {"memory_limit": "4g"}}]},
        "tools[0].type",
        "hosted_shell",
    ),
    # Types nobody here knows, billed as they may be: a provider's new hosted tool, or an
    # OpenAI-compatible provider's own (Groq's browser search in chat completions).
    (
        "/v1/chat/completions",
        {
            **CHAT,
            "tools": [{"type": "function", "function": {"name": "f"}}, {"type": "browser_search"}],
        },
        "tools[1].type",
        "'browser_search'",
    ),
    (
        "/v1/responses",
        {**RESPONSES, "tools": [{"type": "programmatic_tool_calling"}]},
        "tools[0].type",
        "'programmatic_tool_calling'",
    ),
    (
        "/v1/messages",
        {**MESSAGES, "tools": [{"type": "hosted_sandbox_20270101", "name": "sandbox"}]},
        "tools[0].type",
        "'hosted_sandbox_20270101'",
    ),
    ("/v1/messages", {**MESSAGES, "speed": "fast"}, "speed", "'speed': 'fast'"),
    ("/v1/messages", {**MESSAGES, "inference_geo": "us"}, "inference_geo", "'inference_geo': 'us'"),
]


@pytest.fixture
def native(gateway: Gateway) -> Gateway:
    """The channel speaks Responses and Messages itself: requests pass through as sent."""
    gateway.channel.native_surfaces = ["responses", "messages"]
    gateway.channel.save()
    gateway.caught_up()
    return gateway


def _error(response: Any) -> dict[str, Any]:
    body = response.json()
    assert body.get("type") in (None, "error"), body  # Anthropic's envelope on /v1/messages
    return dict(body["error"])


@pytest.mark.parametrize(("path", "body", "param", "name"), REFUSED)
def test_a_tool_billed_by_the_call_is_refused(
    native: Gateway, sim: Simulator, path: str, body: dict[str, Any], param: str, name: str
) -> None:
    response = native.client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert name in error["message"]
    if path != "/v1/messages":
        assert error["param"] == param
    assert sim.requests() == []  # nothing reached the provider


def test_the_operator_can_let_a_tool_through(
    native: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    relay_settings.RELAY_UNMETERED_FEATURES = frozenset({"web_search"})
    searched = {**RESPONSES, "tools": [{"type": "web_search_preview"}]}
    assert native.client.post("/v1/responses", json=searched).status_code == 200
    messages = {**MESSAGES, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}
    assert native.client.post("/v1/messages", json=messages).status_code == 200
    assert len(sim.requests()) == 2
    relay_settings.RELAY_UNMETERED_FEATURES = frozenset({"fast_mode"})
    fast = {**MESSAGES, "speed": "fast"}
    assert native.client.post("/v1/messages", json=fast).status_code == 200
    assert sim.requests()[-1]["body"]["speed"] == "fast"
    # Only the tools named: code execution is still refused.
    coded = {**RESPONSES, "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}
    assert native.client.post("/v1/responses", json=coded).status_code == 400


def test_tools_the_client_runs_or_billed_as_tokens_pass(native: Gateway, sim: Simulator) -> None:
    tools: list[dict[str, Any]] = [
        {"name": "lookup", "input_schema": {"type": "object"}},
        {"type": "custom", "name": "other", "input_schema": {"type": "object"}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
        {"type": "computer_20250124", "name": "computer", "display_width_px": 8},
        {"type": "computer_toolset_20260801"},
        {"type": "browser_toolset_20260801"},
        {"type": "memory_20250818", "name": "memory"},
        {"type": "web_fetch_20250910", "name": "web_fetch"},
        {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"},
        {"type": "tool_search_tool_bm25", "name": "tool_search_tool_bm25"},
        {"type": "mcp_toolset", "mcp_server_name": "docs"},
    ]
    plain = {**MESSAGES, "tools": tools, "speed": "standard", "inference_geo": "global"}
    response = native.client.post("/v1/messages", json=plain)
    assert response.status_code == 200, response.text
    tools = [
        FUNCTION,
        {"type": "custom", "name": "patch"},
        {"type": "namespace", "name": "crm", "description": "CRM", "tools": []},
        {"type": "local_shell"},
        {"type": "shell"},
        {"type": "shell", "environment": {"type": "local"}},
        {"type": "apply_patch"},
        {"type": "computer", "environment": "browser"},
        {"type": "computer_use_preview", "display_width": 8, "display_height": 8},
        {"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example"},
        {"type": "image_generation"},
        {"type": "tool_search", "execution": "server"},
    ]
    response = native.client.post("/v1/responses", json={**RESPONSES, "tools": tools})
    assert response.status_code == 200, response.text
    chat_tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
        {"type": "custom", "custom": {"name": "g"}},
    ]
    response = native.client.post("/v1/chat/completions", json={**CHAT, "tools": chat_tools})
    assert response.status_code == 200, response.text
    assert len(sim.requests()) == 3


def test_the_operator_can_name_a_tool_type_unknown_here(
    native: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    """By its type or its type without the date; a type known to be billed apart stays
    refused however it is named there (its feature is what lets it through)."""
    relay_settings.RELAY_ALLOWED_TOOL_TYPES = frozenset(
        {"browser_search", "hosted_sandbox", "web_search", "code_interpreter"}
    )
    chat = {**CHAT, "tools": [{"type": "browser_search"}]}
    assert native.client.post("/v1/chat/completions", json=chat).status_code == 200
    sandbox = {**MESSAGES, "tools": [{"type": "hosted_sandbox_20270101", "name": "sandbox"}]}
    assert native.client.post("/v1/messages", json=sandbox).status_code == 200
    assert len(sim.requests()) == 2
    for path, body in (
        ("/v1/responses", {**RESPONSES, "tools": [{"type": "web_search"}]}),
        ("/v1/responses", {**RESPONSES, "tools": [{"type": "code_interpreter"}]}),
        ("/v1/responses", {**RESPONSES, "tools": [{"type": "programmatic_tool_calling"}]}),
    ):
        assert native.client.post(path, json=body).status_code == 400
    assert len(sim.requests()) == 2
    relay_settings.RELAY_UNMETERED_FEATURES = frozenset({"hosted_shell"})
    hosted = {"type": "shell", "environment": {"type": "container_auto"}}
    response = native.client.post("/v1/responses", json={**RESPONSES, "tools": [hosted]})
    assert response.status_code == 200, response.text
    assert sim.requests()[-1]["body"]["tools"] == [hosted]


def test_only_betas_billed_as_tokens_reach_an_anthropic_channel(
    native: Gateway, sim: Simulator, relay_settings: Any
) -> None:
    # A beta nobody here knows (billed as it may be), and one for code execution.
    header = "interleaved-thinking-2025-05-14, code-execution-2025-08-25,"
    header += "vendor-billed-2027-01-01 , context-1m-2025-08-07"

    def forwarded(beta: str) -> str | None:
        headers = {"anthropic-beta": beta, "anthropic-version": "2023-06-01"}
        response = native.client.post("/v1/messages", json=MESSAGES, headers=headers)
        assert response.status_code == 200, response.text
        return sim.requests()[-1]["headers"].get("anthropic-beta")

    # The 1M context only where the model's price has a long-context tier: Anthropic bills
    # prompts past 200K at its long-context rates.
    assert forwarded(header) == "interleaved-thinking-2025-05-14"
    assert forwarded("context-1m-2025-08-07") is None
    price_model(native, long_context_above_tokens=200_000, long_context_prices={"input": 5_000_000})
    native.caught_up()
    assert forwarded(header) == "interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    assert forwarded("vendor-billed-2027-01-01") is None  # no header rather than an empty one
    # The operator lets code execution through, and names the unknown beta.
    relay_settings.RELAY_UNMETERED_FEATURES = frozenset({"code_execution"})
    relay_settings.RELAY_ANTHROPIC_BETAS = frozenset({"vendor-billed-2027-01-01"})
    assert forwarded(header) == (
        "interleaved-thinking-2025-05-14,code-execution-2025-08-25,"
        "vendor-billed-2027-01-01,context-1m-2025-08-07"
    )
    assert forwarded("fast-mode-2026-02-01,skills-2025-10-02") == "skills-2025-10-02"


@pytest.mark.parametrize("native_channel", [True, False])
def test_a_background_response_is_refused(
    gateway: Gateway, sim: Simulator, native_channel: bool
) -> None:
    """OpenAI answers a background request at once, with no usage, and generates the
    answer afterwards: its tokens would reach the tenant through an unbilled retrieve."""
    if native_channel:
        gateway.channel.native_surfaces = ["responses"]
        gateway.channel.save()
        gateway.caught_up()
    response = gateway.client.post("/v1/responses", json={**RESPONSES, "background": True})
    assert response.status_code == 400, response.text
    error = _error(response)
    assert (error["param"], error["type"]) == ("background", "invalid_request_error")
    assert "metered" in error["message"]
    assert sim.requests() == []
    # Saying no is no background at all.
    answered = gateway.client.post("/v1/responses", json={**RESPONSES, "background": False})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "completed"
    assert len(sim.requests()) == 1


@pytest.mark.parametrize(
    "stored", [{"conversation": "conv_abc123"}, {"prompt": {"id": "pmpt_abc123"}}]
)
def test_objects_kept_in_the_channels_account_are_not_named(
    native: Gateway, sim: Simulator, stored: dict[str, Any]
) -> None:
    """The relay makes no conversations or prompts, so an id a client sends is one of the
    operator's account (its other apps'), which no tenant may read through the model."""
    response = native.client.post("/v1/responses", json={**RESPONSES, **stored})
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == next(iter(stored))
    assert sim.requests() == []


def _user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "Read it"}, *parts]}]


NAMED_FILES = [
    (
        "/v1/chat/completions",
        {**CHAT, "messages": _user({"type": "file", "file": {"file_id": "file-abc"}})},
        "messages[0].content[1].file.file_id",
    ),
    (
        "/v1/responses",
        {**RESPONSES, "input": _user({"type": "input_file", "file_id": "file-abc"})},
        "input[0].content[1].file_id",
    ),
    (
        "/v1/responses",
        {
            **RESPONSES,
            "input": [
                {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
                {
                    "type": "function_call_output",
                    "call_id": "c1",
                    "output": [{"type": "input_image", "file_id": "file-abc"}],
                },
            ],
        },
        "input[1].output[0].file_id",
    ),
    (
        "/v1/messages",
        {
            **MESSAGES,
            "messages": _user(
                {"type": "document", "source": {"type": "file", "file_id": "file_abc"}}
            ),
        },
        "messages.0.content.1.source",
    ),
    (
        "/v1/messages",
        {
            **MESSAGES,
            "messages": [
                {"role": "user", "content": "Look"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "t1", "name": "look", "input": {}}],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "content": [
                                {"type": "image", "source": {"type": "file", "file_id": "f"}}
                            ],
                        }
                    ],
                },
            ],
        },
        "messages.2.content.0.content.0.source",
    ),
    ("/v1/messages/count_tokens", None, "messages.0.content.1.source"),
]


@pytest.mark.parametrize(("path", "body", "param"), NAMED_FILES)
def test_a_file_kept_with_the_provider_is_not_named(
    native: Gateway, sim: Simulator, path: str, body: dict[str, Any] | None, param: str
) -> None:
    """The relay uploads nothing, so a file id a client sends is one of the operator's
    account, which the model would read out to it."""
    if body is None:  # counting tokens reads the file too
        body = NAMED_FILES[3][1]
    response = native.client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = _error(response)
    assert "A file kept with the provider" in error["message"]
    if not path.startswith("/v1/messages"):
        assert error["param"] == param
    assert sim.requests() == []


def test_a_file_id_key_written_with_escapes_is_found(native: Gateway, sim: Simulator) -> None:
    # JSON reads \u0066 as "f": the key is file_id all the same.
    body = (
        b'{"model": "%s", "input": [{"role": "user", "content": '
        b'[{"type": "input_file", "\\u0066ile_id": "file-abc"}]}]}' % PUBLIC_MODEL.encode()
    )
    assert b"\\u0066ile_id" in body and b'"file_id"' not in body
    response = native.client.post(
        "/v1/responses", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert _error(response)["param"] == "input[0].content[0].file_id"
    assert sim.requests() == []


def test_content_sent_along_and_fields_merely_named_file_id_pass(
    native: Gateway, sim: Simulator
) -> None:
    pdf = "data:application/pdf;base64,JVBERi0xLjQK"
    tool = {**FUNCTION, "parameters": {"type": "object", "properties": {"file_id": {}}}}
    sent = {
        **RESPONSES,
        "input": _user({"type": "input_file", "filename": "a.pdf", "file_data": pdf}),
        "tools": [tool],
    }
    assert native.client.post("/v1/responses", json=sent).status_code == 200
    chat = {
        **CHAT,
        "messages": _user({"type": "file", "file": {"filename": "a.pdf", "file_data": pdf}}),
    }
    assert native.client.post("/v1/chat/completions", json=chat).status_code == 200
    history = {
        **MESSAGES,
        "messages": [
            {"role": "user", "content": "Open file_id 7 \u00e9"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "open", "input": {"file_id": "7"}}
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
        ],
    }
    response = native.client.post("/v1/messages", json=history)
    assert response.status_code == 200, response.text
    assert len(sim.requests()) == 3


def test_an_unknown_tool_name_stops_the_start() -> None:
    env = {
        **os.environ,
        "RELAY_UNMETERED_FEATURES": "web_search,web_serach",
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }
    started = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode != 0
    assert "RELAY_UNMETERED_FEATURES names unknown features: ['web_serach']" in started.stderr
