"""One attempt on a channel through its provider adapter (``relay.providers``).

The client's request, in the canonical form, is built into the provider's native request
(signed, or with a fresh token); the answer or stream is decoded back to canonical and
written in the client's dialect. Failures are classified by the adapter: retryable ones
and refused credentials fail over (the latter also suspend the channel), the client's
own errors are answered at once.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from relay import errors, upstream
from relay.dialects.base import Leg
from relay.dialects.images import ImageGate
from relay.dialects.native import NativeCodec
from relay.metering import Usage
from relay.providers.base import (
    AnswerRefusesRequest,
    FailureKind,
    ProviderFailure,
    StreamFailed,
)
from relay.providers.bedrock import UnsupportedContent
from relay.providers.streams import StreamIncomplete
from relay.providers.vertex import credentials_failure
from relay.providers.vertex_auth import TokenFetchFailed
from relay.snapshot import Route
from relay.translate import canonical as c
from relay.upstream_errors import (
    MALFORMED,
    MAX_ERROR_BODY_BYTES,
    MAX_RESPONSE_BYTES,
    AttemptFailed,
    read_limited,
    redact,
)

if TYPE_CHECKING:
    from relay.forward import Forwarding

logger = logging.getLogger(__name__)


class NotExpressible(Exception):
    """The request cannot go to this channel's provider (no canonical form for its API,
    or content the translation cannot carry): skip the channel without blaming it. Its
    message says why, to the client if no channel of the model can take the request."""


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _error(failure: ProviderFailure, route: Route) -> errors.RelayError:
    """The provider's failure as the client sees it: worded by the adapter, with nothing
    in it that names the channel's account (``upstream_errors.redact``)."""
    code = redact(failure.code, route) if failure.code else None
    return errors.RelayError(
        failure.status, redact(failure.message, route), type=failure.type, code=code
    )


def _texts(event: c.Event) -> list[str]:
    if isinstance(event, (c.TextDelta, c.ReasoningDelta)):
        return [event.text]
    if isinstance(event, c.ToolCallDelta):
        return [event.arguments]
    if isinstance(event, c.ToolCallStart):
        return [event.name]
    return []


async def attempt(
    forwarding: Forwarding, route: Route, leg: Leg, info: dict[str, Any], started: float
) -> None:
    adapter = route.adapter
    try:
        codec = leg.native()
    except errors.RelayError as exc:
        raise NotExpressible(exc.message) from None
    if codec is None:
        raise NotExpressible("its providers do not support this API.")
    record = forwarding.record
    # A provider that needs an output cap is sent the one the request was held for.
    codec.request.held_output_tokens = forwarding.call.output_limit(
        forwarding.model.max_output_tokens
    )
    try:
        built = await adapter.build(
            codec.request, upstream_model=route.upstream_model, stream=forwarding.stream
        )
    except TokenFetchFailed as exc:
        # A refused service account suspends the channel; an unreachable token endpoint
        # is an outage: fail over, but the account is fine.
        failure = credentials_failure(exc)
        refused = failure.kind is FailureKind.CREDENTIALS
        info.update(
            error="credentials" if refused else "token_unavailable", latency_ms=_ms(started)
        )
        if refused:
            info["status"] = 401
        raise AttemptFailed(_error(failure, route), info, credentials=refused) from None
    except (UnsupportedContent, c.TranslationError) as exc:
        # What this provider cannot carry (an image by URL for Bedrock) another channel
        # of the model may: nothing was sent, so nothing is blamed.
        raise NotExpressible(str(exc)) from None
    # Adapters build their URLs percent-encoded, and a signed one (Bedrock's SigV4) is
    # valid only for those exact bytes: parsed as not yet encoded, yarl would decode the
    # model id's %3A into ':' on the wire and AWS would refuse the signature.
    target = upstream.url(built.url, encoded=True)
    try:
        response = await forwarding.send(
            built.method, target, built.headers, built.content, route.timeout
        )
    except upstream.TimeoutException:
        info.update(error="timeout", latency_ms=_ms(started))
        raise AttemptFailed(errors.upstream_failed(504, "timeout"), info) from None
    except upstream.UpstreamError as exc:
        info.update(error=type(exc).__name__, latency_ms=_ms(started))
        raise AttemptFailed(errors.upstream_failed(502, "unreachable"), info) from None
    status = response.status
    info.update(status=status, latency_ms=_ms(started))
    try:
        if status >= 400:
            try:
                body = await read_limited(response, MAX_ERROR_BODY_BYTES)
            except upstream.UpstreamError:
                body = b""  # the status alone decides; its broken body is not needed
            failure = adapter.failure(status, response.headers, body)
            if failure.retryable:
                credentials = failure.kind is FailureKind.CREDENTIALS
                raise AttemptFailed(_error(failure, route), info, credentials=credentials)
            record.attempts.append(info)
            forwarding._note_channel(route, started)
            error = _error(failure, route)
            record.error_code = error.code or "upstream_client_error"
            raise error
        forwarding._note_channel(route, started)
        if forwarding.stream:
            record.attempts.append(info)
            await _relay_stream(forwarding, route, response, codec)
        else:
            await _relay_body(forwarding, route, response, codec, info)
    finally:
        response.release()  # closes the connection instead when the body was not read whole


