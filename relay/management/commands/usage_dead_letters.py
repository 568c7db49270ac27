"""``manage.py usage_dead_letters``: the usage records the writer could not write.

A queued usage record that cannot be read, or whose event cannot be built (a fault in the
relay's own code, never the database's: see ``relay.metering.write_events``), is kept on a
dead-letter list in Redis rather than holding up every other tenant's usage. This lists
them; ``--requeue``, once the fault is fixed, puts them back on the usage queue, where the
writer takes them like any other (an event already written is not written twice).
"""

from __future__ import annotations

from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from relay.metering import RedisUsageQueue, UsageRecord

SHOWN = 20


class Command(BaseCommand):
    help = "List the usage records set aside as unwritable, or put them back on the queue."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "--requeue",
            action="store_true",
            help="Move every set-aside record back onto the usage queue.",
        )

    def handle(self, *args: Any, requeue: bool, **options: Any) -> None:
        if not settings.REDIS_URL:
            raise CommandError(
                "No REDIS_URL: without Redis a record that cannot be written is logged whole "
                "('usage record set aside: ...') instead."
            )
        usage = RedisUsageQueue.shared()
        redis = usage.redis
        if requeue:
            moved = 0
            # One at a time, atomically: a record is on one list or the other, never lost.
            while redis.lmove(usage.dead_key, usage.queue_key, "LEFT", "RIGHT") is not None:
                moved += 1
            self.stdout.write(f"{moved} usage record(s) put back on the queue.")
            return
        count = redis.llen(usage.dead_key)
        self.stdout.write(f"{count} usage record(s) set aside.")
        for raw in redis.lrange(usage.dead_key, 0, SHOWN - 1):
            self.stdout.write(f"  {_describe(raw)}")
        if count > SHOWN:
            self.stdout.write(f"  ... and {count - SHOWN} more")


def _describe(raw: bytes) -> str:
    try:
        record = UsageRecord.from_queued(raw)
    except Exception:
        return f"unreadable: {raw[:120]!r}"
    return (
        f"{record.request_id} tenant {record.tenant_id} key {record.api_key_id} "
        f"model {record.model} at {record.created_at.isoformat()}"
    )
