"""The simulator's OpenAI Responses API: ``POST /v1/responses`` (plain and typed SSE
events), stored responses (``GET``/``DELETE /v1/responses/{id}``, ``.../cancel``,
``.../input_items``, ``previous_response_id``) and ``POST /v1/responses/input_tokens``.

Deterministic: the answer is ``options.tokens`` pieces "tok0 tok1 ..." (or a function call
when the request offers function tools and its last input item is not a tool's output),
and ``input_tokens = 3 + sum over input items of (4 + words)``, with the instructions as
one more item and a previous response's input and output items counted before the new
ones.

MCP tools (``mcp``) run as OpenAI runs hosted tools, in a loop of model passes with one
call per pass: each server's tool list (``MCP_LIST_TOKENS``, an ``mcp_list_tools`` item),
then as many ``mcp_call`` items as ``max_tool_calls`` allows (``MCP_CALLS`` where it sets
none), each result ``MCP_CALL_TOKENS`` long; they follow the message in ``output``, as
generated pictures do. Every pass is billed as input for all it reads: the input, the tool
lists and every result before it, as the worst a provider's loop may bill.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from relay.simulator.exchange import SimExchange
from relay.simulator.options import SimOptions
from relay.simulator.responses import RequestError, new_id, picture
from relay.simulator.wire import json_text, named_event, pieces, play, words

MAX_STORED = 10_000
MCP_LIST_TOKENS = 200
MCP_CALL_TOKENS = 500
MCP_CALLS = 12


class ResponseStore:
    """Responses kept by the simulator (``store`` not false), with their input items."""

    def __init__(self) -> None:
        self.items: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()

    def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> None:
        self.items[response["id"]] = {"response": response, "input": input_items}
        while len(self.items) > MAX_STORED:
            self.items.popitem(last=False)

    def get(self, response_id: str) -> dict[str, Any] | None:
        return self.items.get(response_id)


def _input_items(body: dict[str, Any]) -> list[dict[str, Any]]:
    value = body.get("input")
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise RequestError("'input' must be a string or a non-empty array of items.", "input")
    items = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise RequestError(f"Invalid value for 'input[{index}]'.", f"input[{index}]")
        items.append(item if "type" in item else {"type": "message", **item})
    return items


def _item_words(item: dict[str, Any]) -> int:
    kind = item.get("type")
    if kind == "message":
        return words(item.get("content"))
    if kind == "function_call_output":
        output = item.get("output")
        return words(output) if isinstance(output, (str, list)) else 0
    return 0


def count_input(items: list[dict[str, Any]], instructions: Any) -> int:
    total = 3 + sum(4 + _item_words(item) for item in items)
    if isinstance(instructions, str):
        total += 4 + len(instructions.split())
    return total


def _function_tool(body: dict[str, Any], items: list[dict[str, Any]]) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or choice == "none":
        return None
    if items and items[-1].get("type") == "function_call_output":
        return None  # the tool has answered: now the model speaks
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if isinstance(name, str) and name:
            return name
    for tool in tools:
        if isinstance(tool, dict) and tool.get("type") == "function":
            name = tool.get("name")
            if isinstance(name, str) and name:
                return name
    return None


class McpLoop:
    """The MCP calls a response makes (see the module's docstring), and what its passes read."""

    def __init__(self, body: dict[str, Any]) -> None:
        tools = body.get("tools")
        listed = tools if isinstance(tools, list) else []
        self.servers = [
            str(tool.get("server_label"))
            for tool in listed
            if isinstance(tool, dict) and tool.get("type") == "mcp"
        ]
        limit = body.get("max_tool_calls")
        calls = limit if isinstance(limit, int) and limit >= 0 else MCP_CALLS
        self.calls = calls if self.servers else 0

    def input_tokens(self, prompt: int) -> int:
        if not self.servers:
            return prompt
        passes = self.calls + 1
        read = MCP_CALL_TOKENS * self.calls * (self.calls + 1) // 2
        return passes * (prompt + MCP_LIST_TOKENS * len(self.servers)) + read

    def items(self) -> list[dict[str, Any]]:
        schema = {"type": "object", "properties": {}}
        items: list[dict[str, Any]] = [
            {
                "id": new_id("mcpl_"),
                "type": "mcp_list_tools",
                "server_label": server,
                "tools": [{"name": "lookup", "input_schema": schema}],
            }
            for server in self.servers
        ]
        for number in range(self.calls):
            server = self.servers[number % len(self.servers)]
            items.append(
                {
                    "id": new_id("mcp_"),
                    "type": "mcp_call",
                    "server_label": server,
                    "name": "lookup",
                    "arguments": "{}",
                    "output": "",
                    "error": None,
                }
            )
        return items


def _echo_tool(tool: Any) -> Any:
    """A tool as OpenAI echoes it on the response: function tools with ``strict`` filled."""
    if isinstance(tool, dict) and tool.get("type") == "function":
        return {"strict": True, "parameters": None, "description": None, **tool}
    return tool


def _usage(input_tokens: int, output_tokens: int, options: SimOptions) -> dict[str, Any]:
    """Responses usage; audio and image tokens come on top of the text's."""
    cached = min(options.cached, input_tokens)
    written = min(options.cache_write, input_tokens - cached)
    input_tokens += options.audio_in + options.image_in
    output = output_tokens + options.reasoning + options.audio_out + options.image_out
    details: dict[str, int] = {"cached_tokens": cached, "cache_write_tokens": written}
    output_details: dict[str, int] = {"reasoning_tokens": options.reasoning}
    for target, name, value in (
        (details, "audio_tokens", options.audio_in),
        (details, "image_tokens", options.image_in),
        (output_details, "audio_tokens", options.audio_out),
        (output_details, "image_tokens", options.image_out),
    ):
        if value:
            target[name] = value
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": details,
        "output_tokens": output,
        "output_tokens_details": output_details,
        "total_tokens": input_tokens + output,
    }


