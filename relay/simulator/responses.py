"""What the simulator answers: token accounting, completions, chunks and errors."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from relay.simulator.options import MAX_CHOICES, MAX_TOP_LOGPROBS, SYSTEM_FINGERPRINT, SimOptions

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def count_prompt_tokens(messages: Sequence[Any]) -> int:
    """The simulator's deterministic prompt size, which tests can recompute.

    ``prompt_tokens = 3 + sum over messages of (4 + words)``, where ``words`` is the number
    of whitespace-separated words in the message's text: its ``content`` when that is a
    string, or the ``text`` of every ``{"type": "text"}`` part when it is a list. Names,
    tool calls and non-text parts count nothing.
    """
    total = 3
    for message in messages:
        total += 4
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += len(content.split())
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "text":
                    text = part.get("text")
                    if isinstance(text, str):
                        total += len(text.split())
    return total


def _piece(position: int) -> str:
    # One completion token per piece; joined they read "tok0 tok1 tok2 ...".
    return f"tok{position}" if position == 0 else f" tok{position}"


def token_logprob(piece: str, top: int) -> dict[str, Any]:
    alternatives = [{"token": piece, "logprob": -0.25, "bytes": list(piece.encode())}]
    for rank in range(1, top):
        alt = f" alt{rank}"
        alternatives.append({"token": alt, "logprob": -1.0 - rank, "bytes": list(alt.encode())})
    return {
        "token": piece,
        "logprob": -0.25,
        "bytes": list(piece.encode()),
        "top_logprobs": alternatives[:top],
    }


@dataclasses.dataclass(slots=True)
class ChatPlan:
    """What one chat request will be answered with, decided before the first byte."""

    model: str
    n: int
    stream: bool
    include_usage: bool
    produced: int  # tokens in each text choice
    finish_reason: str  # of the text choices
    tool_name: str | None  # set when choice 0 answers with a tool call
    logprobs: bool
    top_logprobs: int
    prompt_tokens: int
    images: int = 0  # pictures choice 0 generates (``SimOptions.images``)
    picture: str = ""  # each one's base64 (``picture``)

    @property
    def completion_tokens(self) -> int:
        """Text choices count their pieces; a tool-call choice counts as one token."""
        if self.tool_name is None:
            return self.produced * self.n
        return 1 + self.produced * (self.n - 1)


class RequestError(ValueError):
    """A chat request the simulator rejects with 400, naming the offending ``param``."""

    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.param = param


def _int_param(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RequestError(f"'{name}' must be an integer from {low} to {high}.", name)
    return value


def _tool_name(body: dict[str, Any]) -> str | None:
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") == "tool":
        return None  # the tool has answered: now the model speaks
    if isinstance(choice, dict) and choice.get("type") == "function":
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if isinstance(name, str) and name:
            return name
    for tool in tools:
        if not isinstance(tool, dict) or tool.get("type") != "function":
            continue
        function = tool.get("function")
        if isinstance(function, dict):
            name = function.get("name")
            if isinstance(name, str) and name:
                return name
    return None


def plan_chat(body: Any, options: SimOptions) -> ChatPlan:
    """Validate a parsed chat request and decide the answer; raises ``RequestError``."""
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.", None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("You must provide a model parameter.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.", "messages")
    if not all(isinstance(message, dict) for message in messages):
        raise RequestError("Each entry of 'messages' must be an object.", "messages")
    n = _int_param(body, "n", 1, 1, MAX_CHOICES)
    top_logprobs = _int_param(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS)
    # The newer parameter wins, as in OpenAI's API, when a client sends both.
    limit_name = (
        "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
    )
    limit = _int_param(body, limit_name, options.tokens, 0, 2**31)
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    return ChatPlan(
        model=model,
        n=n,
        stream=body.get("stream") is True,
        include_usage=include_usage and not options.nousage,
        produced=min(options.tokens, limit),
        finish_reason="length" if limit < options.tokens else "stop",
        tool_name=_tool_name(body),
        logprobs=body.get("logprobs") is True,
        top_logprobs=top_logprobs,
        prompt_tokens=count_prompt_tokens(messages),
        images=options.images,
        picture=picture(options),
    )


def usage_for(plan: ChatPlan, options: SimOptions) -> dict[str, Any]:
    """OpenAI's chat usage; audio and image tokens come on top of the text's."""
    prompt = plan.prompt_tokens + options.audio_in + options.image_in
    completion = plan.completion_tokens + options.reasoning + options.audio_out + options.image_out
    prompt_details = {"cached_tokens": options.cached, "audio_tokens": options.audio_in}
    completion_details = {
        "reasoning_tokens": options.reasoning,
        "audio_tokens": options.audio_out,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    if options.image_in:
        prompt_details["image_tokens"] = options.image_in
    if options.image_out:
        completion_details["image_tokens"] = options.image_out
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": completion_details,
    }


def service_tier(options: SimOptions) -> str:
    return options.tier or "default"


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def completion_body(plan: ChatPlan, options: SimOptions) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object for ``plan``."""
    pieces = [_piece(position) for position in range(plan.produced)]
    choices = []
    for index in range(plan.n):
        if index == 0 and plan.tool_name is not None:
            call = {
                "id": new_id("call_"),
                "type": "function",
                "function": {"name": plan.tool_name, "arguments": "{}"},
            }
            message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            choices.append(
                {"index": 0, "message": message, "logprobs": None, "finish_reason": "tool_calls"}
            )
            continue
        logprobs = None
        if plan.logprobs:
            entries = [token_logprob(piece, plan.top_logprobs) for piece in pieces]
            logprobs = {"content": entries, "refusal": None}
        message = {"role": "assistant", "content": "".join(pieces), "refusal": None}
        if index == 0 and plan.images:
            message["images"] = generated_images(plan.images, plan.picture)
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": logprobs,
                "finish_reason": plan.finish_reason,
            }
        )
    body: dict[str, Any] = {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": plan.model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": service_tier(options),
        "choices": choices,
    }
    if not options.nousage:
        body["usage"] = usage_for(plan, options)
    return body


