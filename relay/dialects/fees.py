"""Built-in tools that a provider bills by the call or by the container, on top of tokens.

A request passed through to OpenAI or Anthropic may ask the provider itself to search the
web, search files or run code. The provider bills those calls to the channel's account
(web search at $10 or more per 1,000 calls, code containers by the session or the hour),
but no usage field the relay meters carries them: the tenant would be billed the tokens
and the operator would pay the rest. So they are refused with a 400 that names the tool,
unless the operator lets them through, unmetered, with ``RELAY_UNMETERED_TOOLS``
(``web_search``, ``file_search``, ``code_interpreter``, ``code_execution``): for example
when the model's token prices already allow for them. Tools the client runs itself
(functions, Anthropic's ``bash`` or ``text_editor``) and those billed as tokens only
(``image_generation``, ``mcp``, ``computer_use_preview``, ``web_fetch``) are not concerned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from relay import errors

# The tool's name for RELAY_UNMETERED_TOOLS, by the prefix of its ``type`` on each API:
# versioned types (``web_search_20250305``, ``web_search_preview_2025_03_11``) share it.
RESPONSES_TOOLS = (
    ("web_search", "web_search"),
    ("file_search", "file_search"),
    ("code_interpreter", "code_interpreter"),
)
MESSAGES_TOOLS = (
    ("web_search_", "web_search"),
    ("code_execution_", "code_execution"),
)
KNOWN = frozenset(name for _, name in RESPONSES_TOOLS + MESSAGES_TOOLS)


def allowed() -> frozenset[str]:
    return frozenset(settings.RELAY_UNMETERED_TOOLS)


def _refused(name: str, param: str) -> errors.RelayError:
    return errors.invalid_request(
        f"The built-in tool '{name}' is not offered here: the provider bills its calls "
        "apart from tokens. Use a function tool instead.",
        param=param,
    )


def check_tools(payload: Mapping[str, Any], table: tuple[tuple[str, str], ...]) -> None:
    """Refuse a ``tools`` entry the provider would bill by the call, unless allowed."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return
    permitted = allowed()
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if not isinstance(kind, str):
            continue
        for prefix, name in table:
            if kind.startswith(prefix) and name not in permitted:
                raise _refused(name, f"tools[{index}].type")


def check_chat(payload: Mapping[str, Any]) -> None:
    """Chat completions: ``web_search_options`` makes the search models search, by the call."""
    if payload.get("web_search_options") is not None and "web_search" not in allowed():
        raise _refused("web_search", "web_search_options")
