"""Every price dimension: cache writes, audio, images, long context, service tiers, markups,
and the schedule of prices the relay picks from by admission time."""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from billing.models import ModelPrice
from billing.pricing import (
    Counts,
    PricePair,
    Prices,
    charges,
    cost_micros,
    event_cost_fields,
    quantities,
    tenant_price_schedule,
    total_micros,
    worst_case_cost_micros,
)
from billing.pricing.arithmetic import (
    DIMENSIONS,
    TOKEN_DIMENSIONS,
    UNSET,
    _apportioned,  # the general path, against the short
)
from billing.services import model_price_set
from portal.models import CatalogModel
from tests.billing.conftest import Market

# An Anthropic-like price: writes at 1.25x and 2x input, reads at 0.1x; audio dearer.
CLAUDE = Prices(
    input=3_000_000,
    cached_input=300_000,
    output=15_000_000,
    request_fee=0,
    currency="USD",
    cache_write_5m=3_750_000,
    cache_write_1h=6_000_000,
    audio_input=40_000_000,
    audio_output=80_000_000,
    image_input=5_000_000,
    image_output=30_000_000,
    input_image=1_000,
    output_image=40_000,
)


def test_every_dimension_is_charged_at_its_own_price() -> None:
    counts = Counts(
        prompt_tokens=10_000,
        cached_tokens=2_000,
        cache_write_tokens=3_000,
        cache_write_1h_tokens=1_000,
        audio_input_tokens=1_500,
        image_input_tokens=500,
        completion_tokens=4_000,
        reasoning_tokens=1_000,
        audio_output_tokens=1_000,
        image_output_tokens=500,
        input_images=2,
        output_images=1,
    )
    found, long = charges(CLAUDE, counts)
    assert not long
    assert {name: quantity for name, (quantity, _, _) in found.items()} == {
        "cached_input": 2_000,
        "cache_write_1h": 1_000,
        "cache_write_5m": 2_000,
        "audio_input": 1_500,
        "image_input": 500,
        "input": 3_000,  # the text rest of the prompt
        "audio_output": 1_000,
        "image_output": 500,
        "output": 2_500,  # reasoning is inside the completion
        "input_image": 2,
        "output_image": 1,
        "request": 1,
    }
    assert found["cache_write_5m"] == (2_000, 3_750_000, 7_500)
    assert found["cache_write_1h"] == (1_000, 6_000_000, 6_000)
    assert found["audio_output"] == (1_000, 80_000_000, 80_000)
    assert found["output_image"] == (1, 40_000, 40_000)
    assert cost_micros(CLAUDE, **dataclasses.asdict(counts)) == sum(c for _, _, c in found.values())


def test_blank_dimensions_cost_the_text_price() -> None:
    plain = Prices(
        input=1_000_000, cached_input=100_000, output=4_000_000, request_fee=0, currency="USD"
    )
    assert plain.cache_write_5m == plain.cache_write_1h == plain.audio_input == 1_000_000
    assert plain.audio_output == plain.image_output == 4_000_000
    assert plain.input_image == plain.output_image == 0
    writes = Counts(prompt_tokens=1_000, cache_write_tokens=1_000)
    assert cost_micros(plain, **dataclasses.asdict(writes)) == 1_000
    # A blank one-hour write costs the five-minute write, where that one is priced.
    five = Prices(
        input=1_000_000,
        cached_input=100_000,
        output=4_000_000,
        request_fee=0,
        currency="USD",
        cache_write_5m=1_250_000,
    )
    assert five.cache_write_1h == 1_250_000
    hourly = Counts(prompt_tokens=1_000, cache_write_tokens=1_000, cache_write_1h_tokens=1_000)
    assert cost_micros(five, **dataclasses.asdict(hourly)) == 1_250


