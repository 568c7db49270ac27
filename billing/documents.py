"""Invoice documents: PDF (fpdf2, core fonts) and CSV, each returned as bytes.

Amounts are printed exactly, to the micro-unit where needed, so the printed lines add up
to the printed total. fpdf2 is imported when a PDF is made, not with this module: the
views import it, and every management command that loads the URLconf would otherwise pay
for fpdf's (and fontTools') import on each start.
"""

from __future__ import annotations

import csv
import io

from django.conf import settings
from django.urls import reverse

from billing.models import Invoice, InvoiceLine, StripeAccount
from billing.money import format_micros
from billing.periods import Period
from billing.pricing import LABELS

ROUNDING_NOTE = (
    "Each line is one model's charges in one price dimension at one unit price; its amount "
    "is the sum of its requests' charges, each rounded once to the nearest 0.000001 "
    "{currency} (halves up). Token prices are per million tokens; reasoning tokens are "
    "billed as output tokens."
)
UNIT_NAMES = {"mtok": "1M tokens", "image": "image", "request": "request"}


def _latin1(text: str) -> str:
    """The PDF core fonts cover Latin-1 only; anything else prints as '?'."""
    return text.encode("latin-1", "replace").decode("latin-1")


def _title(invoice: Invoice) -> str:
    if invoice.status == Invoice.Status.DRAFT:
        return "DRAFT INVOICE"
    if invoice.status == Invoice.Status.VOID:
        return f"INVOICE {invoice.number} (VOID)"
    return f"INVOICE {invoice.number}"


def line_label(line: InvoiceLine) -> str:
    """The dimension as a reader says it, with the tiers that priced it."""
    if not line.dimension:  # a plan's fee or credit: its label says it all
        return ""
    label = LABELS.get(line.dimension, "Usage")
    extras = []
    if line.long_context:
        extras.append("long context")
    if line.service_tier:
        extras.append(f"{line.service_tier} tier")
    return f"{label} ({', '.join(extras)})" if extras else label


def _quantity(line: InvoiceLine) -> str:
    if not line.dimension:
        return ""
    if line.unit == "mtok":
        return f"{line.quantity:,} tokens"
    return f"{line.quantity:,}"


def _unit_price(line: InvoiceLine) -> str:
    if not line.dimension:
        return ""
    if line.dimension == "usage":
        return "see detail"
    return f"{format_micros(line.unit_price_micros)} / {UNIT_NAMES.get(line.unit, line.unit)}"


def payment_link(invoice: Invoice) -> str:
    """Where the customer pays an issued invoice by card, if its issuer takes cards."""
    if invoice.status != Invoice.Status.ISSUED:
        return ""
    connected = StripeAccount.objects.filter(seller_id=invoice.issuer_id).exclude(
        secret_key_ciphertext=""
    )
    if not connected.exists():
        return ""
    path = reverse("payments", args=[invoice.customer.slug])
    return settings.TOLLGATE_PUBLIC_URL.rstrip("/") + path


def invoice_pdf(invoice: Invoice) -> bytes:
    """The invoice as a one- or more-page A4 PDF."""
    from fpdf import FPDF
    from fpdf.fonts import FontFace

    lines = list(invoice.lines.order_by("position"))
    period = Period(invoice.period_start, invoice.period_end)
    currency = invoice.currency
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_title(_latin1(_title(invoice)))
    pdf.set_author(_latin1(invoice.issuer.name))
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    pdf.set_font("Helvetica", style="B", size=16)
    pdf.cell(0, 10, _latin1(_title(invoice)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    facts = [
        ("From", invoice.issuer.name),
        ("Bill to", invoice.customer.name),
        ("Period", f"{period.start:%Y-%m-%d} to {period.end:%Y-%m-%d} (exclusive), UTC"),
        ("Issued", f"{invoice.issued_at:%Y-%m-%d}" if invoice.issued_at else "not issued"),
        ("Currency", currency),
        ("Status", invoice.get_status_display()),
    ]
    link = payment_link(invoice)
    if link:
        facts.append(("Pay online", link))
    for label, value in facts:
        pdf.cell(30, 6, _latin1(f"{label}:"))
        pdf.cell(0, 6, _latin1(value), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", size=8)
    with pdf.table(
        col_widths=(40, 52, 32, 38, 28),
        text_align=("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT"),
        headings_style=FontFace(emphasis="BOLD"),
        line_height=5,
    ) as table:
        table.row(("Model", "Dimension", "Quantity", f"Unit price {currency}", "Amount"))
        for line in lines:
            table.row(
                (
                    _latin1(line.label),
                    _latin1(line_label(line)),
                    _quantity(line),
                    _unit_price(line),
                    format_micros(line.amount_micros),
                )
            )
    pdf.ln(4)
    pdf.set_font("Helvetica", size=10)
    tax_label = "Tax"
    if invoice.tax_rate_percent is not None:
        tax_label = f"Tax ({invoice.tax_rate_percent.normalize():f} %)"
    totals = [
        ("Subtotal", invoice.subtotal_micros),
        (tax_label, invoice.tax_micros),
        ("Total", invoice.total_micros),
    ]
    for label, amount in totals:
        if label == "Total":
            pdf.set_font("Helvetica", style="B", size=11)
        pdf.cell(150, 7, _latin1(label), align="R")
        pdf.cell(
            40, 7, f"{format_micros(amount)} {currency}", align="R", new_x="LMARGIN", new_y="NEXT"
        )
    pdf.ln(6)
    pdf.set_font("Helvetica", size=7)
    pdf.multi_cell(0, 4, _latin1(ROUNDING_NOTE.format(currency=currency)))
    return bytes(pdf.output())


CSV_COLUMNS = (
    "row_type",
    "invoice",
    "period",
    "currency",
    "model",
    "dimension",
    "service_tier",
    "long_context",
    "unit",
    "unit_price",
    "quantity",
    "requests",
    "amount",
    "amount_micros",
)


def invoice_csv(invoice: Invoice) -> bytes:
    """One row per line (model, dimension, unit price), then subtotal, tax and total rows;
    amounts as exact decimals in currency units and, for machines, in micro-units."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    common = [
        invoice.number or "DRAFT",
        Period(invoice.period_start, invoice.period_end).label,
        invoice.currency,
    ]

    def money(micros: int) -> str:
        return format_micros(micros, min_decimals=0, grouping=False)

    for line in invoice.lines.order_by("position"):
        writer.writerow(
            [
                "line",
                *common,
                line.label,
                line.dimension,
                line.service_tier,
                "yes" if line.long_context else "",
                line.unit,
                money(line.unit_price_micros) if line.dimension else "",
                line.quantity,
                line.requests,
                money(line.amount_micros),
                line.amount_micros,
            ]
        )
    blank = [""] * 8
    for row_type, amount in (
        ("subtotal", invoice.subtotal_micros),
        ("tax", invoice.tax_micros),
        ("total", invoice.total_micros),
    ):
        writer.writerow([row_type, *common, *blank, money(amount), amount])
    return buffer.getvalue().encode("utf-8")
