"""The simulator's Anthropic Messages API: ``POST /v1/messages`` (plain and streamed) and
``POST /v1/messages/count_tokens``, with Anthropic's error envelope.

Deterministic: the answer is ``min(options.tokens, max_tokens)`` pieces "tok0 tok1 ..."
(or a ``tool_use`` block when tools are offered and the last user turn carries no
``tool_result``). The prompt is ``3 + sum over messages of (4 + words)`` with the system
prompt as one more message; of it, ``cache_read_input_tokens`` is ``options.cached`` and
``cache_creation_input_tokens`` is ``options.cache_write`` (each capped by what is left),
and ``input_tokens`` is the rest, as Anthropic reports it.

Server tools run as Anthropic runs them, in a loop of model passes with one tool call per
pass: ``options.searches`` web searches (within the tool's ``max_uses``), each adding
``SEARCH_RESULT_TOKENS``; then every page a web fetch tool's ``max_uses`` allows, each as
long as its ``max_content_tokens`` (``FETCH_PAGE_TOKENS`` where it sets none); then, for
each MCP server (``mcp_servers``, or ``mcp_toolset`` tools) and code execution tool, a call
at every pass adding ``RESULT_TOKENS``. After ``PASSES`` passes the turn is paused
(``stop_reason: "pause_turn"``, the last call without its result). Every pass is billed as
prompt for all it reads: the prompt, each MCP server's tool list (``LIST_TOKENS``) and
every result before it, as the worst a provider's loop may bill.
"""

from __future__ import annotations

from typing import Any

from relay.simulator.exchange import SimExchange
from relay.simulator.options import SimOptions
from relay.simulator.responses import RequestError, new_id
from relay.simulator.wire import json_text, named_event, pieces, play, words

# What a stream's ``message_delta`` usage leaves out of the answer's (Anthropic's
# ``MessageDeltaUsage``).
DELTA_LEAVES_OUT = frozenset({"cache_creation", "service_tier"})
# The server tool loop: its passes before the turn pauses, and what each tool adds.
PASSES = 10
SEARCH_RESULT_TOKENS = 300
FETCH_PAGE_TOKENS = 2_000
RESULT_TOKENS = 500
LIST_TOKENS = 200
# How the types of the tools the provider runs itself begin (before their date).
SERVER_TOOLS = ("web_search_", "web_fetch_", "code_execution_", "tool_search_tool_", "advisor_")


def count_input(body: dict[str, Any]) -> int:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages: at least one message is required", "messages")
    total = 3
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise RequestError("messages: each message needs a role of user or assistant", None)
        total += 4 + words(message.get("content"))
    system = body.get("system")
    if system is not None:
        total += 4 + words(system)
    return total


def _tool(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools:
        return None
    if isinstance(choice, dict) and choice.get("type") == "none":
        return None
    last = body["messages"][-1]
    content = last.get("content")
    if isinstance(content, list) and any(
        isinstance(block, dict) and block.get("type") == "tool_result" for block in content
    ):
        return None
    if isinstance(choice, dict) and choice.get("type") == "tool":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return name
    for tool in tools:
        if _server_tool(tool):
            continue  # the provider's own tool, run by the provider
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]:
            return str(tool["name"])
    return None


def _type(tool: Any) -> str:
    return str(tool.get("type") or "") if isinstance(tool, dict) else ""


def _server_tool(tool: Any) -> bool:
    kind = _type(tool)
    return kind == "mcp_toolset" or kind.startswith(SERVER_TOOLS)


def _uses(tool: dict[str, Any], wanted: int) -> int:
    uses = tool.get("max_uses")
    return min(wanted, uses) if isinstance(uses, int) and uses >= 0 else wanted


def _search(number: int) -> list[dict[str, Any]]:
    call_id = f"srvtoolu_sim{number}"
    return [
        {
            "type": "server_tool_use",
            "id": call_id,
            "name": "web_search",
            "input": {"query": f"query {number}"},
        },
        {"type": "web_search_tool_result", "tool_use_id": call_id, "content": []},
    ]


