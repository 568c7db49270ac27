"""The relay's observability behind a small API: Prometheus metrics and log context.

The hot path calls ``observe_record`` (once per chat completion): it adds to plain
Python counts of the request's label set (a dictionary lookup and a few increments, no
lock, no I/O), which are folded into prometheus-client's metrics ``FOLD_SECONDS`` (0.5 s)
after the first count since the last fold, before this process renders ``GET /metrics``,
and at shutdown. ``observe_limit_rejection`` (rare) counts directly. ``GET /metrics``
(served by the lean relay app) renders them, plus two values read at scrape time only:
the channels' breaker states and the Celery queue depth.

Several worker processes: set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory, the
same for every worker of a server, before it starts (prometheus-client's multiprocess
mode). Each worker then writes its samples to memory-mapped files there and a scrape of
any worker sums them all: every count of the worker that answers the scrape, and the
other workers' as of their last fold, at most ``FOLD_SECONDS`` behind. Without it each
process keeps its own registry, which is right for a single worker (and the tests).

``request_id`` carries the current request's id to every log record (``RequestIdFilter``),
so the JSON logs (``LOG_FORMAT=json``) can be joined with usage events and responses. Both
live in ``relay.logcontext``, which the logging configuration names, and are re-exported.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

from relay import outage

# Re-exported: the relay sets metrics.request_id; tools add metrics.RequestIdFilter.
from relay.logcontext import RequestIdFilter as RequestIdFilter
from relay.logcontext import request_id as request_id

if TYPE_CHECKING:
    from collections.abc import Iterator

    from relay.exchange import Exchange
    from relay.metering import UsageRecord

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("relay.access")


MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
REGISTRY = CollectorRegistry(auto_describe=True)
# Seconds: from a cached one-token answer to a long stream.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "tollgate_requests",
    "Chat completions relayed, by public model, channel id (empty: none reached) and status.",
    ("model", "channel", "status"),
    registry=REGISTRY,
)
LATENCY = Histogram(
    "tollgate_request_duration_seconds",
    "Whole request as the relay saw it, to the last byte of the response.",
    ("model", "stream"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
UPSTREAM_LATENCY = Histogram(
    "tollgate_upstream_latency_seconds",
    "From sending to the upstream until its response headers, for the channel that answered.",
    ("model", "channel"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "tollgate_tokens",
    "Tokens the upstreams reported (counts estimated locally are on the usage events only).",
    ("model", "kind"),
    registry=REGISTRY,
)
SPEND = Counter(
    "tollgate_spend_micros",
    "Retail cost of the requests, in micro-units of the currency.",
    ("model", "currency"),
    registry=REGISTRY,
)
SURFACE_REQUESTS = Counter(
    "tollgate_surface_requests",
    "Requests relayed per client API (chat, responses, messages, embeddings, completions) "
    "and status.",
    ("surface", "status"),
    registry=REGISTRY,
)
LIMIT_REJECTIONS = Counter(
    "tollgate_limit_rejections",
    "Requests refused with a 429 by a key's or tenant's limit, by the limit that refused.",
    ("limit",),
    registry=REGISTRY,
)

AHEAD = Counter(
    "tollgate_ahead_requests",
    "Requests of limited keys that went on before their admission returned "
    "(relay.ahead), by outcome: admitted (sent upstream first), not_sent (admitted before "
    "the upstream call went out), refused (sent upstream, then refused and cut).",
    ("outcome",),
    registry=REGISTRY,
)

LEASED = Counter(
    "tollgate_leased_admissions",
    "Request ids admitted by leases of busy keys (relay.leases), by outcome: leased "
    "(counted in Redis beside the admission that asked), taken (by a request, without a "
    "round trip), given_back (not taken in time, uncounted).",
    ("outcome",),
    registry=REGISTRY,
)

# Counting is plain Python: each request adds to its label set's tally, and the tallies are
# folded into prometheus-client's values, which take a lock and, in multiprocess mode, write
# to a memory-mapped file on every increment, once per interval. The event loop's thread is
# the only one that counts, so the tallies need no lock.
FOLD_SECONDS = 0.5
# Histogram buckets' upper bounds as prometheus-client keeps them (+Inf last): an
# observation goes to the first bound it does not exceed, as ``Histogram.observe`` puts it.
_BOUNDS = (*(float(bound) for bound in LATENCY_BUCKETS), math.inf)
if getattr(LATENCY, "_upper_bounds", None) != list(_BOUNDS):
    raise RuntimeError(
        "prometheus-client's Histogram layout changed: relay.metrics folds counts into its "
        "buckets (_fold_histogram); check it against the installed version"
    )


class _Tally:
    """One label set's counts since the last fold, and the children they fold into."""

    __slots__ = (
        "children",
        "completion",
        "latency",
        "latency_sum",
        "prompt",
        "requests",
        "spend",
        "upstream",
        "upstream_count",
        "upstream_sum",
    )

    def __init__(self, children: tuple[Any, ...]) -> None:
        self.children = children
        self.requests = self.prompt = self.completion = self.spend = self.upstream_count = 0
        self.latency = [0] * len(_BOUNDS)
        self.upstream = [0] * len(_BOUNDS)
        self.latency_sum = self.upstream_sum = 0.0

    def fold(self) -> None:
        """Add the counts to the children and start again from zero (before adding, so
        that a failing write cannot leave them to be added twice)."""
        requests, latency, upstream, prompt, completion, spend, surface = self.children
        counted, tokens_in, tokens_out, cost = (
            self.requests,
            self.prompt,
            self.completion,
            self.spend,
        )
        latency_sum, upstream_count, upstream_sum = (
            self.latency_sum,
            self.upstream_count,
            self.upstream_sum,
        )
        latencies, upstreams = self.latency, self.upstream
        self.requests = self.prompt = self.completion = self.spend = self.upstream_count = 0
        self.latency = [0] * len(_BOUNDS)
        self.upstream = [0] * len(_BOUNDS)
        self.latency_sum = self.upstream_sum = 0.0
        requests.inc(counted)
        if surface is not None:
            surface.inc(counted)
        _fold_histogram(latency, latencies, latency_sum)
        if upstream_count:
            _fold_histogram(upstream, upstreams, upstream_sum)
        if tokens_in:
            prompt.inc(tokens_in)
        if tokens_out:
            completion.inc(tokens_out)
        if cost:
            spend.inc(cost)


