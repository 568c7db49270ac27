"""Project configuration: settings, URLs, ASGI/WSGI entry points and the Celery app.

The Celery app is not imported here (Celery's Django guide does), so that Django's start
(every management command, every relay worker) does not pay ~0.3 s for it: the worker and
beat load ``config.celery_app``; the tasks bind to ``portal.background.app`` themselves.
"""