def _fetch(number: int) -> list[dict[str, Any]]:
    call_id = f"srvtoolu_simfetch{number}"
    url = f"https://pages.example/{number}"
    page = {"type": "text", "media_type": "text/plain", "data": ""}
    return [
        {"type": "server_tool_use", "id": call_id, "name": "web_fetch", "input": {"url": url}},
        {
            "type": "web_fetch_tool_result",
            "tool_use_id": call_id,
            "content": {
                "type": "web_fetch_result",
                "url": url,
                "content": {"type": "document", "source": page},
            },
        },
    ]


def _mcp_call(number: int, server: str) -> list[dict[str, Any]]:
    call_id = f"mcptoolu_sim{number}"
    return [
        {
            "type": "mcp_tool_use",
            "id": call_id,
            "name": "lookup",
            "server_name": server,
            "input": {},
        },
        {
            "type": "mcp_tool_result",
            "tool_use_id": call_id,
            "is_error": False,
            "content": [{"type": "text", "text": ""}],
        },
    ]


def _code_call(number: int) -> list[dict[str, Any]]:
    call_id = f"srvtoolu_simcode{number}"
    result = {"type": "code_execution_result", "stdout": "", "stderr": "", "return_code": 0}
    return [
        {"type": "server_tool_use", "id": call_id, "name": "code_execution", "input": {}},
        {"type": "code_execution_tool_result", "tool_use_id": call_id, "content": result},
    ]


def _mcp_servers(body: dict[str, Any]) -> list[str]:
    """The MCP servers the request connects: those it lists, or those its toolsets name."""
    servers = body.get("mcp_servers")
    names = [str(s.get("name")) for s in servers if isinstance(s, dict)] if servers else []
    tools = body.get("tools")
    listed = tools if isinstance(tools, list) else []
    named = [str(tool.get("mcp_server_name")) for tool in listed if _type(tool) == "mcp_toolset"]
    return names if len(names) >= len(named) else named


class ToolLoop:
    """The calls the provider's tool loop makes for a request (see the module's docstring):
    each as its blocks and the tokens its result adds."""

    def __init__(self, body: dict[str, Any], options: SimOptions) -> None:
        tools = [tool for tool in body.get("tools") or () if _server_tool(tool)]
        calls: list[tuple[list[dict[str, Any]], int]] = []
        searches = fetches = 0
        for tool in tools:
            if _type(tool).startswith("web_search_") and not searches:
                searches = _uses(tool, options.searches)
                calls += [(_search(n), SEARCH_RESULT_TOKENS) for n in range(searches)]
        for tool in tools:
            if _type(tool).startswith("web_fetch_"):
                page = tool.get("max_content_tokens")
                size = page if isinstance(page, int) and page > 0 else FETCH_PAGE_TOKENS
                count = _uses(tool, PASSES)
                calls += [(_fetch(fetches + n), size) for n in range(count)]
                fetches += count
        servers = _mcp_servers(body)
        coders = sum(_type(tool).startswith("code_execution_") for tool in tools)
        number = 0
        while (servers or coders) and len(calls) < PASSES:
            for server in servers:
                calls.append((_mcp_call(number, server), RESULT_TOKENS))
                number += 1
            for _ in range(coders):
                calls.append((_code_call(number), RESULT_TOKENS))
                number += 1
        self.paused = len(calls) >= PASSES
        self.calls = calls[:PASSES]
        self.passes = PASSES if self.paused else len(calls) + 1
        self.searches = sum(1 for blocks, _ in self.calls if blocks[0].get("name") == "web_search")
        self.fetches = sum(1 for blocks, _ in self.calls if blocks[0].get("name") == "web_fetch")
        self.listed = LIST_TOKENS * len(servers)

    def prompt(self, prompt: int) -> int:
        """What the passes read in all: ``prompt`` and the tool lists at each, and each
        call's result at every pass after it."""
        read = sum(size * (self.passes - 1 - n) for n, (_, size) in enumerate(self.calls))
        return self.passes * (prompt + self.listed) + read

    def blocks(self) -> list[dict[str, Any]]:
        """The calls and their results, in order; a paused turn's last call has none."""
        blocks = [block for call, _ in self.calls for block in call]
        return blocks[:-1] if self.paused else blocks