def _fold_histogram(histogram: Any, counts: list[int], total: float) -> None:
    """Add a tally's observations to a histogram child: its sum, and each bucket's count.

    prometheus-client has no public call for several observations at once; its children
    keep ``_sum`` and one value per bucket in ``_buckets`` (not cumulative), as
    ``Histogram.observe`` increments them. ``tests/relay/test_metrics.py`` checks that a
    fold renders exactly as the same observations made one by one."""
    histogram._sum.inc(total)
    buckets = histogram._buckets
    for index, count in enumerate(counts):
        if count:
            buckets[index].inc(count)


# Label set (model, channel, status, stream, currency, surface) -> its tally.
_tallies: dict[tuple[Any, ...], _Tally] = {}
# The tallies holding counts not folded yet, and the timer that will fold them.
_dirty: list[_Tally] = []
_fold: asyncio.TimerHandle | None = None
# Requests ahead of their admission, and leased ids, by outcome, not folded yet.
_ahead: dict[str, int] = {}
_leased: dict[str, int] = {}
# The loop that timer runs on: should it stop without the app's shutdown (tests do), the
# next count schedules the fold on the loop counting then.
_fold_loop: asyncio.AbstractEventLoop | None = None


def _tally_of(key: tuple[Any, ...]) -> _Tally:
    model, channel, status, stream, currency, surface = key
    channel = "" if channel is None else str(channel)
    tally = _tallies[key] = _Tally(
        (
            REQUESTS.labels(model, channel, str(status)),
            LATENCY.labels(model, "true" if stream else "false"),
            UPSTREAM_LATENCY.labels(model, channel),
            TOKENS.labels(model, "prompt"),
            TOKENS.labels(model, "completion"),
            SPEND.labels(model, currency),
            None if surface is None else SURFACE_REQUESTS.labels(surface, str(status)),
        )
    )
    return tally


def flush() -> None:
    """Fold every tally into prometheus-client's values. Runs FOLD_SECONDS after the first
    count since the last fold, before this process renders /metrics, and at shutdown."""
    global _fold
    if _fold is not None:
        _fold.cancel()
        _fold = None
    if _ahead:
        counts = list(_ahead.items())
        _ahead.clear()
        for outcome, count in counts:
            AHEAD.labels(outcome).inc(count)
    if _leased:
        counts = list(_leased.items())
        _leased.clear()
        for outcome, count in counts:
            LEASED.labels(outcome).inc(count)
    if not _dirty:
        return
    tallies = _dirty[:]
    _dirty.clear()
    for tally in tallies:
        tally.fold()