def test_parts_never_exceed_their_whole() -> None:
    rng = random.Random(11)
    for _ in range(3000):
        counts = Counts(
            prompt_tokens=rng.randint(0, 5000),
            completion_tokens=rng.randint(0, 5000),
            cached_tokens=rng.randint(0, 6000),
            reasoning_tokens=rng.randint(0, 6000),
            cache_write_tokens=rng.randint(0, 6000),
            cache_write_1h_tokens=rng.randint(0, 6000),
            audio_input_tokens=rng.randint(0, 6000),
            audio_output_tokens=rng.randint(0, 6000),
            image_input_tokens=rng.randint(0, 6000),
            image_output_tokens=rng.randint(0, 6000),
        )
        found = quantities(counts)
        prompt = sum(
            found[d]
            for d in (
                "input",
                "cached_input",
                "cache_write_5m",
                "cache_write_1h",
                "audio_input",
                "image_input",
            )
        )
        output = sum(found[d] for d in ("output", "audio_output", "image_output"))
        assert prompt == counts.prompt_tokens
        assert output == max(counts.completion_tokens, counts.reasoning_tokens)
        assert all(value >= 0 for value in found.values())


@pytest.mark.parametrize("text_only", [False, True])
def test_the_relays_total_is_the_sum_of_the_charges(text_only: bool) -> None:
    """``total_micros`` (the relay's per-request figure) never differs from the charges
    an invoice adds up, whatever the prices, tiers, long context and counts; text-only
    counts (no cache, audio or image parts) take its shorter path."""
    rng = random.Random(23)

    def price(low: int = 0) -> int:
        return rng.choice([low, 1, 7, 333_333, 1_000_000, rng.randint(low, 90_000_000)])

    for _ in range(4000):
        long = Prices(
            input=price(), cached_input=price(), output=price(), request_fee=price(),
            currency="USD", audio_input=price(-1), image_output=price(-1),
        )  # fmt: skip
        prices = Prices(
            input=price(),
            cached_input=price(),
            output=price(),
            request_fee=rng.choice([0, 0, price()]),
            currency="USD",
            cache_write_5m=price(-1),
            cache_write_1h=price(-1),
            audio_input=price(-1),
            audio_output=price(-1),
            image_input=price(-1),
            image_output=price(-1),
            input_image=rng.choice([0, price()]),
            output_image=rng.choice([0, price()]),
            long_context_above=rng.choice([None, 100, 2000]),
            long_context=rng.choice([None, long]),
            flex_percent=rng.choice([100, 50, 33]),
            priority_percent=rng.choice([100, 200, 175]),
        )
        counts = Counts(
            prompt_tokens=rng.randint(0, 5000),
            completion_tokens=rng.choice([0, rng.randint(0, 5000)]),
            cached_tokens=rng.randint(0, 3000),
            reasoning_tokens=rng.randint(0, 3000),
            cache_write_tokens=rng.choice([0, rng.randint(0, 3000)]),
            cache_write_1h_tokens=rng.choice([0, rng.randint(0, 3000)]),
            audio_input_tokens=rng.choice([0, rng.randint(0, 3000)]),
            audio_output_tokens=rng.choice([0, rng.randint(0, 3000)]),
            image_input_tokens=rng.choice([0, rng.randint(0, 3000)]),
            image_output_tokens=rng.choice([0, rng.randint(0, 3000)]),
            input_images=rng.choice([0, 0, rng.randint(0, 4)]),
            output_images=rng.choice([0, 0, rng.randint(0, 4)]),
            service_tier=rng.choice(["", "flex", "priority"]),
        )
        if text_only:
            counts = Counts(
                prompt_tokens=rng.choice([0, counts.prompt_tokens, 3_000_000]),
                completion_tokens=counts.completion_tokens,
                reasoning_tokens=rng.choice([0, counts.reasoning_tokens]),
                service_tier=counts.service_tier,
            )
            if rng.random() < 0.1:  # no price list holds one, but the rules still apply
                prices = dataclasses.replace(prices, input=-price(), output=-price())
        found, _ = charges(prices, counts)
        if text_only:  # the short paths against the general one
            flat, _ = prices.for_request(max(counts.prompt_tokens, 0), counts.service_tier)
            assert found == _apportioned(flat, counts)
            assert list(found) == list(_apportioned(flat, counts))  # the invoice's order
        assert total_micros(prices, counts) == sum(c for _, _, c in found.values())
    # A negative unit price (no price list holds one) still follows the charges.
    odd = dataclasses.replace(CLAUDE, input=-333_333, output=-1)
    some = Counts(prompt_tokens=7, completion_tokens=5)
    found, _ = charges(odd, some)
    assert total_micros(odd, some) == sum(c for _, _, c in found.values())


