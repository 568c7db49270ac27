"""What a provider bills apart from the token prices the relay meters.

A request passed through to OpenAI or Anthropic may ask the provider itself to search the
web, search files, run code or consult a second model, or (Anthropic) to answer in fast
mode or keep inference in one geography. The provider bills those to the channel's
account (web search at $10 or more per 1,000 calls, code containers by the session or
the hour, fast mode at several times the token price), but no usage field the relay
meters carries them: the tenant would be billed plain tokens and the operator would pay
the rest. So they are refused with a 400 that names the feature, unless the operator
lets it through, unmetered, with ``RELAY_UNMETERED_FEATURES``: for example when the
model's token prices already allow for it. Anthropic's web search is the exception: its
answer counts the searches, so it is billed per search where the model's price names
one (``relay.spend.check_searches``), and refused where it does not.

Tools are known by their ``type``, per API: those the client runs itself (functions,
Anthropic's ``bash`` or ``text_editor``, OpenAI's local ``shell``) and those billed as
tokens only (``image_generation``, ``mcp``, ``web_fetch``, tool search) pass. A type
known here for none of these (one a provider ships tomorrow, billed or not, or an
OpenAI-compatible provider's own hosted tool) is refused until the operator names it in
``RELAY_ALLOWED_TOOL_TYPES``, as ``anthropic-beta`` names are (``relay.dialects.betas``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from django.conf import settings

from relay import errors

# Every tool type known on each API, by its name without the version a provider dates it
# with (``web_search_20250305``, ``web_search_preview_2025_03_11``, ``bash_20250124``):
# None where it passes, else the feature's name for RELAY_UNMETERED_FEATURES.
PASSES = None
CHAT_TOOLS: dict[str, str | None] = {"function": PASSES, "custom": PASSES}
RESPONSES_TOOLS: dict[str, str | None] = {
    "function": PASSES,
    "custom": PASSES,
    "namespace": PASSES,  # function and custom tools under one name
    "local_shell": PASSES,
    "apply_patch": PASSES,
    "computer": PASSES,
    "computer_use_preview": PASSES,
    "mcp": PASSES,
    "image_generation": PASSES,  # metered: the pictures it makes are billed
    "tool_search": PASSES,
    "shell": PASSES,  # run by the client, unless in OpenAI's containers (``_shell``)
    "web_search": "web_search",
    "web_search_preview": "web_search",
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
}
MESSAGES_TOOLS: dict[str, str | None] = {
    "custom": PASSES,
    "bash": PASSES,
    "text_editor": PASSES,
    "computer": PASSES,
    "computer_toolset": PASSES,
    "browser_toolset": PASSES,
    "memory": PASSES,
    "web_fetch": PASSES,  # fetched pages are billed as prompt tokens
    "tool_search_tool_regex": PASSES,
    "tool_search_tool_bm25": PASSES,
    "mcp_toolset": PASSES,  # the client's own MCP servers
    "web_search": "web_search",
    "code_execution": "code_execution",
    # A second model's inference inside the request, at that model's price.
    "advisor": "advisor",
}
# Messages' tools billed per call that the relay meters: offered where priced.
MESSAGES_PRICED = frozenset({"web_search"})
# OpenAI's ``shell`` tool in a container it provisions (billed as code containers are).
HOSTED_SHELL = frozenset({"container_auto", "container_reference"})
# The most searches one web search tool may allow (its ``max_uses``): the hold reserves
# each at the price per search.
MAX_WEB_SEARCH_USES = 1000
# A provider's date on a tool type: ``_20250305`` or ``_2025_03_11``.
_VERSION = re.compile(r"_\d{4}_?\d{2}_?\d{2}$")


def allowed() -> frozenset[str]:
    return frozenset(settings.RELAY_UNMETERED_FEATURES)


def _refused(what: str, param: str) -> errors.RelayError:
    return errors.invalid_request(
        f"{what} is not offered here: the provider bills it apart from tokens.", param=param
    )


def tool_kind(kind: str) -> str:
    """A tool type without its version: ``web_search_20250305`` -> ``web_search``."""
    return _VERSION.sub("", kind)


def check_tools(
    payload: Mapping[str, Any],
    known: Mapping[str, str | None],
    priced: frozenset[str] = frozenset(),
) -> None:
    """Refuse a ``tools`` entry of a type not known here, unless the operator names it, or
    one the provider would bill by the call, unless allowed; those ``priced`` are left to
    the model's price (``relay.spend.check_searches``). An entry without a ``type`` is the
    API's own default (a function, a custom tool): the provider judges it."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return
    permitted = allowed() | priced
    vouched = settings.RELAY_ALLOWED_TOOL_TYPES
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if not isinstance(kind, str):
            continue
        param = f"tools[{index}].type"
        base = tool_kind(kind)
        if base not in known:
            if kind in vouched or base in vouched:
                continue
            raise errors.invalid_request(
                f"The tool type '{kind}' is not offered here: this gateway does not know how "
                "the provider bills it. The operator may allow it (RELAY_ALLOWED_TOOL_TYPES).",
                param=param,
            )
        feature = known[base]
        if base == "shell" and _hosted(tool):
            feature = "hosted_shell"
        if feature is not None and feature not in permitted:
            raise _refused(f"The built-in tool '{feature}'", param)


def _hosted(tool: Mapping[str, Any]) -> bool:
    """Whether a ``shell`` tool runs in OpenAI's containers rather than the client's."""
    environment = tool.get("environment")
    if environment is None:
        return False
    kind = environment.get("type") if isinstance(environment, Mapping) else None
    return kind != "local"


def check_chat(payload: Mapping[str, Any]) -> None:
    """Chat completions: tools of the types known here (functions and custom tools), and
    no ``web_search_options``, which makes the search models search, by the call."""
    check_tools(payload, CHAT_TOOLS)
    if payload.get("web_search_options") is not None and "web_search" not in allowed():
        raise _refused("The built-in tool 'web_search'", "web_search_options")


def check_messages(payload: Mapping[str, Any]) -> None:
    """Messages: server tools, fast mode (``speed``) and a chosen inference geography.
    Web search is metered there (Anthropic reports each search): it is left to the
    model's price (``relay.spend.check_searches``)."""
    check_tools(payload, MESSAGES_TOOLS, priced=MESSAGES_PRICED)
    speed = payload.get("speed")
    if speed is not None and speed != "standard" and "fast_mode" not in allowed():
        raise _refused(f"'speed': {speed!r}", "speed")
    geo = payload.get("inference_geo")
    if geo is not None and geo != "global" and "inference_geo" not in allowed():
        raise _refused(f"'inference_geo': {geo!r}", "inference_geo")


def web_search_bound(payload: dict[str, Any]) -> int:
    """The most searches a Messages request lets the provider run: the sum of its web
    search tools' ``max_uses``. A tool without one is given ``RELAY_WEB_SEARCH_MAX_USES``
    (sent to the provider), so that the hold covers every search it may bill."""
    tools = payload.get("tools")
    bound = 0
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, dict):
            continue
        kind = tool.get("type")
        if not isinstance(kind, str) or tool_kind(kind) != "web_search":
            continue
        uses = tool.get("max_uses")
        if uses is None:
            uses = tool["max_uses"] = settings.RELAY_WEB_SEARCH_MAX_USES
        elif type(uses) is not int or not 1 <= uses <= MAX_WEB_SEARCH_USES:
            raise errors.invalid_request(
                f"max_uses: Input should be a whole number from 1 to {MAX_WEB_SEARCH_USES}",
                param="tools.max_uses",
            )
        bound += uses
    return bound
