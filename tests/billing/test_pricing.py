"""Pricing: exact integer costs, safe reservations, and the price tables the relay loads."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core.exceptions import ValidationError

from billing.models import ModelPrice, PriceList
from billing.pricing import (
    Counts,
    PricePair,
    Prices,
    charges,
    cost_micros,
    event_cost_fields,
    tenant_price_table,
    worst_case_cost_micros,
)
from billing.services import model_price_set, price_list_create
from portal.models import AuditEntry, CatalogModel, Organization
from tests.billing.conftest import EPOCH, WHOLESALE, Market, set_prices

pytestmark = pytest.mark.django_db

USD = Prices(
    input=2_500_000, cached_input=1_250_000, output=10_000_000, request_fee=0, currency="USD"
)


def usage(prompt: int = 0, cached: int = 0, completion: int = 0, reasoning: int = 0) -> dict:
    return {
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "completion_tokens": completion,
        "reasoning_tokens": reasoning,
    }


# --- Arithmetic -----------------------------------------------------------------------------


def test_cached_tokens_are_part_of_the_prompt_and_cheaper() -> None:
    # 1000 prompt tokens of which 400 cached, 200 completion tokens:
    # 600 * 2.5 + 400 * 1.25 + 200 * 10 = 1500 + 500 + 2000 = 4000 micro-units exactly.
    assert cost_micros(USD, **usage(1000, 400, 200)) == 4000


def test_reasoning_is_inside_completion_and_not_billed_twice() -> None:
    plain = cost_micros(USD, **usage(100, 0, 500, 0))
    with_reasoning = cost_micros(USD, **usage(100, 0, 500, 300))
    assert with_reasoning == plain == 250 + 5000
    # An upstream that reports more reasoning than completion is billed the larger figure.
    assert cost_micros(USD, **usage(100, 0, 10, 500)) == plain


def test_rounding_is_once_per_event_half_up() -> None:
    prices = Prices(input=1, cached_input=1, output=3, request_fee=7, currency="USD")
    # 500_000 * 1 / 1e6 = 0.5 micro-unit: an exact half rounds up.
    assert cost_micros(prices, **usage(500_000)) == 1 + 7
    # 499_999 / 1e6 rounds down; the sum is rounded once, not each part.
    assert cost_micros(prices, **usage(499_999)) == 0 + 7
    # 300_000 input + 100_000 output * 3 = 600_000 → 0.6 → 1 (parts alone: 0.3 + 0.3 → 0)
    assert cost_micros(prices, **usage(300_000, 0, 100_000)) == 1 + 7


def test_the_rounding_goes_to_the_largest_remainder() -> None:
    prices = Prices(input=1, cached_input=1, output=3, request_fee=7, currency="USD")
    # Input 0.3, output 0.3 (a tie: the earlier dimension) → the one micro-unit to input.
    found, _ = charges(prices, Counts(prompt_tokens=300_000, completion_tokens=100_000))
    assert found["input"][2] == 1 and found["output"][2] == 0
    # Input 0.2, output 0.45 → 0.65 rounds to 1, and output has the larger remainder.
    found, _ = charges(prices, Counts(prompt_tokens=200_000, completion_tokens=150_000))
    assert found["input"][2] == 0 and found["output"][2] == 1


def test_no_tokens_costs_nothing_not_even_the_fee() -> None:
    prices = Prices(input=1_000_000, cached_input=0, output=0, request_fee=500, currency="USD")
    assert cost_micros(prices, **usage()) == 0
    assert cost_micros(prices, **usage(prompt=1)) == 1 + 500


def test_cached_beyond_prompt_is_capped() -> None:
    assert cost_micros(USD, **usage(100, 1000, 0)) == cost_micros(USD, **usage(100, 100, 0))


def test_worst_case_bounds_every_real_cost() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        prices = Prices(
            input=rng.randint(0, 20_000_000),
            cached_input=rng.randint(0, 20_000_000),  # even a cached price above input
            output=rng.randint(0, 80_000_000),
            request_fee=rng.randint(0, 10_000),
            currency="USD",
        )
        prompt_bytes = rng.randint(0, 100_000)
        max_output = rng.randint(0, 32_000)
        bound = worst_case_cost_micros(
            prices, prompt_bytes=prompt_bytes, max_output_tokens=max_output
        )
        prompt = rng.randint(0, prompt_bytes)  # a token is at least one byte
        completion = rng.randint(0, max_output)
        real = cost_micros(
            prices,
            **usage(prompt, rng.randint(0, prompt), completion, rng.randint(0, completion)),
        )
        assert real <= bound


def test_worst_case_rounds_up() -> None:
    prices = Prices(input=1, cached_input=1, output=1, request_fee=0, currency="USD")
    assert worst_case_cost_micros(prices, prompt_bytes=1, max_output_tokens=0) == 1


def test_event_cost_fields_snapshot_both_sides() -> None:
    retail = Prices(3_000_000, 1_500_000, 12_000_000, 1_000, "USD")
    pair = PricePair(retail=retail, wholesale=USD, reseller_id=42)

    fields = event_cost_fields(pair, **usage(1000, 400, 200, 50))

    assert fields == {
        "currency": "USD",
        "reseller_id": 42,
        "retail_input_per_mtok": 3_000_000,
        "retail_cached_input_per_mtok": 1_500_000,
        "retail_output_per_mtok": 12_000_000,
        "retail_request_fee_micros": 1_000,
        "wholesale_input_per_mtok": 2_500_000,
        "wholesale_cached_input_per_mtok": 1_250_000,
        "wholesale_output_per_mtok": 10_000_000,
        "wholesale_request_fee_micros": 0,
        "long_context": False,
        "charges": {
            "input": [600, 3_000_000, 1800, 2_500_000, 1500],
            "cached_input": [400, 1_500_000, 600, 1_250_000, 500],
            "output": [200, 12_000_000, 2400, 10_000_000, 2000],
            "request": [1, 1_000, 1_000, 0, 0],
        },
        "cost_retail_micros": 1800 + 600 + 2400 + 1000,
        "cost_wholesale_micros": 4000,
    }
    assert all(isinstance(value, int) for key, value in fields.items() if key.startswith("cost"))


def test_event_cost_fields_without_usage_or_price() -> None:
    pair = PricePair(retail=USD, wholesale=USD, reseller_id=None)
    errored = event_cost_fields(pair, **usage())
    assert errored["cost_retail_micros"] == errored["cost_wholesale_micros"] == 0
    assert errored["retail_input_per_mtok"] == USD.input  # the snapshot is still kept

    unpriced = event_cost_fields(None, **usage(100, 0, 100))
    assert unpriced["currency"] == ""
    assert unpriced["cost_retail_micros"] == 0
    assert unpriced["retail_output_per_mtok"] is None


# --- Price tables ---------------------------------------------------------------------------


def prices_of(pair: PricePair, side: str) -> tuple[int, int, int, int]:
    prices = getattr(pair, side)
    return (prices.input, prices.cached_input, prices.output, prices.request_fee)


def test_direct_tenant_pays_wholesale(market: Market) -> None:
    table = tenant_price_table(market.direct_tenant.pk)

    assert set(table) == set(WHOLESALE)
    for model_id, pair in table.items():
        assert prices_of(pair, "retail") == prices_of(pair, "wholesale") == WHOLESALE[model_id]
        assert pair.reseller_id is None
        assert pair.retail.currency == "USD"


def test_reseller_markup_and_explicit_prices(market: Market) -> None:
    table = tenant_price_table(market.tenant.pk)

    assert set(table) == set(WHOLESALE)
    a = table["model-a"]
    assert prices_of(a, "wholesale") == WHOLESALE["model-a"]
    assert prices_of(a, "retail") == (225_000, 112_500, 900_000, 0)  # +50 %
    assert prices_of(table["model-c"], "retail") == (1_333_333, 133_333, 5_555_555, 250)
    assert a.reseller_id == market.reseller.pk


def test_markup_rounds_each_price_half_up(market: Market) -> None:
    market.reseller_list.markup_percent = Decimal("33.3333")
    market.reseller_list.save()
    table = tenant_price_table(market.tenant.pk)
    # 150_000 * 1.333333 = 199_999.95 → 200_000; 75_000 * 1.333333 = 99_999.975 → 100_000
    assert prices_of(table["model-a"], "retail")[:2] == (200_000, 100_000)


def test_a_model_without_a_retail_price_is_absent(market: Market) -> None:
    # The other reseller's list has no markup and no price for model-c.
    assert set(tenant_price_table(market.other_tenant.pk)) == {"model-a", "model-b"}


def test_a_model_without_a_wholesale_price_is_absent(market: Market) -> None:
    CatalogModel.objects.create(public_id="retail-only")
    set_prices(market.other_list, {"retail-only": (1, 1, 1, 0)})
    assert "retail-only" not in tenant_price_table(market.other_tenant.pk)


def test_no_wholesale_list_means_nothing_is_servable(market: Market) -> None:
    PriceList.objects.filter(pk=market.wholesale.pk).update(is_default=False)
    assert tenant_price_table(market.tenant.pk) == {}
    assert tenant_price_table(market.direct_tenant.pk) == {}


def test_unknown_or_non_tenant_ids_get_an_empty_table(market: Market) -> None:
    assert tenant_price_table(market.reseller.pk) == {}
    assert tenant_price_table(10**9) == {}


def test_the_account_price_list_overrides_the_default(market: Market) -> None:
    from billing.services import billing_account_create

    vip = PriceList.objects.create(owner=market.reseller, name="VIP")
    set_prices(vip, {"model-a": (1, 2, 3, 4)})
    billing_account_create(organization=market.tenant, price_list=vip, actor="test")

    assert {k: prices_of(v, "retail") for k, v in tenant_price_table(market.tenant.pk).items()} == {
        "model-a": (1, 2, 3, 4)
    }


def test_prices_change_over_time(market: Market) -> None:
    change = datetime(2026, 3, 15, tzinfo=UTC)
    set_prices(market.wholesale, {"model-a": (9, 9, 9, 9)}, change)

    before = tenant_price_table(market.direct_tenant.pk, at=change - timedelta(seconds=1))
    after = tenant_price_table(market.direct_tenant.pk, at=change)

    assert prices_of(before["model-a"], "retail") == WHOLESALE["model-a"]
    assert prices_of(after["model-a"], "retail") == (9, 9, 9, 9)
    # The reseller's markup follows wholesale: 9 * 1.5 = 13.5 → 14
    assert prices_of(tenant_price_table(market.tenant.pk, at=change)["model-a"], "retail") == (
        14,
        14,
        14,
        14,
    )


def test_price_table_takes_three_queries_whatever_the_number_of_models(
    market: Market, django_assert_num_queries: Any
) -> None:
    with django_assert_num_queries(3):
        small = tenant_price_table(market.tenant.pk)
    for n in range(40):
        CatalogModel.objects.create(public_id=f"bulk-{n}")
        set_prices(market.wholesale, {f"bulk-{n}": (n, n, n, 0)})
        set_prices(market.wholesale, {f"bulk-{n}": (n + 1, n, n, 0)}, EPOCH + timedelta(days=n + 1))
    with django_assert_num_queries(3):
        large = tenant_price_table(market.tenant.pk)
    assert len(large) == len(small) + 40
    assert prices_of(large["bulk-7"], "wholesale") == (8, 7, 7, 0)


# --- Price services -------------------------------------------------------------------------


def test_model_price_set_is_audited_and_refuses_backdating(
    market: Market, operator_user: Any
) -> None:
    model = CatalogModel.objects.get(public_id="model-b")
    with time_machine.travel(datetime(2026, 4, 1, tzinfo=UTC), tick=False):
        price = model_price_set(
            price_list=market.wholesale,
            model=model,
            input_per_mtok=1_000_000,
            output_per_mtok=2_000_000,
            actor=operator_user,
        )
        with pytest.raises(ValidationError):
            model_price_set(
                price_list=market.wholesale,
                model=model,
                input_per_mtok=1,
                output_per_mtok=1,
                effective_from=datetime(2026, 3, 1, tzinfo=UTC),
                actor=operator_user,
            )
    assert price.cached_input_per_mtok == 1_000_000  # defaults to the input price
    entry = AuditEntry.objects.get(action="model_price.set")
    assert entry.actor == operator_user
    assert entry.data["model"] == "model-b"
    # the old price is kept
    assert ModelPrice.objects.filter(model=model, price_list=market.wholesale).count() == 2


def test_price_list_currency_must_match_wholesale(market: Market) -> None:
    with pytest.raises(ValidationError):
        price_list_create(owner=market.reseller, name="Euro", currency="EUR", actor="test")
    with pytest.raises(ValidationError):
        price_list_create(owner=market.tenant, name="Own", actor="test")
    created = price_list_create(
        owner=market.reseller, name="Cheap", markup_percent=Decimal(10), actor="test"
    )
    assert created.currency == "USD"
    assert AuditEntry.objects.filter(action="price_list.create").count() == 1


def test_price_changes_tell_the_relay(
    market: Market, django_capture_on_commit_callbacks: Any
) -> None:
    from portal import invalidation

    before = invalidation.current_generation()
    with django_capture_on_commit_callbacks(execute=True):
        price_list_create(owner=market.reseller, name="Another", actor="test")
    assert invalidation.current_generation() > before


def test_organization_without_parent_is_safe(platform_org: Organization) -> None:
    assert tenant_price_table(platform_org.pk) == {}


# --- Money helpers --------------------------------------------------------------------------


def test_money_parsing_and_display_are_exact() -> None:
    from billing.money import div_round_half_up, format_micros, to_micros

    assert to_micros("12.50") == 12_500_000
    assert to_micros("0.000001") == 1
    with pytest.raises(ValueError):
        to_micros("0.0000001")  # below a micro-unit: refused, not rounded
    assert format_micros(1_234_567_800) == "1,234.5678"
    assert format_micros(-5) == "-0.000005"
    assert format_micros(3_000_000, min_decimals=0, grouping=False) == "3"
    assert div_round_half_up(-3, 2) == -2  # halves away from zero
    assert div_round_half_up(5, 10) == 1


def test_worst_case_holds_the_counted_images() -> None:
    prices = Prices(
        input=0,
        cached_input=0,
        output=0,
        request_fee=0,
        currency="USD",
        input_image=700,
        output_image=39_000,
    )

    def worst(**counts: int) -> int:
        return worst_case_cost_micros(prices, prompt_bytes=10_000, max_output_tokens=50, **counts)

    # The relay's count is what the request will be billed, so the hold is exact.
    assert worst(input_images=2, output_images=0) == 2 * 700
    assert worst(input_images=0, output_images=0) == 0
    # Asking for pictures: any output token may be one.
    assert worst(input_images=2, output_images=50) == 2 * 700 + 50 * 39_000
    # Not counted: the body's size bounds the input pictures, the output tokens the rest.
    assert worst() == 10_000 // 20 * 700 + 50 * 39_000
