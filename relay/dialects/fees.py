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

Tools the provider runs itself also add to the prompt: search results, fetched pages,
MCP servers' answers, read again by every later pass of the provider's tool loop and
billed as prompt each time, where the request's bytes bound none of it. ``ToolLoop`` is
what the hold allows for them (``messages_tools``, ``responses_tools``; docs/pricing.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class ToolLoop:
    """How far the provider may take a request whose tools it runs itself (web search and
    fetch, MCP servers, code execution, tool search): in a loop of model passes, each
    billed as prompt for the whole context it reads. The first reads the request; each
    later one also reads the output so far and every tool result before it."""

    passes: int  # the most model passes
    upfront: int = 0  # tokens each pass reads beyond the request (MCP servers' tool lists)
    results: int = 0  # tokens the tools with a bound may add, in all
    per_pass: int = 0  # tokens the tools without one are allowed to add at each pass

    def prompt_tokens(self, prompt: int, output: int) -> int:
        """The prompt tokens the loop may bill beyond one reading of ``prompt`` (the
        request's, fetched inputs included), with at most ``output`` tokens of output."""
        later = self.passes - 1
        return (
            later * (prompt + output + self.results)
            + self.passes * self.upfront
            + self.per_pass * self.passes * later // 2
        )


# What a tool run by the provider may add to the prompt, per call: search results, a
# fetched page, results with no bound in the request (MCP servers, code execution, a tool
# type the operator vouched for), or nothing beyond the request's own bytes (tool search
# loads tool definitions the request carries; image generation's pictures are metered).
SEARCH, FETCH, MCP, OPEN, LOOPS = "search", "fetch", "mcp", "open", "loops"
MESSAGES_LOOP = {
    "web_search": SEARCH,
    "web_fetch": FETCH,
    "mcp_toolset": MCP,
    "code_execution": OPEN,
    "advisor": OPEN,
    "tool_search_tool_regex": LOOPS,
    "tool_search_tool_bm25": LOOPS,
}
RESPONSES_LOOP = {
    "web_search": SEARCH,
    "web_search_preview": SEARCH,
    "mcp": MCP,
    "file_search": OPEN,
    "code_interpreter": OPEN,
    "shell": OPEN,  # only in OpenAI's containers (``_hosted``)
    "image_generation": LOOPS,
    "tool_search": LOOPS,  # unless the client runs it (``execution``)
}
# The most pages a web fetch tool may allow and tokens each may hold, and the most
# built-in tool calls a Responses request may allow: the hold grows with each.
MAX_TOOL_USES = MAX_WEB_SEARCH_USES
MAX_CONTENT_TOKENS = 2**31 - 1
MAX_TOOL_CALLS = 1000


def _role(tool: Any, known: Mapping[str, str | None], loop: Mapping[str, str]) -> str | None:
    """What a tool entry may add as the provider runs it (None: the client runs it). A
    type known here for neither is one the operator vouched for: it may be the provider's."""
    kind = tool.get("type") if isinstance(tool, dict) else None
    if not isinstance(kind, str):
        return None
    base = tool_kind(kind)
    role = loop.get(base)
    if role is None:
        return None if base in known else OPEN
    return role


def _bounded(tool: dict[str, Any], name: str, default: int, high: int) -> int:
    """The tool's ``name`` (``max_uses``, ``max_content_tokens``), set to ``default`` (sent
    to the provider) where the client left it out."""
    value = tool.get(name)
    if value is None:
        value = tool[name] = default
    elif type(value) is not int or not 1 <= value <= high:
        raise errors.invalid_request(
            f"{name}: Input should be a whole number from 1 to {high}", param=f"tools.{name}"
        )
    return int(value)


def messages_tools(payload: dict[str, Any]) -> tuple[int, ToolLoop | None]:
    """A Messages request's server tools: the most web searches the provider may run and
    bill (each tool's ``max_uses``), and its tool loop, if any. Web search and web fetch
    tools that set no ``max_uses`` (or, fetching, no ``max_content_tokens``) are sent with
    the relay's (``RELAY_WEB_SEARCH_MAX_USES``, ``RELAY_WEB_FETCH_MAX_USES``,
    ``RELAY_WEB_FETCH_TOKENS``), so that the hold covers what the provider may add: each
    search ``RELAY_WEB_SEARCH_RESULT_TOKENS``, each page its ``max_content_tokens`` (a PDF,
    which that does not bound, ``RELAY_WEB_FETCH_TOKENS``), each MCP server's tool list and
    each pass's results of tools with no bound ``RELAY_TOOL_RESULT_TOKENS``; over at most
    ``RELAY_SERVER_TOOL_ITERATIONS`` passes (the provider then pauses the turn)."""
    tools = payload.get("tools")
    servers = payload.get("mcp_servers")
    if not isinstance(tools, list) and not servers:
        return 0, None
    searches = results = toolsets = unbounded = 0
    loops = False
    for tool in tools if isinstance(tools, list) else ():
        role = _role(tool, MESSAGES_TOOLS, MESSAGES_LOOP)
        if role is None:
            continue
        loops = True
        if role == SEARCH:
            uses = _bounded(tool, "max_uses", settings.RELAY_WEB_SEARCH_MAX_USES, MAX_TOOL_USES)
            searches += uses
            results += uses * settings.RELAY_WEB_SEARCH_RESULT_TOKENS
        elif role == FETCH:
            uses = _bounded(tool, "max_uses", settings.RELAY_WEB_FETCH_MAX_USES, MAX_TOOL_USES)
            page = settings.RELAY_WEB_FETCH_TOKENS
            limit = _bounded(tool, "max_content_tokens", page, MAX_CONTENT_TOKENS)
            results += uses * max(limit, page)
        elif role == MCP:
            toolsets += 1
        elif role == OPEN:
            unbounded += 1
    mcp = max(toolsets, len(servers) if isinstance(servers, list) else 0)
    if not loops and not mcp:
        return 0, None
    allowance = settings.RELAY_TOOL_RESULT_TOKENS
    loop = ToolLoop(
        passes=settings.RELAY_SERVER_TOOL_ITERATIONS,
        upfront=mcp * allowance,
        results=results,
        per_pass=(mcp + unbounded) * allowance,
    )
    return searches, loop


def responses_tools(payload: dict[str, Any]) -> ToolLoop | None:
    """A Responses request's tool loop, if it offers a tool OpenAI runs itself. Its
    built-in tool calls are bounded by ``max_tool_calls``, sent as
    ``RELAY_RESPONSES_MAX_TOOL_CALLS`` when the client set none: the model passes are at
    most one more, each call adding at most ``RELAY_WEB_SEARCH_RESULT_TOKENS`` (a search)
    or ``RELAY_TOOL_RESULT_TOKENS`` (any other), and each MCP server's tool list
    ``RELAY_TOOL_RESULT_TOKENS`` from the first pass on."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return None
    per_call = mcp = 0
    loops = False
    for tool in tools:
        role = _role(tool, RESPONSES_TOOLS, RESPONSES_LOOP)
        if role is None or (role == OPEN and tool.get("type") == "shell" and not _hosted(tool)):
            continue
        if role == LOOPS and tool.get("execution") == "client":
            continue  # tool search the client runs
        loops = True
        if role == SEARCH:
            per_call = max(per_call, settings.RELAY_WEB_SEARCH_RESULT_TOKENS)
        elif role != LOOPS:
            per_call = max(per_call, settings.RELAY_TOOL_RESULT_TOKENS)
            mcp += role == MCP
    if not loops:
        return None
    calls = payload.get("max_tool_calls")
    if calls is None:
        calls = payload["max_tool_calls"] = settings.RELAY_RESPONSES_MAX_TOOL_CALLS
    elif type(calls) is not int or not 1 <= calls <= MAX_TOOL_CALLS:
        raise errors.invalid_request(
            f"'max_tool_calls' must be an integer from 1 to {MAX_TOOL_CALLS}.",
            param="max_tool_calls",
        )
    return ToolLoop(
        passes=calls + 1, upfront=mcp * settings.RELAY_TOOL_RESULT_TOKENS, per_pass=per_call
    )