class ResponsePlan:
    """A validated request and the answer decided for it."""

    def __init__(self, body: Any, options: SimOptions, store: ResponseStore) -> None:
        if not isinstance(body, dict):
            raise RequestError("The request body must be a JSON object.", None)
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError("You must provide a model parameter.", "model")
        self.body = body
        self.model = model
        self.items = _input_items(body)
        context: list[dict[str, Any]] = []
        previous = body.get("previous_response_id")
        if previous is not None:
            stored = store.get(previous) if isinstance(previous, str) else None
            if stored is None:
                raise RequestError(
                    f"Previous response with id '{previous}' not found.", "previous_response_id"
                )
            context = [*stored["input"], *stored["response"]["output"]]
        self.mcp = McpLoop(body)
        prompt = count_input([*context, *self.items], body.get("instructions"))
        self.input_tokens = self.mcp.input_tokens(prompt)
        limit = body.get("max_output_tokens")
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 16
        ):
            raise RequestError(
                "'max_output_tokens' must be an integer of at least 16.", "max_output_tokens"
            )
        self.produced = min(options.tokens, limit) if isinstance(limit, int) else options.tokens
        self.truncated = isinstance(limit, int) and limit < options.tokens
        self.tool = _function_tool(body, self.items)
        fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
        self.json = isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object")
        self.options = options

    @property
    def text(self) -> str:
        return json_text(self.produced) if self.json else "".join(pieces(self.produced))

    def output_tokens(self) -> int:
        return 1 if self.tool else self.produced

    def response(self, status: str, output: list[dict[str, Any]], usage: bool) -> dict[str, Any]:
        body = self.body
        asked = body.get("reasoning")
        reasoning: dict[str, Any] = asked if isinstance(asked, dict) else {}
        incomplete = status == "incomplete"
        answer = {
            "id": self.id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "completed_at": int(time.time()) if status in ("completed", "incomplete") else None,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": None},
            "store": body.get("store", True) is not False,
            "temperature": body.get("temperature", 1.0),
            "text": body.get("text") or {"format": {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": [_echo_tool(tool) for tool in body.get("tools") or ()],
            "top_p": body.get("top_p", 1.0),
            "truncation": body.get("truncation") or "disabled",
            "metadata": body.get("metadata") or {},
            "service_tier": self.options.tier or "default",
        }
        if usage:  # the schema has no null usage: it is left out until known
            answer["usage"] = _usage(self.input_tokens, self.output_tokens(), self.options)
        return answer

    def start(self) -> None:
        self.id = new_id("resp_")
        self.created = int(time.time())
        self.item_id = new_id("fc_" if self.tool else "msg_")
        self.call_id = new_id("call_")

    def item(self, *, done: bool) -> dict[str, Any]:
        status = "completed" if done else "in_progress"
        if self.tool:
            return {
                "id": self.item_id,
                "type": "function_call",
                "status": status,
                "call_id": self.call_id,
                "name": self.tool,
                "arguments": "{}" if done else "",
            }
        content = [self.part(self.text)] if done else []
        return {
            "id": self.item_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }

    @staticmethod
    def part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    @property
    def final_status(self) -> str:
        return "incomplete" if self.truncated and not self.tool else "completed"


def image_calls(count: int, data: str) -> list[dict[str, Any]]:
    """Generated pictures as the image_generation tool returns them: output items after the
    message (on streams they appear in the final response only)."""
    return [
        {
            "id": new_id("ig_"),
            "type": "image_generation_call",
            "status": "completed",
            "result": data,
        }
        for _ in range(count)
    ]


def _listed(item: dict[str, Any]) -> dict[str, Any]:
    """An input item as OpenAI lists it: a message's text content as input_text parts."""
    if item.get("type") == "message" and isinstance(item.get("content"), str):
        return {**item, "content": [{"type": "input_text", "text": item["content"]}]}
    return item


def _keep(store: ResponseStore, plan: ResponsePlan, response: dict[str, Any]) -> None:
    if plan.body.get("store", True) is not False:
        numbered = [{"id": new_id("msg_"), **_listed(item)} for item in plan.items]
        store.put(response, numbered)


async def create(
    exchange: SimExchange, body: Any, options: SimOptions, store: ResponseStore
) -> None:
    plan = ResponsePlan(body, options, store)
    plan.start()
    if plan.body.get("background") is True:
        response = plan.response("in_progress", [], usage=False)
        _keep(store, plan, response)
        await exchange.respond_json(200, response)
        return
    output = [plan.item(done=True), *image_calls(options.images, picture(options))]
    output += plan.mcp.items()
    final = plan.response(plan.final_status, output, usage=not options.nousage)
    _keep(store, plan, final)
    if plan.body.get("stream") is not True:
        await exchange.respond_json(200, final)
        return
    await _stream(exchange, plan, final, options)


async def _stream(
    exchange: SimExchange, plan: ResponsePlan, final: dict[str, Any], options: SimOptions
) -> None:
    sequence = iter(range(1_000_000))

    def event(kind: str, **fields: Any) -> bytes:
        return named_event(kind, {"type": kind, "sequence_number": next(sequence), **fields})

    started = plan.response("in_progress", [], usage=False)
    head = [
        event("response.created", response=started),
        event("response.in_progress", response=started),
        event("response.output_item.added", output_index=0, item=plan.item(done=False)),
    ]
    where = {"item_id": plan.item_id, "output_index": 0}
    tail: list[bytes] = []
    if plan.tool:
        steps = [event("response.function_call_arguments.delta", **where, delta="{}")]
        tail.append(
            event("response.function_call_arguments.done", **where, name=plan.tool, arguments="{}")
        )
    else:
        head.append(
            event("response.content_part.added", **where, content_index=0, part=plan.part(""))
        )
        text = plan.text
        deltas = pieces(plan.produced) if not plan.json else [text]
        steps = [
            event("response.output_text.delta", **where, content_index=0, delta=delta, logprobs=[])
            for delta in deltas
        ]
        tail.append(
            event("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        )
        tail.append(
            event("response.content_part.done", **where, content_index=0, part=plan.part(text))
        )
    tail.append(event("response.output_item.done", output_index=0, item=plan.item(done=True)))
    kind = "response.completed" if plan.final_status == "completed" else "response.incomplete"
    tail.append(event(kind, response=final))
    await play(exchange, options, head, steps, tail)


async def input_tokens(exchange: SimExchange, body: Any) -> None:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", None)
    items = _input_items(body)
    count = count_input(items, body.get("instructions"))
    await exchange.respond_json(200, {"object": "response.input_tokens", "input_tokens": count})


async def stored(exchange: SimExchange, method: str, rest: str, store: ResponseStore) -> None:
    """``GET``/``DELETE /v1/responses/{id}``, ``POST .../cancel``, ``GET .../input_items``."""
    response_id, _, action = rest.partition("/")
    entry = store.get(response_id)
    if entry is None:
        await exchange.respond_error(
            404, f"Response with id '{response_id}' not found.", param="response_id"
        )
        return
    response = entry["response"]
    if action == "" and method == "GET":
        await exchange.respond_json(200, response)
    elif action == "" and method == "DELETE":
        del store.items[response_id]
        await exchange.respond_json(200, {"id": response_id, "object": "response", "deleted": True})
    elif action == "cancel" and method == "POST":
        if response["status"] not in ("in_progress", "queued"):
            await exchange.respond_error(400, "Only background responses can be cancelled.")
            return
        response["status"] = "cancelled"
        await exchange.respond_json(200, response)
    elif action == "input_items" and method == "GET":
        data = list(entry["input"])
        await exchange.respond_json(
            200,
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            },
        )
    else:
        await exchange.respond_error(405, f"Method {method} not allowed here.")
