"""Fewer indexes on usage events, each of which every written event (one a request) paid
an insertion into: the foreign keys' own indexes, which the (key, created_at) indexes
already serve; the invoices' indexes, now only over events that are on an invoice; and
the LIKE index of request ids (bench/README.md, "Issue 18, seventh round")."""

import django.db.models.deletion
from django.db import migrations, models


def _like_index(schema_editor):
    """The pattern-matching (LIKE) index Django makes on PostgreSQL beside the unique one
    of every unique text column; nothing looks a request id up by pattern."""
    return schema_editor._create_index_name("billing_usageevent", ["request_id"], suffix="_like")


def drop_request_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            f"DROP INDEX IF EXISTS {schema_editor.quote_name(_like_index(schema_editor))}"
        )


def restore_request_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        name = schema_editor.quote_name(_like_index(schema_editor))
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON billing_usageevent "
            "(request_id varchar_pattern_ops)"
        )


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0009_ledger_card_dispute"),
        ("portal", "0007_sso_providers"),
    ]

    operations = [
        migrations.RunPython(drop_request_id_like_index, restore_request_id_like_index),
        migrations.AlterField(
            model_name="usageevent",
            name="api_key",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="usage_events",
                to="portal.apikey",
            ),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="reseller",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                help_text="The reseller that sold this request, when the tenant has one.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="resold_usage_events",
                to="portal.organization",
            ),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="reseller_invoice",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="billing.invoice",
            ),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="tenant",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="usage_events",
                to="portal.organization",
            ),
        ),
        migrations.AlterField(
            model_name="usageevent",
            name="tenant_invoice",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="+",
                to="billing.invoice",
            ),
        ),
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(("tenant_invoice__isnull", False)),
                fields=["tenant_invoice"],
                name="usageevent_tenant_invoice",
            ),
        ),
        migrations.AddIndex(
            model_name="usageevent",
            index=models.Index(
                condition=models.Q(("reseller_invoice__isnull", False)),
                fields=["reseller_invoice"],
                name="usageevent_reseller_invoice",
            ),
        ),
    ]
