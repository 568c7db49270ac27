"""The one canonical form every API format is translated through.

A request, a complete answer, and the events of a streamed answer, each as plain
dataclasses that know no wire format. Every format module (``chat``, ``responses``,
``messages``; later Gemini or Bedrock) converts its own shapes to and from these, so N
formats need 2N converters rather than N squared, and a feature one format lacks is
dropped or refused at one place.

Usage is kept in one convention: ``input_tokens`` is the whole prompt, cached reads and
cache writes included (OpenAI's convention; Anthropic's ``input_tokens`` excludes both),
and ``output_tokens`` includes reasoning tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


class TranslationError(ValueError):
    """The request uses something the target format cannot express; answered with 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class Text:
    text: str
    cache_control: dict[str, Any] | None = None


@dataclass(slots=True)
class Image:
    url: str  # an https URL or a data: URL with base64 content
    detail: str | None = None


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON document, as OpenAI's formats carry it


@dataclass(slots=True)
class ToolResult:
    call_id: str
    content: list[Text | Image]
    is_error: bool = False


@dataclass(slots=True)
class Reasoning:
    text: str
    signature: str | None = None


@dataclass(slots=True)
class GeneratedImage:
    """A picture the model made (answers only): base64 ``data`` of type ``mime_type``.

    Every format that can carry generated pictures carries them inline, so only inline
    pictures are kept: a format without a base64 form (a bare URL) has nothing to hand on.
    """

    mime_type: str
    data: str

    def data_url(self) -> str:
        return f"data:{self.mime_type};base64,{self.data}"

    @classmethod
    def from_data_url(cls, url: Any) -> GeneratedImage | None:
        """The picture a ``data:image/...;base64,`` URL holds; None for anything else."""
        if not isinstance(url, str) or not url.startswith("data:image/"):
            return None
        mime, sep, data = url[len("data:") :].partition(";base64,")
        if not sep or not data or "," in mime or ";" in mime:
            return None
        return cls(mime, data)


Part = Text | Image | ToolCall | ToolResult | Reasoning


@dataclass(slots=True)
class Turn:
    role: Literal["user", "assistant"]
    parts: list[Part]


@dataclass(slots=True)
class Tool:
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(slots=True)
class OutputFormat:
    kind: Literal["json_schema", "json_object"]
    name: str = "output"
    schema: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(slots=True)
class Request:
    model: str
    turns: list[Turn]
    system: list[Text] = field(default_factory=list)
    tools: list[Tool] = field(default_factory=list)
    # "auto", "none", "required", or the name of the one tool to call
    tool_choice: str | None = None
    parallel_tool_calls: bool | None = None
    max_output_tokens: int | None = None
    # The output tokens per answer that the request's hold was computed with (the client's
    # cap, else the model's catalogue maximum, else RELAY_RESERVE_OUTPUT_TOKENS): what a
    # provider that needs a cap (Anthropic's max_tokens) is sent when the client set none.
    # The relay's core sets it: no format's translator knows the model's maximum.
    held_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    reasoning_effort: str | None = None
    # A Messages client's own thinking budget (its effort is the nearest level), kept for
    # an Anthropic-shaped provider rather than rounded to the level's budget.
    thinking_budget: int | None = None
    output_format: OutputFormat | None = None
    user: str | None = None
    stream: bool = False
    # The client asked for generated pictures (chat ``modalities`` with "image", the
    # Responses image_generation tool); only then are pictures delivered and billed.
    image_output: bool = False


@dataclass(slots=True)
class Usage:
    """The whole prompt and the whole output (reasoning included); the other counts are
    parts of them, priced apart (``billing.pricing``)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    # Part of cache_write_tokens: written to a one-hour cache (the rest: five minutes).
    cache_write_1h_tokens: int = 0
    audio_input_tokens: int = 0
    audio_output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    output_images: int = 0
    # The service tier the provider served: "flex", "priority" or "" (default).
    service_tier: str = ""


# Why generation stopped: the model was done, hit the output cap, called tools, met a
# stop sequence, or was filtered.
Stop = Literal["end", "length", "tool_use", "stop_sequence", "content_filter"]


def service_tier(value: Any) -> str:
    """A provider's service tier as billed: "flex", "priority" or "" (anything else)."""
    return value if value in ("flex", "priority") else ""


AnswerPart = Text | ToolCall | Reasoning | GeneratedImage


@dataclass(slots=True)
class Response:
    id: str
    model: str
    parts: list[AnswerPart]
    stop: Stop = "end"
    usage: Usage | None = None
    created: int = 0


# Stream events: what any streamed answer is made of, in order.
@dataclass(slots=True)
class StreamStart:
    id: str
    model: str
    created: int = 0


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ReasoningDelta:
    text: str


@dataclass(slots=True)
class ToolCallStart:
    index: int  # the call's position among the answer's tool calls
    id: str
    name: str


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str


@dataclass(slots=True)
class ImageGenerated:
    """A whole generated picture: the formats that stream pictures send each in one piece."""

    image: GeneratedImage


@dataclass(slots=True)
class StreamFinish:
    stop: Stop


@dataclass(slots=True)
class StreamUsage:
    usage: Usage


Event = (
    StreamStart
    | TextDelta
    | ReasoningDelta
    | ToolCallStart
    | ToolCallDelta
    | ImageGenerated
    | StreamFinish
    | StreamUsage
)


def text_of(parts: list[Any]) -> str:
    """The text parts of ``parts`` joined."""
    return "".join(part.text for part in parts if isinstance(part, Text))


# What joins a call id to the provider's signature of the call, which rides in the id the
# client gets back (Gemini 3's ``thoughtSignature``: ``relay.providers.google``). Only that
# provider reads it; any other gets the bare id (Bedrock takes 64 characters at most).
SIGNED_CALL_MARK = "__tsig_"


def bare_call_id(value: str) -> str:
    """A call id without the signature it may carry (``SIGNED_CALL_MARK``)."""
    return value.partition(SIGNED_CALL_MARK)[0] or value


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
