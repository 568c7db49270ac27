"""What every provider adapter shares: the upstream request it builds, the stream
decoder it hands back, and the three kinds of failure the relay tells apart.

Adapters translate between the canonical form (``relay.translate.canonical``) and a
provider's native format: ``build`` takes a canonical ``Request``, ``decode`` gives a
canonical ``Response`` and stream decoders give canonical stream events. Usage comes back
in the canonical convention (the whole prompt in ``input_tokens``, cache reads and writes
beside it, reasoning inside ``output_tokens``).
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

from portal import redaction
from relay.translate import canonical as c

MAX_MESSAGE_CHARS = 500


class FailureKind(enum.Enum):
    """How the relay should react to a failed upstream answer."""

    # Another channel may well succeed (rate limits, overload, outages): fail over.
    RETRYABLE = "retryable"
    # The provider refused the channel's own credentials: suspend the channel, fail over.
    CREDENTIALS = "credentials"
    # The request itself is at fault: any channel would refuse it, so answer the client.
    CLIENT = "client"


@dataclasses.dataclass(frozen=True, slots=True)
class ProviderFailure:
    """A provider's error, classified and worded for the client (no secrets in it)."""

    kind: FailureKind
    status: int  # the status to give the client if this is the last word
    message: str
    type: str = "invalid_request_error"
    code: str | None = None

    @property
    def retryable(self) -> bool:
        return self.kind is not FailureKind.CLIENT


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """What a provider's errors may echo that names the operator's account rather than the
    client's request (see ``portal.redaction.Scrubber``): none of it may reach a client."""

    secrets: tuple[str, ...] = ()  # keys and tokens
    names: tuple[str, ...] = ()  # hosts, projects, accounts, key ids
    aliases: tuple[str, ...] = ()  # what the provider calls the model (a deployment, an ARN)
    patterns: tuple[re.Pattern[str], ...] = ()


def host(url: str) -> str:
    """The host of ``url`` (with its port, if it has one), or "" for none."""
    return urlsplit(url).netloc if "://" in url else ""


# An Amazon Resource Name says whose account it is: a model's inference profile or a
# role's ARN in an error would name the operator's AWS account.
AWS_ARN = re.compile(r"arn:aws[a-z-]*:[^\s\"'`,;()<>]+", re.IGNORECASE)
AWS_ACCOUNT_ID = re.compile(r"(?<![0-9])[0-9]{12}(?![0-9])")
# Google names a project by id or by number: ``projects/my-proj`` in resource names,
# ``project 123456789`` in prose and ``?project=`` in console links.
GOOGLE_PROJECT = re.compile(
    r"(?<=projects/)[^/\s\"'`,;()<>]+|(?<=project[ =])[0-9]{6,}|(?<=project: )[0-9]{6,}",
    re.IGNORECASE,
)


@dataclasses.dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """One request to a provider, ready to send: nothing in it is computed later."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes

    def to_httpx(self, timeout: httpx.Timeout | None = None) -> httpx.Request:
        extensions: dict[str, Any] = {}
        if timeout is not None:
            extensions["timeout"] = timeout.as_dict()
        return httpx.Request(
            self.method,
            httpx.URL(self.url),
            headers=self.headers,
            content=self.content,
            extensions=extensions,
        )


class StreamFailed(Exception):
    """The provider reported an error inside a stream that had already begun."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class AnswerRefusesRequest(ValueError):
    """A successful-looking answer (HTTP 200) that refuses the request itself, such as a
    prompt the provider blocks: the client's error, answered as ``failure`` says, with no
    failover and nothing counted against the channel. A ValueError, so a caller that knows
    nothing of it still takes the body for no answer."""

    def __init__(self, failure: ProviderFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class StreamDecoder(Protocol):
    """Turns a provider's stream into canonical events as its bytes arrive; ``finish``
    raises ValueError when the stream ended before the provider said it was complete."""

    def feed(self, data: bytes) -> list[c.Event]: ...

    def finish(self) -> list[c.Event]: ...

    def prompt_usage(self) -> c.Usage | None:
        """The prompt's counts, if the provider sent them ahead of the stream's usage."""
        ...


class Adapter(Protocol):
    """One provider type: request building, answer and stream decoding, error mapping."""

    provider_type: str

    async def build(
        self, request: c.Request, *, upstream_model: str, stream: bool
    ) -> UpstreamRequest: ...

    def decode(self, body: bytes) -> c.Response: ...

    def stream_decoder(self) -> StreamDecoder: ...

    def failure(self, status: int, headers: Mapping[str, str], body: bytes) -> ProviderFailure: ...

    def identity(self, upstream_model: str) -> Identity:
        """What names the channel's account in errors about ``upstream_model``."""
        ...


# What an error's type or code says when the request itself is at fault, wherever it comes
# (an error event inside a stream, relayed or decoded): the OpenAI and Anthropic type for
# it, and the Responses API's codes for a prompt or an input image it refuses. Anything
# else (overload, rate limits, server errors, codes never seen) is the channel's.
REQUEST_FAULTS = frozenset(
    {
        "invalid_request_error",
        "request_too_large",
        "context_length_exceeded",
        "content_filter",
        "content_policy_violation",
        "invalid_prompt",
        "bio_policy",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "invalid_image_mode",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)
# A refused key wears the request's type at OpenAI; it is the channel's fault all the same.
CHANNEL_FAULTS = frozenset({"invalid_api_key", "authentication_error", "permission_error"})


def request_at_fault(*named: object) -> bool:
    """Whether an error of these types and codes (any may be missing) blames the request."""
    names = {value for value in named if isinstance(value, str)}
    return bool(names & REQUEST_FAULTS) and not names & CHANNEL_FAULTS


def clip(message: str, secrets: tuple[str, ...] = ()) -> str:
    """A provider's error message made safe to show: secrets removed (in every spelling,
    see ``portal.redaction``), length bounded."""
    return redaction.redact(message, secrets)[:MAX_MESSAGE_CHARS]


# A usage event keeps an error code in 64 characters.
MAX_CODE_CHARS = 64


def clip_code(code: object, secrets: tuple[str, ...] = ()) -> str | None:
    """A provider's error code or type, redacted like its message (issue 11, #4)."""
    if not isinstance(code, str) or not code:
        return None
    return redaction.redact(code, secrets)[:MAX_CODE_CHARS]


def by_status(status: int, message: str, *, code: str | None = None) -> ProviderFailure:
    """The default classification of an HTTP status, shared by every provider."""
    if status in (401, 403):
        return ProviderFailure(
            FailureKind.CREDENTIALS, 502, message, type="server_error", code="upstream_auth_failed"
        )
    if status in (408, 409, 425, 429) or status >= 500:
        client_status = 429 if status == 429 else 503 if status in (503, 529) else 502
        return ProviderFailure(
            FailureKind.RETRYABLE,
            client_status,
            message,
            type="server_error",
            code=code or "upstream_error",
        )
    return ProviderFailure(FailureKind.CLIENT, status, message, code=code)
