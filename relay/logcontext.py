"""The id of the request being served, on every log record.

Apart from ``relay.metrics`` (which re-exports both names) because the logging
configuration names the filter: Django sets up logging in every process, and that should
not import prometheus-client along with it.
"""

from __future__ import annotations

import contextvars
import logging

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being served (or "") on every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        return True
