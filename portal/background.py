"""The Celery application that every app's ``tasks.py`` binds its tasks to.

It lives in the lowest layer so that a tasks module can name it: a task sent from a web
process, a management command or a test (``.delay()``, ``apply_async``) then always goes
through this app and so to the broker the settings name, whatever else the process has
loaded and from whichever thread it sends. With ``@shared_task`` and no app loaded, a
send would quietly go to Celery's fallback app (AMQP on localhost).

Nothing here runs at Django's start: importing Celery costs ~0.3 s, which management
commands and the relay's workers do not pay unless they load a tasks module. The worker
and beat load ``config.celery_app``, which adds the beat schedule and task discovery.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("tollgate")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The default for every thread (a web server's thread pool too), not only this one.
app.set_default()
