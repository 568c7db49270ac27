"""The shipped price catalog: well formed, dated, and imported idempotently."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime, timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from billing.catalog import load, parse
from billing.models import ModelPrice, PriceList
from billing.pricing import tenant_price_table
from billing.services import model_price_set, price_catalog_import, price_list_create
from portal.models import AuditEntry, CatalogModel, Organization

# A well-formed entry, for the tests that spoil one field of it.
ENTRY = {
    "id": "m",
    "provider": "p",
    "checked": "2026-11-30",
    "source": "https://example.com/pricing",
    "prices": {"input": "1", "output": "2"},
}


def test_every_figure_carries_its_check_date_and_source() -> None:
    catalog = load()
    providers = {entry.provider for entry in catalog.entries}
    assert {"openai", "anthropic", "google", "deepseek", "xai"} <= providers
    for entry in catalog.entries:
        assert entry.source.startswith("https://"), entry.id
        assert isinstance(entry.checked, date), entry.id
        assert date(2026, 11, 30) <= entry.checked <= timezone.now().date(), entry.id
        if entry.source_copy_url:  # read through a copy: the copy is named and dated
            assert entry.source_copy_read is not None and entry.note, entry.id
            assert entry.source_copy_read <= entry.checked
        assert entry.prices["input_per_mtok"] >= 0 and "output_per_mtok" in entry.prices
    ids = set(catalog.by_id())
    assert {"claude-opus-5", "claude-sonnet-5", "gpt-5.6-sol", "gpt-5.4", "gpt-5-mini"} <= ids
    # Models no stored provider page confirmed are not shipped at all.
    assert not ids & {"gpt-4o", "deepseek-chat", "gemini-2.5-pro", "grok-4", "mistral-medium-3"}
    sol = catalog.by_id()["gpt-5.6-sol"]
    assert (sol.prices["input_per_mtok"], sol.prices["output_per_mtok"]) == (5_000_000, 30_000_000)
    assert sol.prices["cache_write_5m_per_mtok"] == 6_250_000  # 1.25x the input price
    assert sol.long_context_above_tokens == 272_000
    assert sol.long_context_prices["input"] == 10_000_000
    assert sol.long_context_prices["output"] == 45_000_000
    gemini = catalog.by_id()["gemini-3.1-pro-preview"]
    assert gemini.source == "https://ai.google.dev/gemini-api/docs/pricing"
    assert gemini.source_copy_read == date(2026, 10, 7)
    assert gemini.long_context_above_tokens == 200_000
    assert gemini.long_context_prices == {"input": 4_000_000, "output": 18_000_000}
    # Google has announced Gemini 3.8 Flash's price from 2027: the catalog holds both.
    flash = catalog.by_id()["gemini-3.8-flash"]
    turn = datetime(2027, 1, 1, tzinfo=UTC)
    assert [change.effective_from for change in flash.scheduled] == [turn]
    before, after = flash.prices_at(turn - timedelta(seconds=1)), flash.prices_at(turn)
    assert (before["input_per_mtok"], before["output_per_mtok"]) == (750_000, 3_750_000)
    assert (after["input_per_mtok"], after["output_per_mtok"]) == (1_500_000, 7_500_000)
    sonnet = catalog.by_id()["claude-sonnet-4-5"]
    assert sonnet.prices["cache_write_1h_per_mtok"] == 6_000_000
    assert sonnet.long_context_above_tokens == 200_000
    assert sonnet.long_context_prices["input"] == 6_000_000
    assert "cache_write_1h" in sonnet.unverified  # the page showed input and output only
    opus = catalog.by_id()["claude-opus-5"]
    assert (opus.prices["input_per_mtok"], opus.prices["output_per_mtok"]) == (
        5_000_000,
        25_000_000,
    )
    assert opus.prices["cache_write_5m_per_mtok"] == 6_250_000


@pytest.mark.parametrize("checked", [None, "", "30/11/2026", "2026-13-01", 20261130, "soon"])
def test_a_model_without_an_iso_check_date_is_refused(checked: object) -> None:
    entry = {**ENTRY, "checked": checked}
    with pytest.raises(ValueError, match="checked must be an ISO date"):
        parse({"currency": "USD", "models": [entry]})
    del entry["checked"]
    with pytest.raises(ValueError, match="checked must be an ISO date"):
        parse({"currency": "USD", "models": [entry]})


def test_a_copy_of_the_providers_page_is_named_and_dated() -> None:
    entry = dict(ENTRY)
    copy = {"url": "https://example.org/copy", "read": "2026-10-07"}
    parsed = parse({"currency": "USD", "models": [{**entry, "source_copy": copy}]})
    assert parsed.entries[0].source_copy_read == date(2026, 10, 7)
    assert parsed.checked_dates() == [date(2026, 11, 30)]
    for bad in (
        {"url": "https://example.org/copy"},
        {**copy, "read": "later"},
        {**copy, "read": "2026-12-01"},
    ):
        with pytest.raises(ValueError, match="source_copy"):
            parse({"currency": "USD", "models": [{**entry, "source_copy": bad}]})
    with pytest.raises(ValueError, match="unknown fields"):
        parse({"currency": "USD", "models": [{**entry, "checked_on": "2026-11-30"}]})
    with pytest.raises(ValueError, match="source"):
        parse({"currency": "USD", "models": [{**entry, "source": ""}]})


def test_a_scheduled_price_is_dated_and_in_order() -> None:
    entry = dict(ENTRY)
    later = {"from": "2027-01-01T00:00:00+00:00", "prices": {"input": "2", "output": "4"}}
    parsed = parse({"currency": "USD", "models": [{**entry, "scheduled": [later]}]})
    assert parsed.entries[0].prices_at(datetime(2027, 1, 1, tzinfo=UTC))["input_per_mtok"] == (
        2_000_000
    )
    for bad in (
        [{**later, "from": "2027-01-01T00:00:00"}],  # no time zone
        [{**later, "from": "January 2027"}],
        [{**later, "prices": {"input": "2"}}],  # no output price
        [later, later],  # twice the same moment
        [{"from": later["from"]}],
    ):
        with pytest.raises(ValueError):
            parse({"currency": "USD", "models": [{**entry, "scheduled": bad}]})


def _state() -> tuple[list[tuple], list[tuple], int]:
    return (
        list(CatalogModel.objects.order_by("pk").values_list()),
        list(ModelPrice.objects.order_by("pk").values_list()),
        AuditEntry.objects.count(),
    )


@pytest.mark.django_db
def test_importing_twice_changes_nothing(platform_org: Organization) -> None:
    catalog = load()
    first = price_catalog_import(actor="test")
    assert sorted(first.models_created) == sorted(e.id for e in catalog.entries)
    assert sorted(first.priced) == sorted(e.id for e in catalog.entries)
    assert first.scheduled == ["gemini-3.8-flash"]  # its announced 2027 price, scheduled
    wholesale = PriceList.objects.get(owner=platform_org, is_default=True)
    assert wholesale.currency == catalog.currency
    before = _state()

    again = price_catalog_import(actor="test")

    assert not again.changed and again.kept == []
    assert _state() == before
    # The imported figures are what the relay charges.
    model = CatalogModel.objects.get(public_id="gemini-3.1-pro-preview")
    assert (model.context_window, model.owned_by) == (1_048_576, "google")
    assert "reasoning" in model.capabilities


@pytest.mark.django_db
def test_the_operators_own_prices_are_kept_unless_repriced(platform_org: Organization) -> None:
    wholesale = price_list_create(owner=platform_org, name="W", actor="test", is_default=True)
    mine = CatalogModel.objects.create(public_id="gpt-5.4", owned_by="me", context_window=1)
    model_price_set(
        price_list=wholesale, model=mine, input_per_mtok=9, output_per_mtok=9, actor="test"
    )
    result = price_catalog_import(actor="test")
    assert result.kept == ["gpt-5.4"]
    mine.refresh_from_db()
    assert (mine.owned_by, mine.context_window) == ("me", 1)  # the operator's, not changed
    assert ModelPrice.objects.filter(model=mine).count() == 1

    repriced = price_catalog_import(actor="test", reprice=True)
    assert repriced.repriced == ["gpt-5.4"]
    current = ModelPrice.objects.filter(model=mine).order_by("-effective_from").first()
    assert current is not None and current.input_per_mtok == 2_500_000
    assert not price_catalog_import(actor="test", reprice=True).changed


@pytest.mark.django_db
def test_the_command_imports_and_reports(platform_org: Organization) -> None:
    out = io.StringIO()
    call_command("import_price_catalog", stdout=out)
    assert "Priced: " in out.getvalue()
    assert "checked against the provider's page 2026-11-30 to 2026-11-30" in out.getvalue()
    assert "gemini-3.8-flash (copy read 2026-10-07)" in out.getvalue()
    assert "Announced later prices scheduled: gemini-3.8-flash" in out.getvalue()
    out = io.StringIO()
    call_command("import_price_catalog", stdout=out)
    assert "Nothing to change." in out.getvalue()
    tenant = Organization.objects.create(
        name="T", slug="t", kind=Organization.Kind.TENANT, parent=platform_org
    )
    table = tenant_price_table(tenant.pk)
    assert table["claude-sonnet-4-5"].retail.cache_write_5m == 3_750_000


@pytest.mark.django_db
def test_an_announced_price_is_charged_from_its_moment(platform_org: Organization) -> None:
    turn = datetime(2027, 1, 1, tzinfo=UTC)
    tenant = Organization.objects.create(
        name="T", slug="t", kind=Organization.Kind.TENANT, parent=platform_org
    )
    with time_machine.travel(datetime(2026, 12, 1, tzinfo=UTC), tick=False):
        price_catalog_import(actor="test")
    model = CatalogModel.objects.get(public_id="gemini-3.8-flash")
    assert ModelPrice.objects.filter(model=model).count() == 2
    just_before = tenant_price_table(tenant.pk, at=turn - timedelta(seconds=1))
    assert just_before["gemini-3.8-flash"].wholesale.input == 750_000
    at_turn = tenant_price_table(tenant.pk, at=turn)["gemini-3.8-flash"].wholesale
    assert (at_turn.input, at_turn.output) == (1_500_000, 7_500_000)
    before = _state()
    with time_machine.travel(turn + timedelta(days=1), tick=False):
        assert not price_catalog_import(actor="test").changed  # already in force
    assert _state() == before


@pytest.mark.django_db
def test_an_import_after_the_announced_moment_prices_the_later_price(
    platform_org: Organization,
) -> None:
    with time_machine.travel(datetime(2027, 1, 2, tzinfo=UTC), tick=False):
        result = price_catalog_import(actor="test")
    assert "gemini-3.8-flash" in result.priced and result.scheduled == []
    rows = ModelPrice.objects.filter(model__public_id="gemini-3.8-flash")
    assert [(row.input_per_mtok, row.output_per_mtok) for row in rows] == [(1_500_000, 7_500_000)]


@pytest.mark.django_db
def test_an_operator_priced_model_gets_no_announced_price(platform_org: Organization) -> None:
    wholesale = price_list_create(owner=platform_org, name="W", actor="test", is_default=True)
    mine = CatalogModel.objects.create(public_id="gemini-3.8-flash", owned_by="me")
    model_price_set(
        price_list=wholesale, model=mine, input_per_mtok=9, output_per_mtok=9, actor="test"
    )
    result = price_catalog_import(actor="test")
    assert result.kept == ["gemini-3.8-flash"] and result.scheduled == []
    assert ModelPrice.objects.filter(model=mine).count() == 1
    # The operator scheduled their own price at the announced moment: it is not replaced.
    model_price_set(
        price_list=wholesale,
        model=mine,
        input_per_mtok=750_000,
        output_per_mtok=3_750_000,
        actor="test",
    )
    model_price_set(
        price_list=wholesale,
        model=mine,
        input_per_mtok=1,
        output_per_mtok=1,
        effective_from=datetime(2027, 1, 1, tzinfo=UTC),
        actor="test",
    )
    again = price_catalog_import(actor="test", reprice=True)
    assert again.kept == ["gemini-3.8-flash"] and again.scheduled == []
    assert ModelPrice.objects.filter(model=mine).count() == 3