def test_long_context_prices_apply_above_the_threshold() -> None:
    tier = dataclasses.replace(CLAUDE, input=6_000_000, output=22_500_000)
    prices = dataclasses.replace(CLAUDE, long_context_above=200_000, long_context=tier)
    at_threshold = Counts(prompt_tokens=200_000, completion_tokens=1_000)
    above = Counts(prompt_tokens=200_001, completion_tokens=1_000)
    found, long = charges(prices, at_threshold)
    assert not long and found["input"][1] == 3_000_000
    found, long = charges(prices, above)
    assert long and found["input"][1] == 6_000_000 and found["output"][1] == 22_500_000
    pair = PricePair(prices, prices, None)
    fields = event_cost_fields(pair, **dataclasses.asdict(above))
    assert fields["long_context"] is True
    assert fields["retail_input_per_mtok"] == 6_000_000  # the snapshot is what was charged


def test_service_tiers_scale_token_prices_not_the_fee() -> None:
    prices = dataclasses.replace(CLAUDE, request_fee=100, flex_percent=50, priority_percent=175)
    counts = {"prompt_tokens": 1_000_000, "completion_tokens": 0}
    assert cost_micros(prices, **counts) == 3_000_000 + 100
    assert cost_micros(prices, **counts, service_tier="flex") == 1_500_000 + 100
    assert cost_micros(prices, **counts, service_tier="priority") == 5_250_000 + 100
    assert cost_micros(prices, **counts, service_tier="scale") == 3_000_000 + 100


def test_a_markup_marks_up_every_dimension_and_the_tier() -> None:
    tier = dataclasses.replace(CLAUDE, input=6_000_000)
    prices = dataclasses.replace(
        CLAUDE,
        request_fee=10,
        web_search=10_000,
        long_context_above=1000,
        long_context=tier,
        priority_percent=200,
    )
    marked = prices.marked_up(Decimal("50"))
    for dimension in DIMENSIONS:
        assert marked.unit(dimension) * 2 == prices.unit(dimension) * 3
    assert marked.long_context is not None and marked.long_context.input == 9_000_000
    assert marked.priority_percent == 200  # a multiplier, not a price
    # A tool the wholesale price does not offer is not offered marked up either.
    assert tier.web_search == UNSET and marked.long_context.web_search == UNSET
    assert not marked.long_context.offers("web_search") and marked.offers("web_search")


def test_worst_case_covers_the_dearest_dimension() -> None:
    rng = random.Random(5)
    for _ in range(1500):
        base = Prices(
            **{
                name: rng.randint(0, 90_000_000)
                for name in ("input", "cached_input", "output", *TOKEN_DIMENSIONS[2:])
                if name not in ("input", "cached_input", "output")
            },
            input=rng.randint(0, 9_000_000),
            cached_input=rng.randint(0, 9_000_000),
            output=rng.randint(0, 9_000_000),
            request_fee=rng.randint(0, 1000),
            currency="USD",
            flex_percent=rng.choice([50, 100]),
            priority_percent=rng.choice([100, 250]),
        )
        tier = dataclasses.replace(base, input=rng.randint(0, 99_000_000))
        prices = dataclasses.replace(
            base, long_context_above=rng.randint(0, 500), long_context=tier
        )
        prompt_bytes = rng.randint(0, 5000)
        max_output = rng.randint(0, 3000)
        bound = worst_case_cost_micros(
            prices, prompt_bytes=prompt_bytes, max_output_tokens=max_output
        )
        prompt = rng.randint(0, prompt_bytes)
        completion = rng.randint(0, max_output)
        counts = Counts(
            prompt_tokens=prompt,
            completion_tokens=completion,
            cached_tokens=rng.randint(0, prompt),
            cache_write_tokens=rng.randint(0, prompt),
            cache_write_1h_tokens=rng.randint(0, prompt),
            audio_input_tokens=rng.randint(0, prompt),
            image_input_tokens=rng.randint(0, prompt),
            audio_output_tokens=rng.randint(0, completion),
            image_output_tokens=rng.randint(0, completion),
            service_tier=rng.choice(["", "flex", "priority"]),
        )
        assert cost_micros(prices, **dataclasses.asdict(counts)) <= bound


def test_queued_prices_survive_the_round_trip() -> None:
    tier = dataclasses.replace(CLAUDE, input=6_000_000)
    pair = PricePair(
        dataclasses.replace(CLAUDE, long_context_above=9, long_context=tier), CLAUDE, 3
    )
    assert PricePair.from_dict(dataclasses.asdict(pair)) == pair


