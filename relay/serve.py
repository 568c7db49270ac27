"""The format-agnostic core of a relayed request: authenticate, resolve the model, admit
(limits and the money reservation), forward (``relay.forward``), settle, record.

Every dialect (``relay.dialects``) goes through ``handle``; none adds a query or a Redis
round trip to this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError

from relay import errors, metrics, orphans, outage, shared, spend
from relay.ahead import Gate, Refused
from relay.dialects.base import Call, Dialect
from relay.exchange import Exchange
from relay.forward import Forwarding
from relay.intake import admit, intake_body, intake_release
from relay.limits import Admission, LimitStore, RedisLimitStore, Reservation
from relay.metering import UsageRecord, usage_writer
from relay.snapshot import KeyInfo, ModelInfo, Route

logger = logging.getLogger(__name__)


def surface_refused(surface: str) -> errors.RelayError:
    return errors.RelayError(
        403,
        f"This API key may not be used for the {surface} API.",
        type="permission_error",
        code="surface_not_allowed",
    )


async def resolve(
    exchange: Exchange, key: KeyInfo, surface: str, public: str
) -> tuple[ModelInfo, Any, tuple[Route, ...]]:
    """The model, its price for the tenant and the routes the key may use; or a refusal."""
    cache = exchange.app.cache
    snapshot = await cache.snapshot()
    model = snapshot.models.get(public)
    if model is None or not key.allows(public):
        raise errors.model_not_found(public)
    if surface not in model.surfaces:
        raise errors.invalid_request(
            f"The model `{public}` is not available on the {surface} API.",
            param="model",
            code="model_not_supported",
        )
    price = (await cache.prices(key.tenant_id)).at(public, exchange.created_at)
    if price is None:
        raise errors.model_not_priced(public)
    routes = tuple(route for route in model.routes if key.allows_route(route))
    if not routes:
        if model.routes:  # none this key may use: to it, the model is not here
            raise errors.model_not_found(public)
        raise errors.no_channel(public)
    return model, price, routes


async def handle(exchange: Exchange, dialect: Dialect) -> None:
    exchange.anthropic = dialect.anthropic
    key = await exchange.authenticate()
    if not key.allows_surface(dialect.surface):
        raise surface_refused(dialect.surface)
    taken = await intake_body(exchange, key, max_bytes=settings.RELAY_MAX_BODY_BYTES)
    ahead = exchange.app.ahead
    gate: Gate | None = None
    try:
        payload = dialect.parse(taken.body)
        body_bytes = len(taken.body)
        taken.body = b""  # parsed: the raw bytes need not stay in memory
        call = dialect.begin(payload, exchange)
        public = payload["model"]
        model, price, routes = await resolve(exchange, key, dialect.surface, public)
        routes = call.restrict(routes, key.tenant_id)
        searches = call.web_searches()
        if searches:
            spend.check_searches(searches, price)
        generation = exchange.app.cache.generation
        reservation = spend.reservation(
            key,
            call.output_tokens(model.max_output_tokens),
            body_bytes,
            price,
            generation,
            public,
            input_images=call.input_images(),
            generates_images=call.generates_images(),
            web_searches=searches,
            fetched_tokens=call.fetched_tokens(),
        )
        record = UsageRecord(
            request_id=exchange.request_id,
            created_at=exchange.created_at,
            tenant_id=key.tenant_id,
            api_key_id=key.id,
            model=public,
            surface=dialect.surface,
            stream=call.stream,
            status_code=0,
            total_latency_ms=0,
            price=price,
            input_images=call.input_images(),
        )
        settlement = Settlement(exchange, key, None, reservation, record, None, call)
        tokens = call.limit_tokens()
        micros = reservation.worst_micros if reservation is not None else 0
        leased = None
        if taken.pre is None:
            leased = exchange.app.leases.take(
                key.id, tokens, reservation, generation, shared.limit_store()
            )
        if leased is not None:  # admitted already, by the key's lease (relay.leases)
            exchange.request_id = record.request_id = leased[2]
            metrics.request_id.set(leased[2])
            settlement.reservation = leased[3]
            exchange.extra_headers.extend(leased[0].headers())
            settlement.admitted(leased[0], leased[1])
        elif (
            taken.pre is None
            and settings.RELAY_FORWARD_AHEAD
            and ahead.take(key.id, tokens, micros, generation)
        ):
            gate = _gate(exchange, key, settlement, tokens, micros, generation)
        else:
            admission, store = await admit(exchange, key, tokens, reservation, taken.pre)
            if taken.pre is None:
                ahead.note(key.id, key.tenant_id, admission, generation)
            else:  # admitted in two parts, neither of which measured the whole room
                ahead.forget(key.id)
            settlement.admitted(admission, store)
    except BaseException:
        ahead.forget(key.id)
        await intake_release(exchange, key, taken.pre)
        raise
    forwarding = Forwarding(exchange, dialect, call, model, routes, record, settlement, gate)
    try:
        try:
            await exchange.until_disconnect(forwarding.run())
        except errors.RelayError as error:
            if gate is not None:
                await gate.wait()  # refused meanwhile: that is the answer
            record.status_code = error.status
            record.error_code = record.error_code or error.code or ""
            raise
    except Refused as refused:
        if gate is not None and gate.sent:
            metrics.observe_ahead("refused")
            logger.info(
                "request %s went upstream ahead of its admission and was refused: %s",
                record.request_id,
                refused.error,
            )
        raise refused.error from None
    finally:
        if gate is not None and not gate.passed and gate.refusal is None:
            with contextlib.suppress(Refused):
                await gate.wait()  # the request ended first: its slot and hold need it
        if gate is None or gate.passed:
            if exchange.disconnected:
                record.completed = False
                record.error_code = "client_disconnected"
                record.status_code = record.status_code or 499
            await settlement()
            await settlement.finished()
            metrics.observe_record(record)


def _gate(
    exchange: Exchange,
    key: KeyInfo,
    settlement: Settlement,
    tokens: int,
    micros: int,
    generation: int,
) -> Gate:
    """Start the request's admission and go on without it (``relay.ahead``)."""
    ahead = exchange.app.ahead

    def admitted(admission: Admission | None, store: LimitStore | None) -> None:
        ahead.back(key.tenant_id, tokens, micros)
        ahead.note(key.id, key.tenant_id, admission, generation)
        settlement.admitted(admission, store)
        metrics.observe_ahead("admitted" if gate.sent else "not_sent")

    def refused(error: BaseException) -> None:
        ahead.back(key.tenant_id, tokens, micros)
        ahead.forget(key.id)

    work = admit(exchange, key, tokens, settlement.reservation, None)
    gate = Gate(asyncio.ensure_future(work), admitted, refused)
    return gate


