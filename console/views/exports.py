"""Downloads: a tenant's usage as CSV, streamed row by row (a year of requests never sits
in memory), with the same filters and scope as the usage page."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import StreamingHttpResponse

from billing.money import format_micros
from billing.selectors import usage as usage_reads
from console.http import AuthenticatedHttpRequest
from console.views.tenant import filtered_usage, tenant_access
from portal.access import Need

HEADER = (
    "created_at",
    "request_id",
    "api_key",
    "key_prefix",
    "model",
    "api",
    "status",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost",
    "currency",
    "latency_ms",
    "stream",
)
CHUNK = 2000


class _Line:
    """csv.writer's file: hands each formatted line back instead of storing it."""

    def write(self, line: str) -> str:
        return line


@login_required
def usage_export(request: AuthenticatedHttpRequest, slug: str) -> StreamingHttpResponse:
    """The usage page's requests as CSV: the tenant's price (retail), never wholesale."""
    access = tenant_access(request, slug, Need.USAGE)
    _, events, period = filtered_usage(request, access)
    rows = (
        usage_reads.in_period(events, period).select_related("api_key").order_by("created_at", "pk")
    )
    writer = csv.writer(_Line())

    def lines() -> Iterator[Any]:
        yield writer.writerow(HEADER)
        for event in rows.iterator(chunk_size=CHUNK):
            yield writer.writerow(
                (
                    event.created_at.isoformat(),
                    event.request_id,
                    event.api_key.name,
                    event.api_key.prefix,
                    event.model,
                    event.surface,
                    event.status_code,
                    event.prompt_tokens,
                    event.cached_tokens,
                    event.completion_tokens,
                    event.reasoning_tokens,
                    format_micros(event.cost_retail_micros, min_decimals=0, grouping=False),
                    event.currency,
                    event.total_latency_ms,
                    "yes" if event.stream else "no",
                )
            )

    filename = (
        f"usage-{access.organization.slug}-{period.start:%Y%m%d}-{period.last_day:%Y%m%d}.csv"
    )
    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    return response