def _fold_soon() -> None:
    global _fold, _fold_loop
    if _fold is not None:
        _fold.cancel()  # a timer on a loop that no longer runs
        _fold = None
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # counted outside an event loop (a script): no timer to wait for
        flush()
    else:
        _fold, _fold_loop = loop.call_later(FOLD_SECONDS, flush), loop


def _count(
    key: tuple[Any, ...],
    latency_s: float,
    upstream_latency_s: float | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost_micros: int,
) -> None:
    tally = _tallies.get(key) or _tally_of(key)
    if not tally.requests:
        _dirty.append(tally)
    tally.requests += 1
    tally.latency[bisect_left(_BOUNDS, latency_s)] += 1
    tally.latency_sum += latency_s
    if upstream_latency_s is not None:
        tally.upstream[bisect_left(_BOUNDS, upstream_latency_s)] += 1
        tally.upstream_sum += upstream_latency_s
        tally.upstream_count += 1
    tally.prompt += prompt_tokens
    tally.completion += completion_tokens
    tally.spend += cost_micros
    if _fold is None or _fold_loop is None or not _fold_loop.is_running():
        _fold_soon()


def enabled() -> bool:
    return bool(settings.RELAY_METRICS)


def observe_request(
    *,
    model: str,
    channel: str,
    status: int,
    stream: bool,
    latency_s: float,
    upstream_latency_s: float | None,
    prompt_tokens: int,
    completion_tokens: int,
    cost_micros: int,
    currency: str = "",
) -> None:
    """Count one finished chat completion (without its surface)."""
    if settings.RELAY_METRICS:
        _count(
            (model, channel or None, status, stream, currency, None),
            latency_s,
            upstream_latency_s,
            prompt_tokens,
            completion_tokens,
            cost_micros,
        )


def observe_record(record: UsageRecord) -> None:
    """Count one finished chat completion from its usage record (and log it, when the
    ``relay.access`` logger is on)."""
    counting = settings.RELAY_METRICS
    logging_on = access_logger.isEnabledFor(logging.INFO)
    if not counting and not logging_on:
        return
    usage = record.usage
    prompt = completion = cost = 0
    currency = ""
    if usage is not None:
        prompt, completion = usage.prompt_tokens, usage.completion_tokens
        if record.price is not None:
            cost = record.known_cost() or 0
            currency = record.price.retail.currency
    upstream_ms = record.upstream_latency_ms
    if counting:
        _count(
            (
                record.model,
                record.channel_id,
                record.status_code,
                record.stream,
                currency,
                record.surface,
            ),
            record.total_latency_ms / 1000,
            None if upstream_ms is None else upstream_ms / 1000,
            prompt,
            completion,
            cost,
        )
    if logging_on:
        access_logger.info(
            "chat completion",
            extra={
                "request_id": record.request_id,
                "tenant_id": record.tenant_id,
                "api_key_id": record.api_key_id,
                "model": record.model,
                "surface": record.surface,
                "channel_id": record.channel_id,
                "status": record.status_code,
                "error_code": record.error_code,
                "stream": record.stream,
                "latency_ms": record.total_latency_ms,
                "upstream_latency_ms": upstream_ms,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "attempts": len(record.attempts),
            },
        )


def observe_limit_rejection(limit: str) -> None:
    """A request refused by a limit: ``requests``, ``tokens``, ``concurrency``..."""
    if settings.RELAY_METRICS:
        LIMIT_REJECTIONS.labels(limit).inc()


def observe_lease(outcome: str, count: int = 1) -> None:
    """Leased request ids: ``leased``, ``taken``, ``given_back`` (tallied, and folded
    with the others)."""
    if not settings.RELAY_METRICS:
        return
    _leased[outcome] = _leased.get(outcome, 0) + count
    if _fold is None or _fold_loop is None or not _fold_loop.is_running():
        _fold_soon()


def observe_ahead(outcome: str) -> None:
    """A request that went ahead of its admission: ``admitted``, ``not_sent``, ``refused``
    (tallied, and folded with the others)."""
    if not settings.RELAY_METRICS:
        return
    _ahead[outcome] = _ahead.get(outcome, 0) + 1
    if _fold is None or _fold_loop is None or not _fold_loop.is_running():
        _fold_soon()


# --- GET /metrics -----------------------------------------------------------------------


BREAKER_CLOSED, BREAKER_OPEN, BREAKER_HALF_OPEN = 0, 1, 2


