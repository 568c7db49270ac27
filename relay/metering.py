"""Metering: turn what the upstream reported into counts, and write usage events.

Events are handed to a per-process background thread that writes them in batches after
the response has gone out, so the client never waits for the database. Where the
upstream reported no usage, the counts are made in that thread with the bundled
tokenizer and the event is marked estimated.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, close_old_connections

from billing.pricing import PricePair, event_cost_fields
from relay import tokens

logger = logging.getLogger(__name__)

# Events kept in memory while the database refuses writes; beyond this the oldest are
# dropped (and logged) rather than let a long outage exhaust the process's memory.
MAX_PENDING_EVENTS = 100_000


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Any) -> Usage | None:
        if not isinstance(usage, Mapping):
            return None
        prompt_details = usage.get("prompt_tokens_details") or {}
        completion_details = usage.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=_count(usage.get("prompt_tokens")),
            completion_tokens=_count(usage.get("completion_tokens")),
            cached_tokens=_count(_get(prompt_details, "cached_tokens")),
            reasoning_tokens=_count(_get(completion_details, "reasoning_tokens")),
        )


def _get(mapping: Any, name: str) -> Any:
    return mapping.get(name) if isinstance(mapping, Mapping) else None


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(slots=True)
class UsageRecord:
    request_id: str
    created_at: datetime
    tenant_id: int
    api_key_id: int
    model: str
    stream: bool
    status_code: int
    total_latency_ms: int
    channel_id: int | None = None
    upstream_model: str = ""
    error_code: str = ""
    completed: bool = True
    upstream_latency_ms: int | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage | None = None
    # The prices in force when the request arrived, kept on the event with its cost.
    price: PricePair | None = None
    # Material for local counting when the upstream sent no usage: the request's messages
    # and tools, and the text delivered to the client.
    prompt_messages: Any = None
    prompt_tools: Any = None
    completion_text: list[str] | None = None

    def counts(self) -> tuple[Usage, bool]:
        """The token counts to bill, and whether they are estimated."""
        if self.usage is not None:
            return self.usage, False
        if self.status_code >= 400 and not self.completion_text:
            return Usage(), False  # nothing reached a model that we know of
        prompt = tokens.count_prompt(self.prompt_messages or (), self.prompt_tools)
        completion = tokens.count_text("".join(self.completion_text or ()))
        return Usage(prompt_tokens=prompt, completion_tokens=completion), True

    def to_event_fields(self) -> dict[str, Any]:
        usage, estimated = self.counts()
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "tenant_id": self.tenant_id,
            "api_key_id": self.api_key_id,
            "model": self.model,
            "channel_id": self.channel_id,
            "upstream_model": self.upstream_model,
            "stream": self.stream,
            "status_code": self.status_code,
            "error_code": self.error_code,
            "completed": self.completed,
            "upstream_latency_ms": self.upstream_latency_ms,
            "total_latency_ms": self.total_latency_ms,
            "attempts": self.attempts,
            "estimated": estimated,
            **asdict(usage),
            **event_cost_fields(
                self.price,
                prompt_tokens=usage.prompt_tokens,
                cached_tokens=usage.cached_tokens,
                completion_tokens=usage.completion_tokens,
                reasoning_tokens=usage.reasoning_tokens,
            ),
        }


class UsageWriter:
    """Writes usage events in batches from a daemon thread."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[UsageRecord] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._submitted = 0
        self._written = 0
        self._progress = threading.Condition()

    def submit(self, record: UsageRecord) -> None:
        if self._thread is None:
            self._start()
        with self._progress:
            self._submitted += 1
        self._queue.put(record)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written; True if it was in time."""
        with self._progress:
            target = self._submitted
            return self._progress.wait_for(lambda: self._written >= target, timeout=timeout)

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tollgate-usage-writer", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        pending: list[UsageRecord] = []
        while True:
            interval = settings.RELAY_USAGE_FLUSH_SECONDS
            if not pending:
                pending.append(self._queue.get())  # sleep until there is something to write
            # Gather what arrives within one interval of the first event into one batch.
            deadline = time.monotonic() + interval
            while len(pending) < settings.RELAY_USAGE_BATCH_SIZE:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    pending.append(self._queue.get(timeout=remaining))
                except queue.Empty:
                    break
            try:
                self._write(pending)
            except Exception:
                logger.exception("writing %d usage events failed; will retry", len(pending))
                if len(pending) > MAX_PENDING_EVENTS:
                    dropped = len(pending) - MAX_PENDING_EVENTS
                    logger.error("dropping %d usage events after a long outage", dropped)
                    del pending[:dropped]
                    self._mark_written(dropped)
                time.sleep(min(interval * 4, 2.0))
                continue
            self._mark_written(len(pending))
            pending = []

    def _mark_written(self, count: int) -> None:
        with self._progress:
            self._written += count
            self._progress.notify_all()

    def _write(self, records: list[UsageRecord]) -> None:
        from billing.models import UsageEvent

        close_old_connections()
        events = [UsageEvent(**record.to_event_fields()) for record in records]
        # Idempotent on request_id, so a retry after an ambiguous failure writes no twin.
        try:
            UsageEvent.objects.bulk_create(events, ignore_conflicts=True)
        except IntegrityError:
            # One event points at a row that no longer exists; keep all the others.
            for event in events:
                try:
                    UsageEvent.objects.bulk_create([event], ignore_conflicts=True)
                except IntegrityError:
                    logger.error("usage event %s refused by the database", event.request_id)


usage_writer = UsageWriter()
