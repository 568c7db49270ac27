"""A generated month that uses every price dimension, changes prices mid-month, sells
through a markup list and crosses a long-context tier: every invoice line per model and
dimension equals the sum of its priced events' charges to the micro-unit, and rerunning
the rollups and the invoice drafts changes nothing."""

from __future__ import annotations

import dataclasses
import random
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import time_machine

from billing.models import Invoice, InvoiceLine, ModelPrice, UsageEvent, UsageRollup
from billing.pricing import Counts, event_cost_fields, tenant_price_table
from billing.services import invoice_generate, rollup_recompute
from portal.models import CatalogModel
from tests.billing.conftest import MARCH, Market

pytestmark = pytest.mark.django_db

EVERY_DIMENSION = {
    "cache_write_5m_per_mtok": 187_500,
    "cache_write_1h_per_mtok": 300_000,
    "audio_input_per_mtok": 4_000_000,
    "audio_output_per_mtok": 8_000_000,
    "image_input_per_mtok": 500_000,
    "image_output_per_mtok": 3_000_000,
    "input_image_micros": 700,
    "output_image_micros": 39_000,
    "request_fee_micros": 13,
    "long_context_above_tokens": 30_000,
    "long_context_prices": {"input": 300_000, "output": 1_200_000, "cache_write_1h": 600_000},
    "flex_percent": 50,
    "priority_percent": 175,
}


def _price(market: Market, at: datetime, input_: int, output: int) -> None:
    ModelPrice.objects.create(
        price_list=market.wholesale,
        model=CatalogModel.objects.get(public_id="model-a"),
        input_per_mtok=input_,
        cached_input_per_mtok=input_ // 10,
        output_per_mtok=output,
        effective_from=at,
        **EVERY_DIMENSION,
    )


def _month(market: Market, count: int = 300) -> list[UsageEvent]:
    rng = random.Random(16)
    _price(market, MARCH.start_at, 150_000, 600_000)
    _price(market, datetime(2026, 3, 15, 12, 0, 7, tzinfo=UTC), 170_001, 680_003)  # mid-month
    span = (MARCH.end_at - MARCH.start_at).total_seconds()
    events = []
    for index in range(count):
        tenant = rng.choice([market.tenant, market.direct_tenant])  # markup list / wholesale
        at = MARCH.start_at + timedelta(seconds=rng.uniform(0, span - 1))
        prompt = rng.randint(1, 60_000)  # crosses the 30k tier now and then
        completion = rng.randint(0, 6_000)
        writes = rng.randint(0, prompt // 3)
        counts = Counts(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=rng.randint(0, prompt // 3),
            reasoning_tokens=rng.randint(0, completion),
            cache_write_tokens=writes,
            cache_write_1h_tokens=rng.randint(0, writes),
            audio_input_tokens=rng.choice([0, rng.randint(0, prompt // 4)]),
            audio_output_tokens=rng.choice([0, rng.randint(0, completion // 2)]),
            image_input_tokens=rng.choice([0, rng.randint(0, 2_000)]),
            image_output_tokens=rng.choice([0, rng.randint(0, 1_500)]),
            input_images=rng.choice([0, 0, 1, 3]),
            output_images=rng.choice([0, 0, 1]),
            service_tier=rng.choice(["", "", "flex", "priority"]),
        )
        pair = tenant_price_table(tenant.pk, at=at)["model-a"]
        fields = dataclasses.asdict(counts)
        events.append(
            UsageEvent.objects.create(
                request_id=f"dim-{index}-{uuid.uuid4().hex[:6]}",
                created_at=at,
                tenant=tenant,
                api_key=market.keys[tenant.pk][0],
                model="model-a",
                status_code=200,
                total_latency_ms=50,
                **fields,
                **event_cost_fields(pair, **fields),
            )
        )
    return events


def _expected_lines(events: list[UsageEvent], side: str) -> dict[tuple[Any, ...], list[int]]:
    """(model, dimension, unit price, service tier, long context) -> [quantity, amount]."""
    found: dict[tuple[Any, ...], list[int]] = defaultdict(lambda: [0, 0])
    for event in events:
        for dimension, (quantity, r_unit, r_micros, w_unit, w_micros) in event.charges.items():
            unit, micros = (r_unit, r_micros) if side == "retail" else (w_unit, w_micros)
            key = (event.model, dimension, unit, event.service_tier, event.long_context)
            found[key][0] += quantity
            found[key][1] += micros
    return dict(found)


def _lines(invoice: Invoice) -> dict[tuple[Any, ...], list[int]]:
    return {
        (
            line.model,
            line.dimension,
            line.unit_price_micros,
            line.service_tier,
            line.long_context,
        ): [
            line.quantity,
            line.amount_micros,
        ]
        for line in invoice.lines.filter(kind=InvoiceLine.Kind.USAGE)
    }


def test_every_line_per_model_and_dimension_is_the_sum_of_its_events(market: Market) -> None:
    events = _month(market)
    used = {d for e in events for d in e.charges}
    assert used >= {
        "input",
        "cached_input",
        "cache_write_5m",
        "cache_write_1h",
        "audio_input",
        "audio_output",
        "image_input",
        "image_output",
        "output",
        "input_image",
        "output_image",
        "request",
    }
    assert any(e.long_context for e in events) and not all(e.long_context for e in events)
    with time_machine.travel(datetime(2026, 4, 1, 1, tzinfo=UTC), tick=False):
        for customer, side in (
            (market.tenant, "retail"),
            (market.direct_tenant, "retail"),
            (market.reseller, "wholesale"),
        ):
            invoice = invoice_generate(customer=customer, period=MARCH)
            assert invoice is not None
            mine = [
                e
                for e in events
                if (e.reseller_id if side == "wholesale" else e.tenant_id) == customer.pk
            ]
            assert _lines(invoice) == _expected_lines(mine, side)
            costs = sum(getattr(e, f"cost_{side}_micros") for e in mine)
            assert invoice.subtotal_micros == costs
            # Two prices in the month (and a markup on one side): several unit prices.
            assert len({k[2] for k in _lines(invoice) if k[1] == "input"}) >= 2

        # Rerunning the rollups and the drafts changes nothing.
        first = rollup_recompute(start=MARCH.start_at, end=MARCH.end_at)
        assert first.created > 0
        rows = list(UsageRollup.objects.order_by("pk").values())
        lines = list(InvoiceLine.objects.order_by("pk").values())
        assert rollup_recompute(start=MARCH.start_at, end=MARCH.end_at).total == 0
        for customer in (market.tenant, market.direct_tenant, market.reseller):
            invoice_generate(customer=customer, period=MARCH)
        assert list(UsageRollup.objects.order_by("pk").values()) == rows
        assert list(InvoiceLine.objects.order_by("pk").values()) == lines
