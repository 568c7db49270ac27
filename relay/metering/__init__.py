"""Metering: turn what the upstream reported into counts, and write usage events.

With Redis, a finished request's usage record is queued in Redis in the same atomic step
that settles its limits and money (``relay.limits``), before the last byte of its
response is sent; a writer thread in every relay process claims batches from that queue,
writes them to the database and only then confirms them, so a process killed at any
point loses nothing it answered, and a database outage only lengthens the queue. An
event is written once however often its batch is retried (``request_id`` is unique). A
record that cannot be read or built goes to a dead-letter list instead of failing its
batch for ever (``manage.py usage_dead_letters``).

Without Redis (the embedded mode) records go to an in-process queue and the same kind of
thread. Where the upstream reported no usage, the writer thread has the counts made with
the bundled tokenizer (in a child process, ``relay.tokens``) and the event is marked
estimated.
"""

from relay.metering.events import write_events
from relay.metering.records import MAX_KEPT_TEXT_CHARS, MAX_PENDING_EVENTS, Usage, UsageRecord
from relay.metering.writer import RedisUsageQueue, UsageWriter, usage_writer

__all__ = [
    "MAX_KEPT_TEXT_CHARS",
    "MAX_PENDING_EVENTS",
    "RedisUsageQueue",
    "Usage",
    "UsageRecord",
    "UsageWriter",
    "usage_writer",
    "write_events",
]
