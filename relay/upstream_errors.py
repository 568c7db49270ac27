"""What a channel's failures become for the client: its own error without anything that
reveals the channel, and the one error reported after every channel failed."""

from __future__ import annotations

import contextlib
from typing import Any
from urllib.parse import urlsplit

import orjson

from portal import redaction
from relay import errors, upstream
from relay.providers.base import Identity
from relay.snapshot import Route

# Statuses after which another channel may well succeed. 401/403 say the channel's own
# credentials are wrong, which is no fault of the client's.
RETRYABLE_STATUSES = frozenset({401, 403, 408, 409, 429, 500, 502, 503, 504, 520, 522, 524, 529})
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_EVENT_BYTES = 16 * 1024 * 1024
# What reading a channel's answer of an unexpected shape raises: valid JSON whose members
# are not what the API says (a string where an object belongs) reaches ``.get`` or a
# subscript before any check. The channel's fault, as a malformed answer is.
MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError)


class AttemptFailed(Exception):
    """One channel failed before anything reached the client; try the next."""

    def __init__(
        self, error: errors.RelayError, attempt: dict[str, Any], *, credentials: bool = False
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempt = attempt
        # The provider refused the channel's own credentials: suspend it, don't just skip.
        self.credentials = credentials


def redact(text: str, route: Route) -> str:
    """Remove anything that would reveal the channel: its secret (in every spelling, see
    ``portal.redaction``), URL and host, what its provider adapter names as the account's
    (a project, an AWS account, a key id), and the provider's own name for the model,
    which becomes the one the client asked for."""
    scrubber = route.scrubber
    if scrubber is None:
        scrubber = _scrubber(route)
        object.__setattr__(route, "scrubber", scrubber)  # the route's cache, see Route
    return str(scrubber(text))


def _scrubber(route: Route) -> redaction.Scrubber:
    identity = route.adapter.identity(route.upstream_model) if route.adapter else Identity()
    renames = dict.fromkeys((route.upstream_model, *identity.aliases), route.model)
    url = route.url
    return redaction.Scrubber(
        secrets=(route.secret, url, url.rsplit("/", 1)[0], urlsplit(url).netloc, *identity.secrets),
        names=identity.names,
        renames=renames if route.model else None,
        patterns=identity.patterns,
    )


# OpenAI's error codes and types are short identifiers; the usage event keeps 64 characters.
MAX_ERROR_FIELD = 64


def _error_field(value: Any, route: Route) -> str | None:
    """An upstream error's ``type``, ``param`` or ``code``, redacted like its message: a
    provider that echoes the key would put it before the client and in the usage event."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return redact(str(value), route)[:MAX_ERROR_FIELD] or None


def upstream_error(status: int, body: bytes, route: Route) -> errors.RelayError:
    """The provider's own error, passed on with nothing revealing. OpenAI's envelope and
    Anthropic's (``{"type": "error", "error": {"type", "message"}}``) are both read."""
    message, type_, param, code = f"The upstream provider answered {status}.", None, None, None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            type_ = _error_field(error.get("type"), route)
            param = _error_field(error.get("param"), route)
            code = _error_field(error.get("code"), route)
        elif isinstance(error, str):
            message = error
    return errors.RelayError(
        status,
        redact(message, route),
        type=type_ or "invalid_request_error",
        param=param,
        code=code,
    )


async def read_limited(response: upstream.Response, limit: int) -> bytes:
    """The whole (decoded) body, refused once it passes ``limit`` bytes: a channel cannot
    make the relay hold more than that. A broken read raises ``upstream.UpstreamError``."""
    content = response.content
    pieces: list[bytes] = []
    size = 0
    try:
        while chunk := await content.readany():
            size += len(chunk)
            if size > limit:
                raise errors.upstream_failed(502, "The upstream response was too large.")
            pieces.append(chunk)
    except upstream.ClientError as exc:
        raise upstream.error_of(exc) from exc
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def final_error(failures: list[AttemptFailed]) -> errors.RelayError:
    if failures and all(f.attempt.get("status") == 429 for f in failures):
        return errors.RelayError(
            429,
            "The upstream provider is rate limiting requests for this model; retry shortly.",
            type="requests",
            code="rate_limit_exceeded",
            headers=((b"retry-after", b"1"),),
        )
    if failures and failures[-1].attempt.get("error") == "timeout":
        return errors.upstream_failed(
            504, "The upstream provider did not answer in time.", code="upstream_timeout"
        )
    return errors.upstream_failed(502, "The upstream provider failed to answer the request.")