# --- Prices stored and scheduled -------------------------------------------------------------


@pytest.mark.django_db
def test_a_stored_price_carries_every_dimension(market: Market) -> None:
    model = CatalogModel.objects.get(public_id="model-a")
    model_price_set(
        price_list=market.wholesale,
        model=model,
        input_per_mtok=3_000_000,
        output_per_mtok=15_000_000,
        cached_input_per_mtok=300_000,
        cache_write_5m_per_mtok=3_750_000,
        cache_write_1h_per_mtok=6_000_000,
        audio_input_per_mtok=40_000_000,
        output_image_micros=40_000,
        long_context_above_tokens=200_000,
        long_context_prices={"input": 6_000_000, "output": 22_500_000},
        priority_percent=180,
        actor="test",
    )
    pair = tenant_price_schedule(market.direct_tenant.pk)["model-a"]
    prices = pair.retail
    assert (prices.cache_write_5m, prices.cache_write_1h, prices.audio_input) == (
        3_750_000,
        6_000_000,
        40_000_000,
    )
    assert prices.audio_output == 15_000_000  # blank: the output price
    assert prices.output_image == 40_000 and prices.input_image == 0
    assert prices.long_context_above == 200_000 and prices.long_context is not None
    assert prices.long_context.input == 6_000_000
    assert prices.long_context.cache_write_1h == 6_000_000  # not in the tier: unchanged
    assert prices.priority_percent == 180
    # The reseller's markup list marks up every dimension of it.
    marked = tenant_price_schedule(market.tenant.pk)["model-a"].retail
    assert marked.cache_write_1h == 9_000_000 and marked.output_image == 60_000
    assert marked.long_context is not None and marked.long_context.output == 33_750_000


@pytest.mark.django_db
def test_the_schedule_switches_at_the_scheduled_moment(market: Market) -> None:
    model = CatalogModel.objects.get(public_id="model-a")
    now = datetime.now(UTC)
    moments = [now + timedelta(hours=1), now + timedelta(hours=2)]
    for moment, price in zip(moments, (111, 222), strict=True):
        ModelPrice.objects.create(
            price_list=market.wholesale,
            model=model,
            input_per_mtok=price,
            cached_input_per_mtok=price,
            output_per_mtok=price,
            effective_from=moment,
        )
    schedule = tenant_price_schedule(market.direct_tenant.pk)
    assert schedule.scheduled == 2
    before = schedule.at("model-a", moments[0] - timedelta(microseconds=1))
    assert before is not None and before.retail.input == 150_000
    first = schedule.at("model-a", moments[0])
    assert first is not None and first.retail.input == 111
    second = schedule.at("model-a", moments[1] + timedelta(days=3))
    assert second is not None and second.retail.input == 222
    # Other models keep their price across the change; the reseller's markup follows.
    assert schedule.at("model-b", moments[1]) == schedule["model-b"]
    marked = tenant_price_schedule(market.tenant.pk).at("model-a", moments[0])
    assert marked is not None and marked.retail.input == 167  # 111 * 1.5, half up


@pytest.mark.django_db
def test_an_event_written_without_the_search_count_has_none(event: Any) -> None:
    """A relay process of the version before web searches, still running while an upgrade
    migrates, writes its events without the column: the database fills in 0."""
    from django.db import connection

    from billing.models import UsageEvent

    written = event(prompt_tokens=10, completion_tokens=5)
    table = UsageEvent._meta.db_table
    columns = [
        f.column
        for f in UsageEvent._meta.concrete_fields
        if f.column not in ("id", "web_search_calls")
    ]
    names = ", ".join(connection.ops.quote_name(c) for c in columns)
    values = ", ".join(
        "'req-old'" if c == "request_id" else connection.ops.quote_name(c) for c in columns
    )
    with connection.cursor() as cursor:
        cursor.execute(
            # Names from the model itself, none from input.
            f"INSERT INTO {table} ({names}) SELECT {values} FROM {table} WHERE id = %s",  # noqa: S608
            [written.pk],
        )
    old = UsageEvent.objects.get(request_id="req-old")
    assert old.web_search_calls == 0 and old.prompt_tokens == 10
