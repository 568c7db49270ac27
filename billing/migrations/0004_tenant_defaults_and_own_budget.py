"""Safe defaults for money: new accounts are prepaid, sellers get default terms for new
tenants, and a customer's own budget sits beside its seller's.

Existing data keeps what it was served on: every reseller (and the platform) gets prepaid
defaults for tenants created from now on, and each existing tenant without an account,
which was served postpaid without limit until now, gets those terms written down, so an
upgrade cuts nobody off. Sellers can then change either on the dashboard.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def forwards(apps, schema_editor):
    Organization = apps.get_model("portal", "Organization")
    BillingAccount = apps.get_model("billing", "BillingAccount")
    TenantDefaults = apps.get_model("billing", "TenantDefaults")
    for seller in Organization.objects.filter(kind__in=("platform", "reseller")):
        TenantDefaults.objects.get_or_create(seller=seller, defaults={"mode": "prepaid"})
    for tenant in Organization.objects.filter(kind="tenant", billing_account__isnull=True):
        BillingAccount.objects.create(
            organization=tenant,
            mode="postpaid",
            currency=settings.BILLING_DEFAULT_CURRENCY,
            alert_thresholds=[50, 80, 100],
        )


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0003_usage_surface'),
        ('portal', '0003_personal_access_tokens'),
    ]

    operations = [
        migrations.AddField(
            model_name='billingaccount',
            name='own_budget_hard_stop',
            field=models.BooleanField(default=False, help_text="Refuse requests once the customer's own budget is spent."),
        ),
        migrations.AddField(
            model_name='billingaccount',
            name='own_budget_micros',
            field=models.PositiveBigIntegerField(blank=True, help_text="The customer's own monthly budget.", null=True),
        ),
        migrations.AlterField(
            model_name='billingaccount',
            name='mode',
            field=models.CharField(choices=[('prepaid', 'Prepaid (spends a balance)'), ('postpaid', 'Postpaid (invoiced)')], default='prepaid', max_length=16),
        ),
        migrations.CreateModel(
            name='TenantDefaults',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('mode', models.CharField(choices=[('prepaid', 'Prepaid (spends a balance)'), ('postpaid', 'Postpaid (invoiced)')], default='prepaid', max_length=16)),
                ('credit_limit_micros', models.PositiveBigIntegerField(blank=True, help_text='Postpaid: the most a new tenant may owe; blank means no limit.', null=True)),
                ('updated_at', models.DateTimeField(auto_now=True)),
                ('seller', models.OneToOneField(on_delete=django.db.models.deletion.CASCADE, related_name='tenant_defaults', to='portal.organization')),
            ],
            options={
                'verbose_name_plural': 'tenant defaults',
            },
        ),
        migrations.RunPython(forwards, migrations.RunPython.noop),
    ]
