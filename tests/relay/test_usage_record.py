"""A usage record's queued form: every field comes back, the prompt travels only when it
must be counted locally, and text orjson refuses is escaped rather than lost."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

import orjson

from billing.pricing import PricePair, Prices, total_micros
from relay import tokens
from relay.metering import Usage, UsageRecord

RETAIL = Prices(input=150_000, cached_input=75_000, output=600_000, request_fee=10, currency="EUR")
WHOLESALE = dataclasses.replace(RETAIL, input=100_000, output=400_000)
MESSAGES = [{"role": "user", "content": "Count me."}]


def _record(**changes: Any) -> UsageRecord:
    record = UsageRecord(
        request_id="req_queued",
        created_at=datetime(2026, 11, 30, 7, 30, 1, 123456, tzinfo=UTC),
        tenant_id=3,
        api_key_id=9,
        model="gpt-test",
        stream=True,
        status_code=200,
        total_latency_ms=41,
        channel_id=5,
        upstream_latency_ms=12,
        attempts=[{"channel_id": 5, "status": 200}],
        usage=Usage(prompt_tokens=30, completion_tokens=7, cached_tokens=4),
        price=PricePair(RETAIL, WHOLESALE, 77),
        spend_scopes=("t3:funds",),
    )
    return dataclasses.replace(record, **changes)


def _queued(record: UsageRecord) -> dict[str, Any]:
    return dict(orjson.loads(record.to_json()))


def test_a_record_comes_back_whole() -> None:
    for record in (
        _record(),
        _record(usage=None, prompt_messages=MESSAGES, completion_text=["Counted ", "here."]),
        _record(price=None, usage=None, status_code=502, error_code="upstream_error"),
    ):
        assert UsageRecord.from_json(record.to_json()) == record


def test_the_prompt_travels_only_when_it_must_be_counted() -> None:
    counted = _record(prompt_messages=MESSAGES, prompt_tools=[{"type": "function"}])
    assert _queued(counted)["prompt_messages"] is None
    assert _queued(counted)["prompt_tools"] is None
    uncounted = _record(usage=None, prompt_messages=MESSAGES, completion_text=["Hi"])
    assert _queued(uncounted)["prompt_messages"] == MESSAGES
    assert _queued(uncounted)["completion_text"] == ["Hi"]
    # An error that reached no model: nothing to count.
    refused = _record(usage=None, status_code=429, prompt_messages=MESSAGES)
    assert _queued(refused)["prompt_messages"] is None


def test_every_field_is_queued_under_its_name() -> None:
    queued = _queued(_record())
    names = [f.name for f in dataclasses.fields(UsageRecord)]
    # The price last: a reader takes it by its bytes and parses only the rest. No prompt
    # counts of a stream's start and no web searches: not queued at all, as before there
    # were any, so a process of the version before reads the record as it did.
    unqueued = ("price", "prompt_usage", "web_search_calls")
    assert list(queued) == [n for n in names if n not in unqueued] + ["price"]
    assert queued["created_at"] == "2026-11-30T07:30:01.123456+00:00"
    assert queued["price"]["retail"]["input"] == 150_000
    assert queued["usage"]["cached_tokens"] == 4
    assert "web_search_calls" not in queued["usage"]
    assert "web_search" not in queued["price"]["retail"]  # not offered: as before


def test_web_searches_and_their_price_are_queued_when_there_are_any() -> None:
    pair = _record().price
    assert pair is not None
    searched = dataclasses.replace(pair.retail, web_search=10_000)
    record = _record(
        price=PricePair(searched, searched, None),
        usage=Usage(prompt_tokens=30, completion_tokens=5, web_search_calls=2),
        web_search_calls=3,
    )
    queued = _queued(record)
    assert queued["web_search_calls"] == 3
    assert queued["usage"]["web_search_calls"] == 2
    assert queued["price"]["retail"]["web_search"] == 10_000
    back = UsageRecord.from_json(record.to_json())
    assert back == record
    # The blocks counted on the way (3) bill over the provider's figure (2).
    assert back.counts()[0].web_search_calls == 3
    assert back.known_cost() == total_micros(
        searched, Usage(prompt_tokens=30, completion_tokens=5, web_search_calls=3)
    )


def test_a_cut_stream_is_billed_for_its_prompt_counts_and_its_text_counted_here() -> None:
    """A stream cut after the provider counted its prompt (Anthropic's message_start) but
    before its usage: the prompt's counts are the provider's, cache reads and writes and
    tier included; only the output is counted here, from the text delivered."""
    opening = Usage(
        prompt_tokens=120,
        completion_tokens=1,
        cached_tokens=100,
        cache_write_tokens=5,
        service_tier="priority",
    )
    record = _record(
        usage=None,
        prompt_usage=opening,
        prompt_messages=MESSAGES,
        completion_text=["Once upon ", "a time there was"],
        completed=False,
    )
    queued = _queued(record)
    assert queued["prompt_messages"] is None  # the provider counted the prompt
    assert queued["completion_text"] == ["Once upon ", "a time there was"]
    assert queued["prompt_usage"]["cached_tokens"] == 100
    back = UsageRecord.from_json(record.to_json())
    assert back == dataclasses.replace(record, prompt_messages=None)
    usage, estimated = back.counts()
    assert estimated
    assert usage == dataclasses.replace(
        opening, completion_tokens=tokens.count_text("Once upon a time there was")
    )
    assert usage.completion_tokens > 1


def test_text_orjson_refuses_is_escaped_not_lost() -> None:
    record = _record(usage=None, completion_text=["lone \ud800 surrogate"])
    back = UsageRecord.from_json(record.to_json())
    assert back.completion_text == ["lone \ud800 surrogate"]


def test_records_of_one_price_share_it_once_read() -> None:
    first = UsageRecord.from_json(_record().to_json())
    second = UsageRecord.from_json(_record(request_id="req_other").to_json())
    assert first.price == PricePair(RETAIL, WHOLESALE, 77)
    assert first.price is second.price
    other = UsageRecord.from_json(_record(price=PricePair(RETAIL, RETAIL, None)).to_json())
    assert other.price == PricePair(RETAIL, RETAIL, None)


def test_a_price_is_queued_as_itself_however_often_it_is_written() -> None:
    pair = PricePair(RETAIL, WHOLESALE, 77)
    first = _record(price=pair).to_json()
    again = _record(price=pair).to_json()
    other = _record(price=PricePair(WHOLESALE, WHOLESALE, None)).to_json()
    assert first == again
    assert PricePair.from_dict(orjson.loads(first)["price"]) == pair
    assert orjson.loads(other)["price"]["retail"]["input"] == 100_000
    assert orjson.loads(other)["price"]["reseller_id"] is None


class _Details(dict[str, Any]):
    """A mapping that is not exactly a dict (what a JSON library of another kind gives)."""


def test_openai_usage_takes_positive_whole_numbers_only() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 120,
            "completion_tokens": 30,
            "prompt_tokens_details": _Details(cached_tokens=100, audio_tokens=True),
            "completion_tokens_details": {"reasoning_tokens": 12, "audio_tokens": 2.0},
        },
        "priority",
    )
    assert usage == Usage(
        prompt_tokens=120,
        completion_tokens=30,
        cached_tokens=100,
        reasoning_tokens=12,
        service_tier="priority",
    )
    odd = Usage.from_openai(
        {
            "prompt_tokens": -5,
            "completion_tokens": "7",
            "prompt_tokens_details": [1, 2],
            "completion_tokens_details": None,
        },
        "standard",
    )
    assert odd == Usage()
    assert Usage.from_openai([("prompt_tokens", 3)]) is None
    assert Usage.from_openai(None) is None


def test_a_price_read_by_its_bytes_is_the_records_own() -> None:
    from relay.metering import records

    # The common case takes the price by its bytes, without parsing it.
    assert records._with_price_by_bytes(_record().to_json()) is not None
    pair = PricePair(RETAIL, WHOLESALE, 77)
    priced = orjson.dumps(pair).decode()
    # A client's messages (kept when the usage must be counted locally) may hold what
    # looks like the tail of a queued record, another price included.
    trap = [
        {"role": "user", "content": "x", "price": orjson.loads(priced)},
        {"role": "user", "content": f',"price":{priced}}}'},
    ]
    cheaper = PricePair(WHOLESALE, WHOLESALE, None)
    for record in (
        _record(usage=None, prompt_messages=trap, completion_text=["a"], price=cheaper),
        _record(usage=None, prompt_messages=trap, completion_text=["a"], price=None),
        _record(usage=None, prompt_messages=trap, completion_text=["a"]),
    ):
        assert UsageRecord.from_json(record.to_json()) == record


def test_a_record_queued_with_its_price_elsewhere_is_read_whole() -> None:
    # As queued before the price went last (a relay of the previous version, mid-upgrade).
    record = _record(usage=None, prompt_messages=MESSAGES, completion_text=["a"])
    fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(UsageRecord)}
    fields["created_at"] = record.created_at.isoformat()
    older = orjson.dumps(fields)
    assert older.index(b'"price"') < older.index(b'"prompt_messages"')
    assert UsageRecord.from_json(older) == record
