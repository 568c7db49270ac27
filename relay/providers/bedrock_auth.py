"""AWS for Bedrock: SigV4 signatures by botocore's signer, and AWS event-stream frames
decoded by botocore's parser. Neither is written by hand here.

botocore is imported on first use (~0.15 s and ~10 MB): a process that serves no Bedrock
channel never loads it."""

from __future__ import annotations

import dataclasses
from typing import Any

SERVICE = "bedrock"  # the signing name of bedrock-runtime


@dataclasses.dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str
    region: str
    session_token: str | None = None


def sign(
    credentials: AwsCredentials, *, method: str, url: str, headers: dict[str, str], body: bytes
) -> dict[str, str]:
    """``headers`` plus the SigV4 ``authorization``, ``x-amz-date`` (and security token)
    for this exact method, URL and body."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    signer = SigV4Auth(
        Credentials(
            credentials.access_key_id, credentials.secret_access_key, credentials.session_token
        ),
        SERVICE,
        credentials.region,
    )
    signer.add_auth(request)
    return {name.lower(): str(value) for name, value in request.headers.items()}


@dataclasses.dataclass(frozen=True, slots=True)
class StreamEvent:
    message_type: str  # "event" or "exception"
    event_type: str  # e.g. "contentBlockDelta", or the exception's type
    payload: bytes


class EventStreamDecoder:
    """Bytes in, whole event-stream messages out (checksums verified by botocore)."""

    def __init__(self) -> None:
        from botocore import eventstream

        self._buffer = eventstream.EventStreamBuffer()
        self._malformed: tuple[type[Exception], ...] = (
            eventstream.EventStreamError,
            eventstream.ParserError,
        )

    def feed(self, data: bytes) -> list[StreamEvent]:
        self._buffer.add_data(data)
        events = []
        try:
            for message in self._buffer:
                headers: dict[str, Any] = message.headers
                kind = str(headers.get(":message-type", "event"))
                name = headers.get(":exception-type") if kind == "exception" else None
                name = name or headers.get(":event-type") or headers.get(":error-code") or ""
                events.append(StreamEvent(kind, str(name), bytes(message.payload)))
        except self._malformed as exc:
            raise ValueError(f"malformed AWS event stream: {type(exc).__name__}") from None
        return events
