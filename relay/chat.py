"""``POST /v1/chat/completions``: validate, pick a channel, forward, stream back, meter.

The request body reaches the upstream unchanged but for ``model`` (mapped to the
channel's name for it) and, on streams, ``stream_options.include_usage`` (forced on so
every stream can be metered). Responses are mapped back to the public model name, and a
usage chunk the client did not ask for is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Coroutine, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from redis.exceptions import RedisError

from relay import errors, metrics, shared, spend, sse, tokens, upstream
from relay.exchange import Exchange
from relay.limits import Admission, LimitStore, RedisLimitStore, Reservation
from relay.metering import Usage, UsageRecord, usage_writer
from relay.routing import attempt_order
from relay.snapshot import KeyInfo, ModelInfo, Route

logger = logging.getLogger(__name__)

# Statuses after which another channel may well succeed. 401/403 say the channel's own
# credentials are wrong, which is no fault of the client's.
RETRYABLE_STATUSES = frozenset({401, 403, 408, 409, 429, 500, 502, 503, 504, 520, 522, 524})
MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
MAX_EVENT_BYTES = 16 * 1024 * 1024

_USAGE_NULL = b',"usage":null'


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


# Fire-and-forget work (breaker reports, suspensions) must not be garbage-collected early.
_background_tasks: set[asyncio.Task[Any]] = set()


def _background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(work)
    _background_tasks.add(task)
    task.add_done_callback(_finish_background)


def _finish_background(task: asyncio.Task[Any]) -> None:
    _background_tasks.discard(task)
    if not task.cancelled() and task.exception() is not None:
        logger.warning("relay background work failed", exc_info=task.exception())


def parse_request(body: bytes) -> dict[str, Any]:
    """Parse and check the fields the relay itself relies on; the upstream checks the rest."""
    try:
        # The stdlib keeps integers exact, where orjson would turn one beyond 64 bits into a
        # float and so alter the request; orjson then refuses such integers on the way out.
        payload = json.loads(
            body.decode("utf-8"), parse_constant=_reject_constant, parse_float=_finite_float
        )
    except (ValueError, RecursionError):
        raise errors.invalid_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
        ) from None
    if not isinstance(payload, dict):
        raise errors.invalid_request("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise errors.invalid_request("You must provide a model parameter.", param="model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise errors.invalid_request(
            "'messages' must be a non-empty array of message objects.", param="messages"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise errors.invalid_request(
                f"Invalid value for 'messages[{index}]': each message needs a string 'role'.",
                param=f"messages[{index}].role",
            )
    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise errors.invalid_request("'stream' must be a boolean.", param="stream")
    options = payload.get("stream_options")
    if options is not None:
        if not stream:
            raise errors.invalid_request(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                param="stream_options",
            )
        if not isinstance(options, dict):
            raise errors.invalid_request(
                "'stream_options' must be an object.", param="stream_options"
            )
    for name, low, high in (
        ("n", 1, 128),
        ("max_tokens", 1, None),
        ("max_completion_tokens", 1, None),
    ):
        value = payload.get(name)
        if value is None:
            continue
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            bound = f" and at most {high}" if high else ""
            raise errors.invalid_request(
                f"'{name}' must be an integer of at least {low}{bound}.", param=name
            )
    return payload


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: orjson would send it on as null
        raise ValueError(f"{text} is out of range")
    return value


def _redact(text: str, route: Route) -> str:
    """Remove anything that would reveal the channel: its secret, URL and host."""
    netloc = urlsplit(route.url).netloc
    for secret in filter(None, (route.secret, route.url, route.url.rsplit("/", 1)[0], netloc)):
        text = text.replace(secret, "[redacted]")
    return text


def _upstream_error(status: int, body: bytes, route: Route) -> errors.RelayError:
    """The provider's own error, passed on in OpenAI's envelope with nothing revealing."""
    message, type_, param, code = f"The upstream provider answered {status}.", None, None, None
    with contextlib.suppress(orjson.JSONDecodeError):
        parsed = orjson.loads(body)
        error = parsed.get("error") if isinstance(parsed, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            type_ = error.get("type") if isinstance(error.get("type"), str) else None
            param = error.get("param") if isinstance(error.get("param"), str) else None
            code = error.get("code") if isinstance(error.get("code"), str) else None
        elif isinstance(error, str):
            message = error
    return errors.RelayError(
        status,
        _redact(message, route),
        type=type_ or "invalid_request_error",
        param=param,
        code=code,
    )


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise errors.upstream_failed(502, "The upstream response was too large.")
    return bytes(data)


def _final_error(failures: list[AttemptFailed]) -> errors.RelayError:
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


class ChatCompletion:
    """One chat completion exchange, from a validated request to the usage record."""

    def __init__(
        self,
        exchange: Exchange,
        payload: dict[str, Any],
        model: ModelInfo,
        routes: tuple[Route, ...],
        record: UsageRecord,
        settle: Settlement | None = None,
    ) -> None:
        self.settle = settle
        self.exchange = exchange
        self.payload = payload
        self.model = model
        self.routes = routes
        self.record = record
        self.stream = payload.get("stream") is True
        options = payload.get("stream_options") or {}
        self.client_wants_usage = self.stream and bool(options.get("include_usage"))
        if self.stream:
            payload["stream_options"] = {**options, "include_usage": True}

    async def run(self) -> None:
        failures: list[AttemptFailed] = []
        board = shared.breakers()
        attempts_left = max(settings.RELAY_MAX_ATTEMPTS, 1)
        try:
            async with asyncio.timeout(settings.RELAY_TOTAL_TIMEOUT):
                for route in attempt_order(self.routes):
                    if attempts_left == 0:
                        break
                    admitted, probe = await board.admit(route.channel_id)
                    if not admitted:
                        continue  # its breaker is open
                    attempts_left -= 1
                    try:
                        await self._attempt(route)
                    except AttemptFailed as failure:
                        failures.append(failure)
                        self.record.attempts.append(failure.attempt)
                        self._report_failure(route, failure)
                        continue
                    except errors.RelayError:
                        if probe:  # the provider answered: the channel itself is fine
                            _background(board.success(route.channel_id))
                        raise
                    if probe:
                        _background(board.success(route.channel_id))
                    return
        except TimeoutError:
            if self.exchange.response_started:
                await self._end_stream_with_error("upstream_timeout", "The upstream timed out.")
                return
            failures.append(
                AttemptFailed(errors.upstream_failed(504, "timeout"), {"error": "timeout"})
            )
        if not failures:
            raise errors.no_channel(self.model.public_id)
        error = _final_error(failures)
        self.record.error_code = error.code or ""
        raise error

    def _report_failure(self, route: Route, failure: AttemptFailed | None) -> None:
        """Count a failure against the channel's breaker, off the client's path."""
        failure_id = f"{self.record.request_id}:{route.channel_id}"
        _background(shared.breakers().failure(route.channel_id, failure_id))
        if failure is not None and failure.credentials:
            status = failure.attempt.get("status")
            _background(
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
            attempt.update(error="timeout", latency_ms=_ms_since(started))
            raise AttemptFailed(errors.upstream_failed(504, "timeout"), attempt) from None

    async def _attempt_on(self, route: Route, attempt: dict[str, Any], started: float) -> None:
        self.payload["model"] = route.upstream_model
        http = upstream.client()
        try:
            content = orjson.dumps(self.payload)
        except orjson.JSONEncodeError:
            raise errors.invalid_request(
                "The request contains a number or string that cannot be sent on: integers "
                "must fit in 64 bits and strings must be valid Unicode."
            ) from None
        request = upstream.request(
            http, route.target, route.headers[self.stream], content, route.timeout
        )
        try:
            response = await http.send(request, stream=True)
        except httpx.TimeoutException:
            attempt.update(error="timeout", latency_ms=_ms_since(started))
            raise AttemptFailed(errors.upstream_failed(504, "timeout"), attempt) from None
        except httpx.HTTPError as exc:
            attempt.update(error=type(exc).__name__, latency_ms=_ms_since(started))
            raise AttemptFailed(errors.upstream_failed(502, "unreachable"), attempt) from None
        attempt.update(status=response.status_code, latency_ms=_ms_since(started))
        try:
            if response.status_code >= 400:
                body = await _read_limited(response, MAX_ERROR_BODY_BYTES)
                error = _upstream_error(response.status_code, body, route)
                if response.status_code in RETRYABLE_STATUSES:
                    raise AttemptFailed(
                        error, attempt, credentials=response.status_code in (401, 403)
                    )
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
                await self._relay_stream(response, route)
            else:
                await self._relay_body(response, route, attempt)
        finally:
            await response.aclose()

    def _note_channel(self, route: Route, started: float) -> None:
        self.record.channel_id = route.channel_id
        self.record.upstream_model = route.upstream_model
        self.record.upstream_latency_ms = _ms_since(started)

    async def _relay_body(
        self, response: httpx.Response, route: Route, attempt: dict[str, Any]
    ) -> None:
        try:
            body = await _read_limited(response, MAX_RESPONSE_BYTES)
            parsed = orjson.loads(body)
        except (errors.RelayError, orjson.JSONDecodeError, httpx.HTTPError) as exc:
            attempt["error"] = "invalid_response"
            raise AttemptFailed(
                errors.upstream_failed(502, "The upstream sent an invalid response."), attempt
            ) from exc
        if not isinstance(parsed, dict) or "error" in parsed or "choices" not in parsed:
            attempt["error"] = "error_body"
            raise AttemptFailed(
                errors.upstream_failed(502, "The upstream sent an error instead of a completion."),
                attempt,
            )
        self.record.attempts.append(attempt)
        parsed["model"] = self.model.public_id
        self.record.usage = Usage.from_openai(parsed.get("usage"))
        if self.record.usage is None:
            self.record.completion_text = []
            self.record.keep_text(_choice_texts(parsed.get("choices")))
        self.record.status_code = 200
        out = orjson.dumps(parsed)
        if self.settle is not None:
            await self.settle()  # recorded before the client has its answer
        await self.exchange.respond_json(200, out)

    async def _relay_stream(self, response: httpx.Response, route: Route) -> None:
        exchange = self.exchange
        record = self.record
        record.status_code = 200
        record.completion_text = []
        public = self.model.public_id
        await exchange.start_stream()
        try:
            async for events in sse.iter_event_batches(response.aiter_bytes(), MAX_EVENT_BYTES):
                # What one upstream read completed goes out in one write.
                out = bytearray()
                for event in events:
                    data = sse.event_data(event)
                    if data is None:
                        out += event + b"\n\n"  # comments keep the line alive
                    elif data == b"[DONE]":
                        if self.settle is not None:
                            await self.settle()  # recorded before the client sees the end
                        out += b"data: [DONE]\n\n"
                    else:
                        try:
                            chunk = self._rewrite_chunk(data, public, route)
                        except ValueError:
                            if out:  # the well-formed events before it still go out
                                await exchange.send_body(bytes(out))
                            raise
                        if chunk is not None:
                            out += b"data: " + chunk + b"\n\n"
                if out:
                    await exchange.send_body(bytes(out))
        except (httpx.HTTPError, ValueError) as exc:
            logger.info("upstream stream broke: %s", type(exc).__name__)
            self._report_failure(route, None)
            await self._end_stream_with_error(
                "upstream_stream_broken", "The upstream connection broke during the response."
            )
            return
        await exchange.end_body()

    def _rewrite_chunk(self, data: bytes, public: str, route: Route) -> bytes | None:
        """The chunk as the client should see it, or None to drop it."""
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise ValueError("malformed stream chunk") from None
        if not isinstance(chunk, dict):
            raise ValueError("malformed stream chunk")
        if "error" in chunk:
            self.record.error_code = "upstream_stream_error"
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            return orjson.dumps(
                errors.upstream_failed(
                    502, _redact(str(message or "upstream error"), route)
                ).payload()
            )
        choices = chunk.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                self.record.keep_text(_delta_texts(choice))
        changed = False
        if chunk.get("model") != public:
            chunk["model"] = public
            changed = True
        usage = chunk.get("usage")
        if usage is not None:
            self.record.usage = Usage.from_openai(usage)
        if not self.client_wants_usage and "usage" in chunk:
            if usage is not None and not choices:
                return None
            if usage is None and not changed:
                stripped = data.replace(_USAGE_NULL, b"", 1)
                if len(stripped) != len(data):
                    return stripped
            del chunk["usage"]
            changed = True
        return orjson.dumps(chunk) if changed else data

    async def _end_stream_with_error(self, code: str, message: str) -> None:
        self.record.completed = False
        self.record.error_code = code
        error = errors.upstream_failed(502, message, code=code)
        with contextlib.suppress(Exception):
            await self.exchange.send_body(b"data: " + error.body() + b"\n\n")
            await self.exchange.end_body()


def _delta_texts(choice: Any) -> list[str]:
    if not isinstance(choice, Mapping):
        return []
    delta = choice.get("delta")
    if not isinstance(delta, Mapping):
        return []
    texts = [
        value
        for name in ("content", "reasoning_content", "refusal")
        if isinstance(value := delta.get(name), str)
    ]
    for call in delta.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            texts.extend(
                v for v in (function.get("name"), function.get("arguments")) if isinstance(v, str)
            )
    return texts


def _choice_texts(choices: Any) -> list[str]:
    texts: list[str] = []
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, Mapping) else None
        if isinstance(message, Mapping):
            texts.extend(_delta_texts({"delta": message}))
    return texts


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


async def handle(exchange: Exchange) -> None:
    key = await exchange.authenticate()
    body = await exchange.read_body()
    payload = parse_request(body)
    cache = exchange.app.cache
    snapshot = await cache.snapshot()
    public = payload["model"]
    model = snapshot.models.get(public)
    if model is None or not key.allows(public):
        raise errors.model_not_found(public)
    price = (await cache.prices(key.tenant_id)).get(public)
    if price is None:
        raise errors.model_not_priced(public)
    routes = tuple(route for route in model.routes if key.allows_group(route.group))
    if not routes:
        raise errors.no_channel(public)
    reservation = spend.reservation(
        key, payload, len(body), price, model.max_output_tokens, cache.generation
    )
    admission, store = await _admit(exchange, key, payload, reservation)
    if store is not None and store is not shared.limit_store():
        reservation = None  # admitted by the fail-open fallback: nothing was held
    record = UsageRecord(
        request_id=exchange.request_id,
        created_at=exchange.created_at,
        tenant_id=key.tenant_id,
        api_key_id=key.id,
        model=public,
        stream=payload.get("stream") is True,
        status_code=0,
        total_latency_ms=0,
        prompt_messages=payload["messages"],
        prompt_tools=payload.get("tools"),
        price=price,
        spend_scopes=reservation.scopes if reservation and admission else (),
    )
    settlement = Settlement(
        exchange, key, admission, reservation if admission else None, record, store
    )
    completion = ChatCompletion(exchange, payload, model, routes, record, settlement)
    try:
        await exchange.until_disconnect(completion.run())
    except errors.RelayError as error:
        record.status_code = error.status
        record.error_code = record.error_code or error.code or ""
        raise
    finally:
        if exchange.disconnected:
            record.completed = False
            record.error_code = "client_disconnected"
            record.status_code = record.status_code or 499
        await settlement()
        metrics.observe_record(record)


async def _admit(
    exchange: Exchange, key: KeyInfo, payload: dict[str, Any], reservation: Reservation | None
) -> tuple[Admission | None, LimitStore | None]:
    """Count the request against the key's and tenant's limits and hold its worst-case
    cost against their money, or refuse it with a 429; returns the admission and the store
    that made it."""
    scopes = key.limit_scopes()
    if not scopes and reservation is None:
        return None, None
    output = payload.get("max_completion_tokens") or payload.get("max_tokens")
    reserved = tokens.estimate_prompt(payload) + (
        output if isinstance(output, int) else settings.RELAY_DEFAULT_RESERVED_OUTPUT_TOKENS
    )
    store = shared.limit_store()
    hold = settings.RELAY_TOTAL_TIMEOUT + 30

    async def acquire(money: Reservation | None) -> Admission:
        return await store.acquire(scopes, exchange.request_id, reserved, hold, money)

    try:
        admission = await spend.admit(store, key, acquire, reservation)
    except RedisError:
        logger.warning("rate limiter unavailable", exc_info=True)
        if not settings.RELAY_LIMITS_FAIL_OPEN:
            raise errors.RelayError(
                503,
                "The gateway cannot check rate limits right now; retry shortly.",
                type="server_error",
                code="limiter_unavailable",
                headers=((b"retry-after", b"1"),),
            ) from None
        # Fail open: this process applies the rate limits on its own (each process allows
        # the full limit) and holds no money; usage is still recorded and charged.
        store = shared.fallback_limit_store()
        admission = await store.acquire(scopes, exchange.request_id, reserved, hold)
    exchange.extra_headers.extend(admission.headers())
    if admission.refused == "funds":
        metrics.observe_limit_rejection("insufficient_quota")
        raise spend.refusal(admission.refused_scope, key.spend.prepaid)
    if not admission.allowed:
        metrics.observe_limit_rejection(admission.refused)
        raise _limit_error(admission)
    return admission, store


def _limit_error(admission: Admission) -> errors.RelayError:
    described = {
        "requests": ("requests per minute", admission.limit_requests),
        "tokens": ("tokens per minute", admission.limit_tokens),
        "concurrency": ("concurrent requests", None),
        "daily_tokens": ("tokens per day", None),
    }[admission.refused]
    limit = f" (limit {described[1]})" if described[1] else ""
    return errors.RelayError(
        429,
        f"Rate limit reached for {described[0]}{limit}. "
        f"Please try again in {admission.retry_after}s.",
        type="tokens" if "tokens" in admission.refused else "requests",
        code="rate_limit_exceeded",
        headers=((b"retry-after", str(admission.retry_after).encode()),),
    )


class Settlement:
    """Ends a request's accounting once, before its last byte goes out where possible:
    frees its limits, settles its tokens and money, and queues its usage event (with
    Redis, all in one atomic step, so no answered request goes unrecorded)."""

    def __init__(
        self,
        exchange: Exchange,
        key: KeyInfo,
        admission: Admission | None,
        reservation: Reservation | None,
        record: UsageRecord,
        store: LimitStore | None = None,
    ) -> None:
        self.exchange = exchange
        self.store = store
        self.key = key
        self.admission = admission
        self.reservation = reservation
        self.record = record
        self.done = False

    async def __call__(self) -> None:
        if self.done:
            return
        self.done = True
        record = self.record
        record.total_latency_ms = self.exchange.elapsed_ms()
        store = self.store or shared.limit_store()
        queued = isinstance(store, RedisLimitStore)
        if not queued and self.admission is None:
            usage_writer.submit(record)
            return
        usage = record.usage
        used = usage.prompt_tokens + usage.completion_tokens if usage is not None else None
        admission = self.admission or Admission(allowed=True, bucket=0, reserved_tokens=0)
        scopes = self.key.limit_scopes() if self.admission is not None else []
        try:
            await store.release(
                scopes,
                record.request_id,
                admission,
                used,
                self.reservation,
                record.known_cost() if self.reservation is not None else None,
                record.to_json() if queued else b"",
            )
        except RedisError:
            logger.warning("settling request %s in Redis failed", record.request_id, exc_info=True)
            queued = False
        if queued:
            usage_writer.start_draining()
        else:
            # Embedded mode, or Redis failed us: this process writes the event itself.
            usage_writer.submit(record)


def channel_suspend(*, channel_id: int, reason: str) -> None:
    from portal.services import channel_suspend as suspend

    suspend(channel_id=channel_id, reason=reason)
