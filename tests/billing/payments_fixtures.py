"""Shared set-up for the card payment tests: the Stripe stand-in, a connected reseller,
a prepaid tenant, and webhook delivery signed as Stripe signs it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from billing.models import BillingAccount, StripeAccount
from billing.selectors.balances import account_balance_micros
from billing.services import payments as pay
from tests.stripe_fake import FakeStripe, running_fake_stripe, signed

RESELLER_KEY = "sk_test_reseller_51AbCdEfGhIjKlMn"
RESELLER_WHSEC = "whsec_reseller_0123456789abcdef"
OTHER_KEY = "sk_test_other_51ZyXwVuTsRqPoNm"
OTHER_WHSEC = "whsec_other_fedcba9876543210"
USD = 1_000_000


@dataclass
class Shop:
    fake: FakeStripe
    stripe: StripeAccount
    other_stripe: StripeAccount
    account: BillingAccount

    def deliver(
        self, event: dict[str, Any], *, to: StripeAccount | None = None, secret: str = ""
    ) -> Any:
        to = to or self.stripe
        body, header = signed(event, secret or to.webhook_secret)
        return Client().post(
            reverse("stripe_webhook", args=[to.public_id]),
            data=body,
            content_type="application/json",
            HTTP_STRIPE_SIGNATURE=header,
        )

    def balance(self) -> int:
        return account_balance_micros(self.account)


@pytest.fixture
def fake_stripe(settings: Any) -> Iterator[FakeStripe]:
    with running_fake_stripe() as fake:
        settings.STRIPE_API_BASE = fake.url
        yield fake


@pytest.fixture
def shop(
    fake_stripe: FakeStripe, reseller_org: Any, other_reseller_org: Any, tenant_org: Any
) -> Shop:
    stripe = pay.stripe_account_connect(
        seller=reseller_org, secret_key=RESELLER_KEY, webhook_secret=RESELLER_WHSEC, actor="t"
    )
    other = pay.stripe_account_connect(
        seller=other_reseller_org, secret_key=OTHER_KEY, webhook_secret=OTHER_WHSEC, actor="t"
    )
    account = BillingAccount.objects.create(organization=tenant_org, currency="USD")
    return Shop(fake_stripe, stripe, other, account)