class Settlement:
    """Ends a request's accounting once, before its last byte goes out where possible:
    frees its limits, settles its tokens and money, and queues its usage event (with
    Redis, all in one atomic step, sent before the answer's last bytes, so no answered
    request goes unrecorded)."""

    def __init__(
        self,
        exchange: Exchange,
        key: KeyInfo,
        admission: Admission | None,
        reservation: Reservation | None,
        record: UsageRecord,
        store: LimitStore | None = None,
        call: Call | None = None,
    ) -> None:
        self.exchange = exchange
        self.store = store
        self.key = key
        self.admission = admission
        self.reservation = reservation
        self.record = record
        self.call = call
        self.done = False
        self.progress: orphans.Progress | None = None
        self._settling: asyncio.Future[None] | None = None

    def admitted(self, admission: Admission | None, store: LimitStore | None) -> None:
        """What the request's admission decided (``relay.intake.admit``): nothing is held
        when it was not admitted in Redis (the fail-open fallback holds no money)."""
        self.admission = admission
        self.store = store
        if admission is None or (store is not None and store is not shared.limit_store()):
            self.reservation = None
        if self.reservation is not None:
            self.record.spend_scopes = self.reservation.scopes

    def track_stream(self) -> orphans.Progress | None:
        """Keep the stream's progress in Redis, so that a sweeper can bill it should this
        process die before it settles (``relay.orphans``)."""
        store = self.store or shared.limit_store()
        if not isinstance(store, RedisLimitStore) or self.done:
            return None
        admission = self.admission
        self.progress = orphans.Progress(
            store,
            self.record,
            self.key.limit_scopes() if admission is not None else [],
            admission.bucket if admission is not None else 0,
            self.reservation,
            prompt=self.call.count_material() if self.call is not None else (None, None),
            reserved_tokens=admission.reserved_tokens if admission is not None else 0,
        )
        self.progress.delivered()  # its first mark is due RELAY_PROGRESS_FIRST_MARK_SECONDS on
        return self.progress

    async def __call__(self) -> None:
        """Settle, and return once the settlement is on its way to Redis: what follows
        (the answer's last bytes) may go out before Redis has replied. ``finished``
        waits for the reply."""
        if self.done:
            return
        self.done = True
        record = self.record
        open_keys = None
        if self.progress is not None:
            await self.progress.close()
            if self.progress.attempted:
                open_keys = self.progress.open_keys()
        record.total_latency_ms = self.exchange.elapsed_ms()
        if record.usage is None and self.call is not None:
            # Only a request left without usage carries its prompt, to be counted locally.
            record.prompt_messages, record.prompt_tools = self.call.count_material()
        store = self.store or shared.limit_store()
        if not isinstance(store, RedisLimitStore):
            if self.admission is not None:
                await self._release(store, b"", open_keys)
            usage_writer.submit(record)  # embedded mode: this process writes the event
            return
        written = asyncio.get_running_loop().create_future()
        self._settling = asyncio.ensure_future(self._settle(store, open_keys, written))
        # Sent in this turn's write to Redis, ahead of the answer's end on the client's
        # connection: the client's next request (on any relay process) is admitted after
        # it, and a process that dies now has handed it to the kernel already. A waiter
        # cancelled here cancels only ``written``: the settlement goes on (``finished``).
        await written

    async def finished(self) -> None:
        """Wait for Redis's reply to the settlement (and for the fallback write, if it
        failed); nothing to wait for without Redis."""
        if self._settling is not None:
            await asyncio.shield(self._settling)

    async def _settle(
        self,
        store: RedisLimitStore,
        open_keys: list[str] | None,
        written: asyncio.Future[None],
    ) -> None:
        record = self.record
        try:
            settled = await self._release(store, record.to_json(), open_keys, written)
        except RedisError as exc:
            outage.redis.failed(f"settling request {record.request_id}", exc)
            # Redis failed us: this process writes the event itself.
            usage_writer.submit(record)
            return
        finally:
            if not written.done():
                written.set_result(None)
        if not settled:  # a sweeper took this process for dead and billed the stream
            logger.warning("request %s was settled as cut meanwhile", record.request_id)
            return
        usage_writer.start_draining()
        orphans.sweeper.start()  # every relay process watches for others' lost streams

    async def _release(
        self,
        store: LimitStore,
        event: bytes,
        open_keys: list[str] | None,
        written: asyncio.Future[None] | None = None,
    ) -> bool:
        """Free the request's limits, settle its tokens and money, and (``event``) queue
        its usage event: one atomic step in Redis."""
        record = self.record
        usage = record.usage
        used = usage.prompt_tokens + usage.completion_tokens if usage is not None else None
        admission = self.admission or Admission(allowed=True, bucket=0, reserved_tokens=0)
        scopes = self.key.limit_scopes() if self.admission is not None else []
        cost = record.known_cost() if self.reservation is not None else None
        args = (scopes, record.request_id, admission, used, self.reservation, cost)
        if isinstance(store, RedisLimitStore):
            return await store.release(*args, event, open_keys, written=written)
        return await store.release(*args, event, open_keys)
