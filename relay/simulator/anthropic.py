"""The simulator's Anthropic Messages API: ``POST /v1/messages`` (plain and streamed) and
``POST /v1/messages/count_tokens``, with Anthropic's error envelope.

Deterministic: the answer is ``min(options.tokens, max_tokens)`` pieces "tok0 tok1 ..."
(or a ``tool_use`` block when tools are offered and the last user turn carries no
``tool_result``). The prompt is ``3 + sum over messages of (4 + words)`` with the system
prompt as one more message; of it, ``cache_read_input_tokens`` is ``options.cached`` and
``cache_creation_input_tokens`` is ``options.cache_write`` (each capped by what is left),
and ``input_tokens`` is the rest, as Anthropic reports it.
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
        if _searcher(tool):
            continue  # the provider's own tool, run by the provider
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and tool["name"]:
            return str(tool["name"])
    return None


def _searcher(tool: Any) -> bool:
    return isinstance(tool, dict) and str(tool.get("type") or "").startswith("web_search_")


def _searches(body: dict[str, Any], wanted: int) -> int:
    """The searches an answer runs: ``wanted``, within the web search tool's max_uses."""
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if _searcher(tool):
            uses = tool.get("max_uses")
            return min(wanted, uses) if isinstance(uses, int) and uses >= 0 else wanted
    return 0


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
        self.prompt = count_input(body)
        self.produced = min(options.tokens, limit)
        self.truncated = limit < options.tokens
        self.tool = _tool(body)
        self.searches = _searches(body, options.searches)
        self.json = False
        fmt = body.get("output_format")
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
            **(
                {"server_tool_use": {"web_search_requests": self.searches}} if self.searches else {}
            ),
        }

    def search_blocks(self) -> list[dict[str, Any]]:
        """Each search's call and its result, as the provider's answer holds them."""
        blocks: list[dict[str, Any]] = []
        for number in range(self.searches):
            call_id = f"srvtoolu_sim{number}"
            blocks.append(
                {
                    "type": "server_tool_use",
                    "id": call_id,
                    "name": "web_search",
                    "input": {"query": f"query {number}"},
                }
            )
            blocks.append({"type": "web_search_tool_result", "tool_use_id": call_id, "content": []})
        return blocks

    @property
    def output_tokens(self) -> int:
        return (1 if self.tool else self.produced) + self.options.reasoning

    @property
    def text(self) -> str:
        return json_text(self.produced) if self.json else "".join(pieces(self.produced))

    @property
    def stop_reason(self) -> str:
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
        content = [*plan.search_blocks(), plan.block()]
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
    searched = plan.search_blocks()
    for index, block in enumerate(searched):
        head.append(event("content_block_start", index=index, content_block=block))
        head.append(event("content_block_stop", index=index))
    at = len(searched)
    head.append(event("content_block_start", index=at, content_block=start))
    steps = [event("content_block_delta", index=at, delta=delta) for delta in deltas]
    usage = {"output_tokens": plan.output_tokens}
    if not options.nousage:
        # As Anthropic's message_delta: the prompt's totals again, cumulative, but neither
        # the breakdown of cache writes by time to live nor the service tier.
        full = plan.usage(plan.output_tokens)
        usage = {name: full[name] for name in full if name not in DELTA_LEAVES_OUT}
    tail = [
        event("content_block_stop", index=at),
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