async def _relay_body(
    forwarding: Forwarding,
    route: Route,
    response: upstream.Response,
    codec: NativeCodec,
    info: dict[str, Any],
) -> None:
    try:
        body = await read_limited(response, MAX_RESPONSE_BYTES)
        answer = route.adapter.decode(body)
    except AnswerRefusesRequest as exc:  # another channel would refuse it too
        forwarding.record.attempts.append(info)
        error = _error(exc.failure, route)
        forwarding.record.error_code = error.code or "upstream_client_error"
        raise error from None
    except (
        errors.RelayError,
        ValueError,
        TypeError,
        AttributeError,
        upstream.UpstreamError,
    ) as exc:
        info["error"] = "invalid_response"
        raise AttemptFailed(
            errors.upstream_failed(502, "The upstream sent an invalid response."), info
        ) from exc
    record = forwarding.record
    record.attempts.append(info)
    answer.model = forwarding.model.public_id
    images = ImageGate(codec.request)
    images.answer(answer)
    record.output_images = images.delivered
    record.usage = Usage.from_canonical(answer.usage)
    if record.usage is None:
        record.completion_text = []
        record.keep_text([c.text_of(answer.parts)])
    record.status_code = 200
    out = codec.to_client(answer)
    if forwarding.settle is not None:
        await forwarding.settle()
    await forwarding.exchange.respond_json(200, orjson.dumps(out))


async def _relay_stream(
    forwarding: Forwarding, route: Route, response: upstream.Response, codec: NativeCodec
) -> None:
    exchange = forwarding.exchange
    record = forwarding.record
    record.status_code = 200
    record.completion_text = []
    decoder = route.adapter.stream_decoder()
    encoder = codec.encoder()
    public = forwarding.model.public_id
    images = ImageGate(codec.request)
    content = response.content
    # An answer already here whole goes out in one write, its head with it (relay.forward).
    await exchange.start_stream(hold=content.is_eof())
    # From here the stream has reached its client: a lost process must not lose it
    # (``relay.orphans``), whichever provider serves it.
    track = getattr(forwarding.settle, "track_stream", None)
    progress = track() if track is not None else None

    def frames(events: list[c.Event]) -> bytes:
        out = bytearray()
        for event in images.events(events):
            if isinstance(event, c.StreamStart):
                event.model = public
            elif isinstance(event, c.StreamUsage):
                record.usage = Usage.from_canonical(event.usage)
            record.keep_text(_texts(event))
            for frame in encoder.feed(event):
                out += frame
        record.output_images = images.delivered
        if record.usage is None and record.prompt_usage is None:
            record.prompt_usage = Usage.from_canonical(decoder.prompt_usage())
        return bytes(out)

    async def send(out: bytes) -> None:
        await exchange.send_body(out)
        if progress is not None:
            progress.delivered()

    try:
        async for data in upstream.iter_chunks(response):
            out = frames(decoder.feed(data))
            if out:
                if content.at_eof():
                    # Read with the end of the upstream's body: it goes with the
                    # response's end, in one write (or ahead of an error ending it).
                    exchange.hold_body(out)
                else:
                    await send(out)
        exchange.hold_body(frames(decoder.finish()))
    except StreamFailed as exc:
        record.completed = False
        # The request's own fault (a prompt the provider blocks) says nothing about the
        # channel: counted, one tenant's requests could open its breaker for all.
        error = _error(exc.failure, route)
        if exc.failure.retryable:
            record.error_code = "upstream_stream_error"
            forwarding._report_failure(route, None)
        else:
            record.error_code = error.code or "upstream_stream_error"
        if forwarding.settle is not None:
            await forwarding.settle()  # as for an answer's end: before the client sees it
        await exchange.end_body(codec.stream_error(error))
        return
    except StreamIncomplete:  # a clean end, but before the provider's own
        await forwarding._end_incomplete(route)
        return
    except (upstream.UpstreamError, *MALFORMED) as exc:
        logger.info("upstream stream broke: %s", type(exc).__name__)
        forwarding._report_failure(route, None)
        await forwarding._end_stream_with_error(
            "upstream_stream_broken", "The upstream connection broke during the response."
        )
        return
    if forwarding.settle is not None:
        await forwarding.settle()  # on its way to Redis before the client sees the end
    await exchange.end_body(b"".join(encoder.close()))