def stream_steps(plan: ChatPlan, index: int) -> list[dict[str, Any]]:
    """The deltas after the role delta for one choice; each one is a "content chunk"."""
    if index == 0 and plan.tool_name is not None:
        first = {
            "index": 0,
            "id": new_id("call_"),
            "type": "function",
            "function": {"name": plan.tool_name, "arguments": ""},
        }
        rest = {"index": 0, "function": {"arguments": "{}"}}
        return [{"tool_calls": [first]}, {"tool_calls": [rest]}]
    deltas: list[dict[str, Any]] = [
        {"content": _piece(position)} for position in range(plan.produced)
    ]
    if index == 0 and plan.images:
        # One picture per chunk, as each is finished.
        deltas.extend({"images": generated_images(1, plan.picture)} for _ in range(plan.images))
    return deltas


# A 1x1 PNG: what each generated picture carries.
PIXEL_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5E"
    "rkJggg=="
)


def picture(options: SimOptions) -> str:
    """A generated picture's base64: the 1x1 PNG, or ``image_size`` characters of zeros."""
    if not options.image_size:
        return PIXEL_PNG
    return "A" * (-(-options.image_size // 4) * 4)


def generated_images(count: int, data: str = PIXEL_PNG) -> list[dict[str, Any]]:
    """Chat image output as OpenRouter returns it: image_url parts holding data URLs."""
    url = f"data:image/png;base64,{data or PIXEL_PNG}"
    return [{"type": "image_url", "image_url": {"url": url}} for _ in range(count)]


def error_envelope(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body; ``type`` follows the status the way OpenAI's API does."""
    if status == 401:
        kind, code = "invalid_request_error", code or "invalid_api_key"
    elif status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
