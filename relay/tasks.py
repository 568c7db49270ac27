"""Celery tasks of the relay: thin wrappers that load ids and call relay.health."""

from __future__ import annotations

from portal.background import app
from portal.models import Channel
from relay import health


@app.task(name="relay.channels_health_check", ignore_result=True)
def channels_health_check() -> dict[int, bool]:
    return health.channels_check_all()


@app.task(name="relay.channel_check", ignore_result=True)
def channel_check(channel_id: int) -> bool:
    channel = Channel.objects.filter(pk=channel_id).first()
    return bool(channel and health.channel_check(channel).ok)
