"""Forwarding one request, in any dialect: channels in order, failover before the first
byte, breakers, and the answer relayed back (whole, or as a stream without buffering)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from portal import services as portal_services
from relay import errors, forward_native, outage, shared, sse, upstream
from relay.affinity import conversation_key
from relay.ahead import Gate
from relay.dialects.base import Call, Dialect, Leg, StreamError
from relay.exchange import Exchange
from relay.metering import UsageRecord
from relay.routing import attempt_order
from relay.snapshot import ModelInfo, Route
from relay.upstream_errors import (
    MALFORMED,
    MAX_ERROR_BODY_BYTES,
    MAX_EVENT_BYTES,
    MAX_RESPONSE_BYTES,
    RETRYABLE_STATUSES,
    AttemptFailed,
    final_error,
    read_limited,
    upstream_error,
)

logger = logging.getLogger(__name__)

# Fire-and-forget work (breaker reports, suspensions) must not be garbage-collected early.
_background_tasks: set[asyncio.Task[Any]] = set()


def background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(work)
    _background_tasks.add(task)
    task.add_done_callback(_finish_background)


def _finish_background(task: asyncio.Task[Any]) -> None:
    _background_tasks.discard(task)
    if task.cancelled() or (exc := task.exception()) is None:
        return
    if isinstance(exc, RedisError | OSError):  # Redis away: one line per outage, not per task
        outage.redis.failed("relay background work", exc)
    else:
        logger.warning("relay background work failed", exc_info=exc)


def ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


class Forwarding:
    """One exchange, from a validated request to the usage record."""

    def __init__(
        self,
        exchange: Exchange,
        dialect: Dialect,
        call: Call,
        model: ModelInfo,
        routes: tuple[Route, ...],
        record: UsageRecord,
        settle: Callable[[], Awaitable[None]] | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.settle = settle
        # The request's admission, when it went ahead of it (``relay.ahead``).
        self.gate = gate
        self.exchange = exchange
        self.dialect = dialect
        self.call = call
        self.model = model
        self.routes = routes
        self.record = record
        self.stream = call.stream

    async def run(self) -> None:
        failures: list[AttemptFailed] = []
        board = shared.breakers()
        attempts_left = max(settings.RELAY_MAX_ATTEMPTS, 1)
        skipped = ""  # why the last channel that could not take the request was passed
        try:
            async with asyncio.timeout(settings.RELAY_TOTAL_TIMEOUT):
                # One conversation's turns go to one channel while it is healthy, so the
                # provider's prompt cache keeps hitting (keys never cross tenants). With one
                # channel there is nothing to choose: its opening is not hashed (~15 us for
                # an 8 KB system prompt and first message).
                affinity = (
                    f"{self.record.tenant_id}:{conversation_key(self.call.payload)}"
                    if len(self.routes) > 1
                    else None
                )
                for route in attempt_order(self.routes, affinity=affinity):
                    if attempts_left == 0:
                        break
                    admitted, probe = await board.admit(route.channel_id)
                    if not admitted:
                        continue  # its breaker is open
                    attempts_left -= 1
                    try:
                        await self._attempt(route)
                    except forward_native.NotExpressible as exc:
                        attempts_left += 1  # nothing was sent: it costs no attempt
                        skipped = str(exc)
                        continue
                    except AttemptFailed as failure:
                        failures.append(failure)
                        self.record.attempts.append(failure.attempt)
                        self._report_failure(route, failure)
                        continue
                    except errors.RelayError:
                        if probe:  # the provider answered: the channel itself is fine
                            background(board.success(route.channel_id))
                        raise
                    if probe:
                        background(board.success(route.channel_id))
                    return
        except TimeoutError:
            if self.exchange.response_started:
                await self._end_stream_with_error("upstream_timeout", "The upstream timed out.")
                return
            failures.append(
                AttemptFailed(errors.upstream_failed(504, "timeout"), {"error": "timeout"})
            )
        if not failures and skipped:
            raise errors.invalid_request(
                f"The model `{self.model.public_id}` cannot serve this request: {skipped}",
                param="model",
            )
        if not failures:
            raise errors.no_channel(self.model.public_id)
        error = final_error(failures)
        self.record.error_code = error.code or ""
        raise error

    async def send(
        self,
        method: str,
        url: upstream.URL,
        headers: Mapping[str, str],
        content: bytes | None,
        timeout: aiohttp.ClientTimeout | None,
    ) -> upstream.Response:
        """The upstream call; ahead of the admission, cut by its refusal (``Refused``),
        and not returned before the admission allowed the request."""
        work = upstream.send(method, url, headers, content, timeout)
        gate = self.gate
        if gate is None or gate.passed:
            return await work
        exchange = self.exchange
        return await gate.race(work, lambda: exchange.disconnected)

    def _report_failure(self, route: Route, failure: AttemptFailed | None) -> None:
        """Count a failure against the channel's breaker, off the client's path."""
        failure_id = f"{self.record.request_id}:{route.channel_id}"
        background(shared.breakers().failure(route.channel_id, failure_id))
        if failure is not None and failure.credentials:
            status = failure.attempt.get("status")
            background(
                sync_to_async(channel_suspend)(
                    channel_id=route.channel_id,
                    reason=f"The provider refused this channel's credentials (HTTP {status}).",
                )
            )

    async def _attempt(self, route: Route) -> None:
        attempt: dict[str, Any] = {"channel": route.channel_id}
        started = time.monotonic()
        try:
            async with asyncio.timeout(route.total_timeout):
                await self._attempt_on(route, attempt, started)
        except TimeoutError:
            if self.exchange.response_started:
                self._report_failure(route, None)
                await self._end_stream_with_error("upstream_timeout", "The upstream timed out.")
                return
            attempt.update(error="timeout", latency_ms=ms_since(started))
            raise AttemptFailed(errors.upstream_failed(504, "timeout"), attempt) from None

    async def _attempt_on(self, route: Route, attempt: dict[str, Any], started: float) -> None:
        leg = self.call.leg(route, self.record, self.model.public_id)
        if route.adapter is not None and not leg.passthrough:
            await forward_native.attempt(self, route, leg, attempt, started)
            return
        content = leg.content(route)
        try:
            response = await self.send(
                "POST", leg.target(route), leg.headers(route, self.stream), content, route.timeout
            )
        except upstream.TimeoutException:
            attempt.update(error="timeout", latency_ms=ms_since(started))
            raise AttemptFailed(errors.upstream_failed(504, "timeout"), attempt) from None
        except upstream.UpstreamError as exc:
            attempt.update(error=type(exc).__name__, latency_ms=ms_since(started))
            raise AttemptFailed(errors.upstream_failed(502, "unreachable"), attempt) from None
        status = response.status
        attempt.update(status=status, latency_ms=ms_since(started))
        try:
            if status >= 400:
                try:
                    body = await read_limited(response, MAX_ERROR_BODY_BYTES)
                except upstream.UpstreamError:
                    body = b""  # the status alone decides; its broken body is not needed
                error = upstream_error(status, body, route)
                if status in RETRYABLE_STATUSES:
                    raise AttemptFailed(error, attempt, credentials=status in (401, 403))
                # The request itself is at fault: another channel would refuse it too.
                self.record.attempts.append(attempt)
                self._note_channel(route, started)
                self.record.error_code = error.code or "upstream_client_error"
                raise error
            self._note_channel(route, started)
            if self.stream and response.headers.get("content-type", "").startswith(
                "text/event-stream"
            ):
                self.record.attempts.append(attempt)
                await self._relay_stream(response, route, leg)
            else:
                await self._relay_body(response, attempt, leg)
        finally:
            # Back to the pool when the body was read whole; otherwise (an error, the
            # client gone, a timeout) aiohttp closes the connection instead.
            response.release()

    def _note_channel(self, route: Route, started: float) -> None:
        self.record.channel_id = route.channel_id
        self.record.upstream_model = route.upstream_model
        self.record.upstream_latency_ms = ms_since(started)

    async def _relay_body(
        self, response: upstream.Response, attempt: dict[str, Any], leg: Leg
    ) -> None:
        try:
            body = await read_limited(response, MAX_RESPONSE_BYTES)
            parsed = orjson.loads(body)
        except (errors.RelayError, orjson.JSONDecodeError, upstream.UpstreamError) as exc:
            attempt["error"] = "invalid_response"
            raise AttemptFailed(
                errors.upstream_failed(502, "The upstream sent an invalid response."), attempt
            ) from exc
        try:
            out = leg.answer_body(body, parsed)
        except MALFORMED as exc:
            # An answer the leg cannot read (a translation meeting members of the wrong
            # type): nothing reached the client, so nothing of it is billed.
            logger.info("an upstream answer could not be read", exc_info=exc)
            self.record.usage = self.record.completion_text = None
            self.record.output_images = 0
            attempt["error"] = "invalid_response"
            raise AttemptFailed(
                errors.upstream_failed(502, "The upstream sent an invalid response."), attempt
            ) from exc
        if out is None:
            attempt["error"] = "error_body"
            raise AttemptFailed(
                errors.upstream_failed(502, "The upstream sent an error instead of a completion."),
                attempt,
            )
        self.record.attempts.append(attempt)
        self.record.status_code = 200
        if self.settle is not None:
            await self.settle()  # on its way to Redis before the client has its answer
        await self.exchange.respond_json(200, out)

    async def _relay_stream(self, response: upstream.Response, route: Route, leg: Leg) -> None:
        exchange = self.exchange
        self.record.status_code = 200
        self.record.completion_text = []
        content = response.content
        # An answer already here whole (a short one, as a rule) costs the client's
        # connection one write: its head, its events and its end together.
        await exchange.start_stream(hold=content.is_eof())
        # From here the stream has reached its client: a lost process must not lose it.
        track = getattr(self.settle, "track_stream", None)
        progress = track() if track is not None else None
        chunks = upstream.iter_chunks(response)
        finished = False  # the answer's end came
        try:
            async for events in sse.iter_event_batches(chunks, MAX_EVENT_BYTES):
                # What one upstream read completed goes out in one write.
                out = []
                ended = False
                for event in events:
                    data = sse.event_data(event)
                    if data is None:
                        out.append(event + b"\n\n")  # comments keep the line alive
                        continue
                    try:
                        chunk, final = leg.event(event, data)
                    except StreamError:
                        exchange.hold_body(b"".join(out))  # the events before it go first
                        raise
                    except MALFORMED as exc:
                        if out:  # the well-formed events before it still go out
                            await exchange.send_body(b"".join(out))
                        if not isinstance(exc, ValueError):
                            logger.info("an upstream stream event could not be read", exc_info=exc)
                        raise ValueError("malformed stream event") from exc
                    if final and self.settle is not None:
                        await self.settle()  # on its way to Redis before the client sees the end
                    ended = ended or final
                    if chunk:
                        out.append(chunk)
                finished = finished or ended
                if out:
                    joined = out[0] if len(out) == 1 else b"".join(out)
                    if ended and content.at_eof():
                        # The answer's end, read with the end of the upstream's body:
                        # it goes with the response's end, in one write.
                        exchange.hold_body(joined)
                    else:
                        await exchange.send_body(joined)
                    if progress is not None:
                        progress.delivered()
        except StreamError as failed:
            # The provider's own error event, passed on (redacted) as the stream's last.
            self.record.completed = False
            self.record.error_code = failed.code
            if failed.channel:
                self._report_failure(route, None)
            if self.settle is not None:
                await self.settle()  # as for an answer's end: before the client sees it
            with contextlib.suppress(Exception):
                await exchange.end_body(failed.frame)
            return
        except (upstream.UpstreamError, ValueError) as exc:
            logger.info("upstream stream broke: %s", type(exc).__name__)
            self._report_failure(route, None)
            await self._end_stream_with_error(
                "upstream_stream_broken",
                "The upstream connection broke during the response.",
            )
            return
        if not finished:
            # The body ended (cleanly) before the answer's last event.
            closing = leg.end_of_stream()
            if closing is None:
                await self._end_incomplete(route)
                return
            if self.settle is not None:
                await self.settle()  # on its way to Redis before the client sees the end
            exchange.hold_body(closing)
        await exchange.end_body()

    async def _end_incomplete(self, route: Route) -> None:
        """End a stream whose body ended, cleanly, before its answer's last event: a
        truncated answer, never passed off as a whole one, and the channel's fault."""
        logger.info("upstream stream ended before its answer's end")
        self._report_failure(route, None)
        await self._end_stream_with_error(
            "upstream_stream_incomplete",
            "The upstream's stream ended before the response was complete.",
        )

    async def _end_stream_with_error(self, code: str, message: str) -> None:
        """End the stream with an error event (after what was held back for its end)."""
        self.record.completed = False
        self.record.error_code = code
        error = errors.upstream_failed(502, message, code=code)
        with contextlib.suppress(Exception):
            await self.exchange.end_body(self.dialect.stream_error(error))


def channel_suspend(*, channel_id: int, reason: str) -> None:
    portal_services.channel_suspend(channel_id=channel_id, reason=reason)
