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
one (``relay.spend.check_searches``), and refused where it does not. Tools the client
runs itself (functions, Anthropic's ``bash`` or ``text_editor``) and those billed as
tokens only (``image_generation``, ``mcp``, ``computer_use_preview``, ``web_fetch``) are
not concerned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from relay import errors

# The feature's name for RELAY_UNMETERED_FEATURES, by the prefix of a tool's ``type`` on
# each API: versioned types (``web_search_20250305``, ``web_search_preview_2025_03_11``)
# share it.
RESPONSES_TOOLS = (
    ("web_search", "web_search"),
    ("file_search", "file_search"),
    ("code_interpreter", "code_interpreter"),
)
MESSAGES_TOOLS = (
    ("web_search_", "web_search"),
    ("code_execution_", "code_execution"),
    # A second model's inference inside the request, at that model's price.
    ("advisor_", "advisor"),
)
# Messages' tools billed per call that the relay meters: offered where priced.
MESSAGES_PRICED = frozenset({"web_search"})
# The most searches one web search tool may allow (its ``max_uses``): the hold reserves
# each at the price per search.
MAX_WEB_SEARCH_USES = 1000


def allowed() -> frozenset[str]:
    return frozenset(settings.RELAY_UNMETERED_FEATURES)


def _refused(what: str, param: str) -> errors.RelayError:
    return errors.invalid_request(
        f"{what} is not offered here: the provider bills it apart from tokens.", param=param
    )


def check_tools(
    payload: Mapping[str, Any],
    table: tuple[tuple[str, str], ...],
    priced: frozenset[str] = frozenset(),
) -> None:
    """Refuse a ``tools`` entry the provider would bill by the call, unless allowed;
    those ``priced`` are left to the model's price (``relay.spend.check_searches``)."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return
    permitted = allowed() | priced
    for index, tool in enumerate(tools):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if not isinstance(kind, str):
            continue
        for prefix, name in table:
            if kind.startswith(prefix) and name not in permitted:
                raise _refused(f"The built-in tool '{name}'", f"tools[{index}].type")


def check_chat(payload: Mapping[str, Any]) -> None:
    """Chat completions: ``web_search_options`` makes the search models search, by the call."""
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
        if not isinstance(kind, str) or not kind.startswith("web_search_"):
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