class _ScrapeTimeValues:
    """Gauges measured when scraped (from this process), not kept between scrapes."""

    def __init__(
        self,
        breakers: list[tuple[str, str, int]],
        queues: dict[str, int] | None,
        usage: tuple[int, int] | None = None,
    ) -> None:
        self.breakers = breakers
        self.queues = queues
        self.usage = usage

    def collect(self) -> Iterator[GaugeMetricFamily]:
        breaker = GaugeMetricFamily(
            "tollgate_channel_breaker_state",
            "Circuit breaker of each routed channel: 0 closed, 1 open, 2 half-open (cool-down "
            "over, waiting for a probe).",
            labels=("channel", "channel_name"),
        )
        for channel, name, state in self.breakers:
            breaker.add_metric((channel, name), state)
        yield breaker
        if self.queues is not None:
            depth = GaugeMetricFamily(
                "tollgate_celery_queue_length",
                "Tasks waiting in the Celery broker, by queue.",
                labels=("queue",),
            )
            for queue, length in self.queues.items():
                depth.add_metric((queue,), length)
            yield depth
        if self.usage is not None:
            queued, dead = self.usage
            yield GaugeMetricFamily(
                "tollgate_usage_queue_length",
                "Usage records of finished requests waiting in Redis to be written.",
                value=queued,
            )
            yield GaugeMetricFamily(
                "tollgate_usage_dead_letters",
                "Usage records set aside because they could not be built or read (their "
                "requests are unbilled until requeued: manage.py usage_dead_letters).",
                value=dead,
            )


async def _breaker_states(exchange: Exchange) -> list[tuple[str, str, int]]:
    from relay import shared

    snapshot = await exchange.app.cache.snapshot()
    channels = {
        route.channel_id: route.channel_name
        for model in snapshot.models.values()
        for route in model.routes
    }
    try:
        open_until = await shared.breakers().store.states()
    except Exception as exc:  # Redis down: report what this process last saw
        outage.redis.failed("reading breaker states for /metrics", exc)
        open_until = {}
    now = time.time()
    states = []
    for channel_id in sorted(set(channels) | set(open_until)):
        until = open_until.get(channel_id)
        if until is None:
            state = BREAKER_CLOSED
        else:
            state = BREAKER_OPEN if until > now else BREAKER_HALF_OPEN
        states.append((str(channel_id), channels.get(channel_id, ""), state))
    return states


async def _queue_lengths() -> dict[str, int] | None:
    """Lengths of the Celery queues in a Redis broker; None with any other broker."""
    broker = str(getattr(settings, "CELERY_BROKER_URL", "") or "")
    if not broker.startswith(("redis://", "rediss://", "unix://")):
        return None
    import redis.asyncio as aioredis

    queue = str(getattr(settings, "CELERY_TASK_DEFAULT_QUEUE", "celery"))
    client = aioredis.Redis.from_url(
        broker,
        socket_connect_timeout=settings.RELAY_REDIS_TIMEOUT,
        socket_timeout=settings.RELAY_REDIS_TIMEOUT,
    )
    try:
        return {queue: int(await client.llen(queue))}
    except Exception as exc:
        outage.redis.failed("reading the Celery queue length for /metrics", exc)
        return None
    finally:
        await client.aclose()


async def _usage_lengths() -> tuple[int, int] | None:
    """Usage records queued and set aside in Redis; None without Redis, or if it is away."""
    from relay import shared
    from relay.limits import usage_queue_key
    from relay.metering.writer import dead_letters_key

    client = shared.redis_client()
    if client is None:
        return None
    prefix = shared.limit_prefix()
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.llen(usage_queue_key(prefix))
            pipe.llen(dead_letters_key(prefix))
            queued, dead = await pipe.execute()
    except Exception as exc:
        outage.redis.failed("reading the usage queue's length for /metrics", exc)
        return None
    return int(queued), int(dead)


async def respond(exchange: Exchange) -> None:
    """Answer ``GET /metrics`` in Prometheus' text format."""
    if not settings.RELAY_METRICS:
        await exchange.respond_json(404, b'{"error": "metrics are turned off"}')
        return
    flush()  # this process's counts up to now, in what the scrape reads
    live = CollectorRegistry(auto_describe=True)
    live.register(
        _ScrapeTimeValues(
            await _breaker_states(exchange), await _queue_lengths(), await _usage_lengths()
        )
    )
    if MULTIPROCESS:
        counted = CollectorRegistry()
        multiprocess.MultiProcessCollector(counted)
    else:
        counted = REGISTRY
    body = generate_latest(counted) + generate_latest(live)
    exchange.response_started = True
    await exchange.send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", CONTENT_TYPE_LATEST.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await exchange.send({"type": "http.response.body", "body": body})