class MessagePlan:
    def __init__(self, body: Any, options: SimOptions) -> None:
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError("model: field required", "model")
        limit = body.get("max_tokens")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise RequestError("max_tokens: field required (an integer of at least 1)", None)
        self.model = model
        self.loop = ToolLoop(body, options)
        self.prompt = self.loop.prompt(count_input(body))
        self.produced = min(options.tokens, limit)
        self.truncated = limit < options.tokens
        self.tool = _tool(body)
        self.searches = self.loop.searches
        self.json = False
        config = body.get("output_config")
        fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
            self.json = True
        self.id = new_id("msg_")
        self.tool_id = new_id("toolu_")
        self.options = options
        self.stream = body.get("stream") is True

    def usage(self, output: int) -> dict[str, Any]:
        read = min(self.options.cached, self.prompt)
        write = min(self.options.cache_write, self.prompt - read)
        hour = min(self.options.cache_write_1h, write)
        return {
            "input_tokens": self.prompt - read - write,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": write - hour,
                "ephemeral_1h_input_tokens": hour,
            },
            "output_tokens": output,
            "service_tier": "priority" if self.options.tier == "priority" else "standard",
            **({"server_tool_use": self.server_tool_use()} if self.loop.calls else {}),
        }

    def server_tool_use(self) -> dict[str, int]:
        counts = {"web_search_requests": self.searches}
        if self.loop.fetches:
            counts["web_fetch_requests"] = self.loop.fetches
        return counts

    @property
    def output_tokens(self) -> int:
        return (1 if self.tool or self.loop.paused else self.produced) + self.options.reasoning

    @property
    def text(self) -> str:
        return json_text(self.produced) if self.json else "".join(pieces(self.produced))

    @property
    def stop_reason(self) -> str:
        if self.loop.paused:
            return "pause_turn"
        if self.tool:
            return "tool_use"
        return "max_tokens" if self.truncated else "end_turn"

    def block(self) -> dict[str, Any]:
        if self.tool:
            return {"type": "tool_use", "id": self.tool_id, "name": self.tool, "input": {}}
        return {"type": "text", "text": self.text}

    def message(self, content: list[dict[str, Any]], stop: str | None, output: int) -> dict:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": self.usage(output),
        }


async def create(exchange: SimExchange, body: Any, options: SimOptions) -> None:
    plan = MessagePlan(body, options)
    if not plan.stream:
        content = plan.loop.blocks() + ([] if plan.loop.paused else [plan.block()])
        message = plan.message(content, plan.stop_reason, plan.output_tokens)
        if options.nousage:
            message["usage"] = {"input_tokens": 0, "output_tokens": 0}
        await exchange.respond_json(200, message)
        return

    def event(kind: str, **fields: Any) -> bytes:
        return named_event(kind, {"type": kind, **fields})

    head = [
        event("message_start", message=plan.message([], None, 1)),
        event("ping"),
    ]
    if plan.tool:
        start = {"type": "tool_use", "id": plan.tool_id, "name": plan.tool, "input": {}}
        deltas = [{"type": "input_json_delta", "partial_json": "{}"}]
    else:
        start = {"type": "text", "text": ""}
        texts = [plan.text] if plan.json else pieces(plan.produced)
        deltas = [{"type": "text_delta", "text": text} for text in texts]
    ran = plan.loop.blocks()
    for index, block in enumerate(ran):
        head.append(event("content_block_start", index=index, content_block=block))
        head.append(event("content_block_stop", index=index))
    at = len(ran)
    steps: list[bytes] = []
    if not plan.loop.paused:
        head.append(event("content_block_start", index=at, content_block=start))
        steps = [event("content_block_delta", index=at, delta=delta) for delta in deltas]
    usage = {"output_tokens": plan.output_tokens}
    if not options.nousage:
        # As Anthropic's message_delta: the prompt's totals again, cumulative, but neither
        # the breakdown of cache writes by time to live nor the service tier.
        full = plan.usage(plan.output_tokens)
        usage = {name: full[name] for name in full if name not in DELTA_LEAVES_OUT}
    tail = [
        *([] if plan.loop.paused else [event("content_block_stop", index=at)]),
        event(
            "message_delta",
            delta={"stop_reason": plan.stop_reason, "stop_sequence": None},
            usage=usage,
        ),
        event("message_stop"),
    ]
    await play(exchange, options, head, steps, tail)


async def count_tokens(exchange: SimExchange, body: Any) -> None:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", None)
    await exchange.respond_json(200, {"input_tokens": count_input(body)})
