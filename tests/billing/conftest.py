"""Fixtures for billing tests: a priced market and a factory of usage events.

The market, on top of the persona tree of tests/conftest.py::

    platform_org   wholesale list (USD): model-a, model-b, model-c
    ├── reseller_org        "Reseller retail": +50 % markup, model-c priced explicitly
    │   └── tenant_org      priced by the reseller's default list
    ├── other_reseller_org  "Other retail": explicit prices for model-a and model-b only
    │   └── other_tenant_org
    └── direct_tenant       directly under the platform: pays wholesale

Prices are written through the ORM with an early ``effective_from`` (services refuse to
backdate); events get their price snapshot the way the relay does it, through
``tenant_price_table`` and ``event_cost_fields`` at the event's time.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.models import ModelPrice, PriceList, UsageEvent
from billing.periods import Period
from billing.pricing import event_cost_fields, tenant_price_table
from config.celery_app import app as celery_app
from portal import crypto
from portal.models import ApiKey, CatalogModel, Channel, Organization

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
MARCH = Period.month(2026, 3)
# Mid-month price changes used by the generated month.
WHOLESALE_CHANGE_AT = datetime(2026, 3, 15, 12, tzinfo=UTC)
RETAIL_CHANGE_AT = datetime(2026, 3, 20, tzinfo=UTC)

# Micro-units per million tokens: input, cached input, output, request fee.
WHOLESALE = {
    "model-a": (150_000, 75_000, 600_000, 0),
    "model-b": (2_500_000, 1_250_000, 10_000_000, 0),
    "model-c": (1_000_000, 100_000, 4_000_000, 100),
}
RESELLER_EXPLICIT = {"model-c": (1_333_333, 133_333, 5_555_555, 250)}
OTHER_RETAIL = {
    "model-a": (300_000, 150_000, 1_200_000, 0),
    "model-b": (3_000_000, 1_500_000, 12_000_000, 1_000),
}


def set_prices(
    price_list: PriceList, prices: dict[str, tuple[int, int, int, int]], at: datetime = EPOCH
) -> None:
    for public_id, (input_, cached, output, fee) in prices.items():
        ModelPrice.objects.create(
            price_list=price_list,
            model=CatalogModel.objects.get(public_id=public_id),
            input_per_mtok=input_,
            cached_input_per_mtok=cached,
            output_per_mtok=output,
            request_fee_micros=fee,
            effective_from=at,
        )


@dataclass
class Market:
    platform: Organization
    reseller: Organization
    other_reseller: Organization
    tenant: Organization
    other_tenant: Organization
    direct_tenant: Organization
    wholesale: PriceList
    reseller_list: PriceList
    other_list: PriceList
    channel: Channel
    keys: dict[int, list[ApiKey]] = field(default_factory=dict)

    @property
    def tenants(self) -> list[Organization]:
        return [self.tenant, self.other_tenant, self.direct_tenant]


def make_key(tenant: Organization, name: str) -> ApiKey:
    key = ApiKey(tenant=tenant, name=name)
    key.set_secret(crypto.generate_api_key())
    key.save()
    return key


@pytest.fixture
def market(
    platform_org: Organization,
    reseller_org: Organization,
    tenant_org: Organization,
    other_tenant_org: Organization,
) -> Market:
    for public_id in WHOLESALE:
        CatalogModel.objects.create(public_id=public_id)
    direct = Organization.objects.create(
        name="Direct", slug="direct", kind=Organization.Kind.TENANT, parent=platform_org
    )
    wholesale = PriceList.objects.create(owner=platform_org, name="Wholesale", is_default=True)
    set_prices(wholesale, WHOLESALE)
    reseller_list = PriceList.objects.create(
        owner=reseller_org, name="Reseller retail", is_default=True, markup_percent=Decimal(50)
    )
    set_prices(reseller_list, RESELLER_EXPLICIT)
    other_list = PriceList.objects.create(
        owner=other_tenant_org.parent, name="Other retail", is_default=True
    )
    set_prices(other_list, OTHER_RETAIL)
    channel = Channel.objects.create(name="upstream", base_url="http://127.0.0.1:9/v1")
    result = Market(
        platform=platform_org,
        reseller=reseller_org,
        other_reseller=other_tenant_org.parent,
        tenant=tenant_org,
        other_tenant=other_tenant_org,
        direct_tenant=direct,
        wholesale=wholesale,
        reseller_list=reseller_list,
        other_list=other_list,
        channel=channel,
    )
    for tenant in result.tenants:
        result.keys[tenant.pk] = [make_key(tenant, "one"), make_key(tenant, "two")]
    return result


_request_ids = itertools.count(1)


def record_event(
    *,
    tenant: Organization,
    api_key: ApiKey,
    model: str,
    created_at: datetime,
    prompt_tokens: int = 0,
    cached_tokens: int = 0,
    completion_tokens: int = 0,
    reasoning_tokens: int = 0,
    status_code: int = 200,
    channel: Channel | None = None,
) -> UsageEvent:
    """Write one usage event priced as the relay prices it (unpriced if the model has no
    price for the tenant)."""
    pair = tenant_price_table(tenant.pk, at=created_at).get(model)
    counts = {
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "completion_tokens": completion_tokens,
        "reasoning_tokens": reasoning_tokens,
    }
    return UsageEvent.objects.create(
        request_id=f"req-{next(_request_ids)}-{uuid.uuid4().hex[:8]}",
        created_at=created_at,
        tenant=tenant,
        api_key=api_key,
        model=model,
        channel=channel,
        status_code=status_code,
        error_code="" if status_code < 400 else "upstream_error",
        total_latency_ms=120,
        **counts,
        **event_cost_fields(pair, **counts),
    )


EventFactory = Callable[..., UsageEvent]


@pytest.fixture
def event(market: Market) -> EventFactory:
    """``event(tenant=..., model=..., created_at=..., prompt_tokens=...)`` with defaults."""

    def make(**fields: Any) -> UsageEvent:
        tenant = fields.pop("tenant", market.tenant)
        fields.setdefault("api_key", market.keys[tenant.pk][0])
        fields.setdefault("model", "model-a")
        fields.setdefault("created_at", datetime(2026, 3, 10, 12, tzinfo=UTC))
        fields.setdefault("channel", market.channel)
        return record_event(tenant=tenant, **fields)

    return make


def generate_month(market: Market, *, seed: int = 4, count: int = 360) -> list[UsageEvent]:
    """A month of varied usage across three tenants, two keys each, three models, with a
    wholesale and a retail price change mid-month; errors and unpriced requests included.
    """
    rng = random.Random(seed)
    changes = [
        (WHOLESALE_CHANGE_AT, market.wholesale, {"model-a": (200_000, 50_000, 800_000, 0)}),
        (RETAIL_CHANGE_AT, market.reseller_list, {"model-c": (1_500_001, 150_001, 6_000_001, 0)}),
    ]
    for at, price_list, prices in changes:
        set_prices(price_list, prices, at)
    span = (MARCH.end_at - MARCH.start_at).total_seconds()
    events = []
    for _ in range(count):
        tenant = rng.choice(market.tenants)
        status = rng.choices([200, 200, 200, 200, 200, 200, 429, 500, 502], k=1)[0]
        prompt = rng.randint(1, 40_000)
        completion = rng.randint(0, 8_000)
        usage = {
            "prompt_tokens": prompt,
            "cached_tokens": rng.choice([0, 0, rng.randint(0, prompt)]),
            "completion_tokens": completion,
            "reasoning_tokens": rng.choice([0, rng.randint(0, completion)]),
        }
        if status >= 400 and rng.random() < 0.8:
            usage = {}  # most failures reach no model
        events.append(
            record_event(
                tenant=tenant,
                api_key=rng.choice(market.keys[tenant.pk]),
                # other_tenant's list has no model-c: those requests are unpriced
                model=rng.choice(list(WHOLESALE)),
                created_at=MARCH.start_at + timedelta(seconds=rng.uniform(0, span - 1)),
                status_code=status,
                channel=rng.choice([market.channel, None]),
                **usage,
            )
        )
    return events


@pytest.fixture
def celery_eager() -> Iterator[None]:
    """Run tasks in-process for this test, whatever the environment configured."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


# The card payment tests' fixtures (Stripe stand-in, connected seller) live beside them.
from tests.billing.payments_fixtures import fake_stripe, shop  # noqa: E402, F401
