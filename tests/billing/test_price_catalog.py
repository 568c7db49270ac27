"""The shipped price catalog: well formed, dated, and imported idempotently."""

from __future__ import annotations

import io
from datetime import date

import pytest
from django.core.management import call_command
from django.utils import timezone

from billing.catalog import load, parse
from billing.models import ModelPrice, PriceList
from billing.pricing import tenant_price_table
from billing.services import model_price_set, price_catalog_import, price_list_create
from portal.models import AuditEntry, CatalogModel, Organization


def test_every_figure_carries_its_check_date_and_source() -> None:
    catalog = load()
    providers = {entry.provider for entry in catalog.entries}
    assert {"openai", "anthropic", "google"} <= providers
    for entry in catalog.entries:
        assert entry.source.startswith("https://"), entry.id
        if entry.verified:
            assert entry.checked is not None
            assert date(2026, 11, 30) <= entry.checked <= timezone.now().date(), entry.id
        else:  # no provider page confirmed it: the entry says why
            assert entry.note, entry.id
        assert entry.prices["input_per_mtok"] >= 0 and "output_per_mtok" in entry.prices
    checked = {entry.id for entry in catalog.entries if entry.verified}
    assert {"claude-opus-5", "claude-opus-4-5", "claude-sonnet-5", "gpt-5-mini"} <= checked
    assert "deepseek-chat" in catalog.unverified_ids()
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


def test_an_unchecked_entry_must_say_why() -> None:
    entry = {"id": "m", "provider": "p", "checked": None, "prices": {"input": "1", "output": "2"}}
    with pytest.raises(ValueError, match="note"):
        parse({"currency": "USD", "models": [entry]})
    parsed = parse({"currency": "USD", "models": [{**entry, "note": "no page found"}]})
    assert parsed.unverified_ids() == ["m"] and parsed.checked_dates() == []


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
    assert first.unverified == catalog.unverified_ids()  # imported, and said to be unchecked
    wholesale = PriceList.objects.get(owner=platform_org, is_default=True)
    assert wholesale.currency == catalog.currency
    before = _state()

    again = price_catalog_import(actor="test")

    assert not again.changed and again.kept == []
    assert _state() == before
    # The imported figures are what the relay charges.
    model = CatalogModel.objects.get(public_id="gemini-2.5-pro")
    assert (model.context_window, model.owned_by) == (1_048_576, "google")
    assert "reasoning" in model.capabilities


@pytest.mark.django_db
def test_the_operators_own_prices_are_kept_unless_repriced(platform_org: Organization) -> None:
    wholesale = price_list_create(owner=platform_org, name="W", actor="test", is_default=True)
    mine = CatalogModel.objects.create(public_id="gpt-4o", owned_by="me", context_window=1)
    model_price_set(
        price_list=wholesale, model=mine, input_per_mtok=9, output_per_mtok=9, actor="test"
    )
    result = price_catalog_import(actor="test")
    assert result.kept == ["gpt-4o"]
    mine.refresh_from_db()
    assert (mine.owned_by, mine.context_window) == ("me", 1)  # the operator's, not changed
    assert ModelPrice.objects.filter(model=mine).count() == 1

    repriced = price_catalog_import(actor="test", reprice=True)
    assert repriced.repriced == ["gpt-4o"]
    current = ModelPrice.objects.filter(model=mine).order_by("-effective_from").first()
    assert current is not None and current.input_per_mtok == 2_500_000
    assert not price_catalog_import(actor="test", reprice=True).changed


@pytest.mark.django_db
def test_the_command_imports_and_reports(platform_org: Organization) -> None:
    out = io.StringIO()
    call_command("import_price_catalog", stdout=out)
    assert "Priced: " in out.getvalue()
    assert "checked against the provider's page 2026-11-30" in out.getvalue()
    assert "Unverified (no provider page confirmed" in out.getvalue()
    assert "deepseek-chat" in out.getvalue().split("Unverified")[1]
    out = io.StringIO()
    call_command("import_price_catalog", stdout=out)
    assert "Nothing to change." in out.getvalue()
    tenant = Organization.objects.create(
        name="T", slug="t", kind=Organization.Kind.TENANT, parent=platform_org
    )
    table = tenant_price_table(tenant.pk)
    assert table["claude-sonnet-4-5"].retail.cache_write_5m == 3_750_000
