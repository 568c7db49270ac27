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
    assert (sol.prices["input_per_mtok"], sol.prices["output_per_mtok"]) == (4_000_000, 20_000_000)
    assert sol.prices["cache_write_5m_per_mtok"] == 5_000_000  # 1.25x the input price
    assert sol.long_context_above_tokens == 272_000
    assert sol.long_context_prices["input"] == 8_000_000
    assert sol.long_context_prices["output"] == 30_000_000
    gemini = catalog.by_id()["gemini-3.5-flash"]
    assert gemini.source == "https://ai.google.dev/gemini-api/docs/pricing"
    assert gemini.source_copy_read == date(2026, 10, 7)
    assert "context_window" in gemini.unverified
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
    entry = {
        "id": "m",
        "provider": "p",
        "checked": checked,
        "source": "https://example.com/m",
        "prices": {"input": "1", "output": "2"},
    }
    with pytest.raises(ValueError, match="checked must be an ISO date"):
        parse({"currency": "USD", "models": [entry]})
    del entry["checked"]
    with pytest.raises(ValueError, match="checked must be an ISO date"):
        parse({"currency": "USD", "models": [entry]})


def test_a_copy_of_the_providers_page_is_named_and_dated() -> None:
    entry = {
        "id": "m",
        "provider": "p",
        "checked": "2026-11-30",
        "source": "https://example.com/pricing",
        "prices": {"input": "1", "output": "2"},
    }
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
    wholesale = PriceList.objects.get(owner=platform_org, is_default=True)
    assert wholesale.currency == catalog.currency
    before = _state()

    again = price_catalog_import(actor="test")

    assert not again.changed and again.kept == []
    assert _state() == before
    # The imported figures are what the relay charges.
    model = CatalogModel.objects.get(public_id="gemini-3.5-flash")
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
    assert "gemini-3.5-flash (copy read 2026-10-07)" in out.getvalue()
    out = io.StringIO()
    call_command("import_price_catalog", stdout=out)
    assert "Nothing to change." in out.getvalue()
    tenant = Organization.objects.create(
        name="T", slug="t", kind=Organization.Kind.TENANT, parent=platform_org
    )
    table = tenant_price_table(tenant.pk)
    assert table["claude-sonnet-4-5"].retail.cache_write_5m == 3_750_000
