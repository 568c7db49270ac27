"""Invoice lines become one per model, price dimension and unit price.

A line written before keeps its amount as a single ``usage`` line, its old unit prices and
token counts moved into ``detail``, so issued invoices still read as issued.
"""

from typing import Any

from django.db import migrations, models

OLD_FIELDS = (
    "input_per_mtok",
    "cached_input_per_mtok",
    "output_per_mtok",
    "request_fee_micros",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
)


def keep_old_lines(apps: Any, schema_editor: Any) -> None:
    InvoiceLine = apps.get_model("billing", "InvoiceLine")
    for line in InvoiceLine.objects.all().iterator():
        if line.kind in ("plan_fee", "plan_credit"):  # no usage: nothing to keep
            line.dimension = line.unit = ""
            line.save(update_fields=["dimension", "unit"])
            continue
        line.dimension = "usage"
        line.unit = "request"
        line.quantity = line.requests
        line.detail = {name: getattr(line, name) for name in OLD_FIELDS}
        line.save(update_fields=["dimension", "unit", "quantity", "detail"])


class Migration(migrations.Migration):
    dependencies = [("billing", "0007_price_dimensions")]

    operations = [
        migrations.AddField(
            model_name="invoiceline",
            name="dimension",
            field=models.CharField(blank=True, default="usage", max_length=32),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="unit",
            field=models.CharField(blank=True, default="request", max_length=16),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="unit_price_micros",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="quantity",
            field=models.PositiveBigIntegerField(default=0),
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="service_tier",
            field=models.CharField(blank=True, max_length=16),
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="long_context",
            field=models.BooleanField(default=False),
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="detail",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AlterField(
            model_name="invoiceline",
            name="requests",
            field=models.PositiveBigIntegerField(
                default=0, help_text="Requests that were charged in this line."
            ),
        ),
        migrations.RunPython(keep_old_lines, migrations.RunPython.noop),
        *(migrations.RemoveField(model_name="invoiceline", name=name) for name in OLD_FIELDS),
    ]
