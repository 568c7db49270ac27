"""The Celery application; the beat schedule is defined here and only here."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

app.conf.beat_schedule = {
    "relay-channels-health-check": {
        "task": "relay.channels_health_check",
        "schedule": 60.0,
    },
}
