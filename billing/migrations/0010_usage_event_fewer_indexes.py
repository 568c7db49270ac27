"""Fewer indexes on usage events, each of which every written event (one a request) paid
an insertion into: the foreign keys' own indexes, which the (key, created_at) indexes
already serve; the invoices' indexes, now only over events that are on an invoice; and
the LIKE index of request ids (bench/README.md, "Issue 18, seventh round")."""

import django.db.models.deletion
from django.db import migrations, models

# The pattern-matching (LIKE) index Django makes on PostgreSQL beside the unique one of
# every unique text column, found by what it is rather than by the name Django gave it;
# nothing looks a request id up by pattern.
LIKE_INDEXES = """
SELECT indexname FROM pg_indexes
WHERE schemaname = current_schema() AND tablename = 'billing_usageevent'
  AND indexdef LIKE '%(request_id varchar_pattern_ops)%'
"""


def drop_request_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(LIKE_INDEXES)
        names = [row[0] for row in cursor.fetchall()]
    for name in names:
        schema_editor.execute(f"DROP INDEX IF EXISTS {schema_editor.quote_name(name)}")


def restore_request_id_like_index(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(
            "CREATE INDEX IF NOT EXISTS billing_usageevent_request_id_like "
            "ON billing_usageevent (request_id varchar_pattern_ops)"
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
