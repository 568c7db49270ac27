"""The one place that talks to Stripe, through the official ``stripe`` library.

Each call uses the seller's own secret key (a ``StripeClient`` per call: keys differ by
seller and may change). ``STRIPE_API_BASE`` points the library elsewhere; only tests set
it, to their loopback stand-in. Amounts cross this boundary in Stripe's minor units.

The library is imported on first use (~0.2 s, with its HTTP clients): the dashboard's
URLconf and the billing services import this module, and most processes never pay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings

from billing.models import StripeAccount

# Currencies Stripe counts in whole units (docs.stripe.com/currencies#zero-decimal).
ZERO_DECIMAL = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()  # noqa: SIM905
)
MICROS = 1_000_000

if TYPE_CHECKING:
    import stripe

    # What __getattr__ below answers at run time, for the type checker.
    from stripe import CardError as CardError
    from stripe import SignatureVerificationError as SignatureVerificationError
    from stripe import StripeError as StripeError

_EXCEPTIONS = frozenset({"StripeError", "CardError", "SignatureVerificationError"})


def __getattr__(name: str) -> Any:
    """``StripeError``, ``CardError`` and ``SignatureVerificationError``: stripe's own,
    looked up when an ``except`` clause first names them (so importing stripe waits)."""
    if name in _EXCEPTIONS:
        import stripe

        return getattr(stripe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def micros_per_minor_unit(currency: str) -> int:
    return MICROS if currency.upper() in ZERO_DECIMAL else MICROS // 100


def to_minor_units(amount_micros: int, currency: str) -> int:
    """Stripe's integer amount; refuses amounts that are not whole minor units."""
    unit = micros_per_minor_unit(currency)
    if amount_micros % unit:
        raise ValueError(f"{currency} amounts go in steps of {unit} micro-units.")
    return amount_micros // unit


def to_micros(minor_units: int, currency: str) -> int:
    return int(minor_units) * micros_per_minor_unit(currency)


def client_for(account: StripeAccount) -> stripe.StripeClient:
    import stripe

    base = settings.STRIPE_API_BASE
    return stripe.StripeClient(
        account.secret_key,
        base_addresses={"api": base} if base else None,
        max_network_retries=2,
    )


def verified_event(account: StripeAccount, payload: bytes, signature: str | None) -> dict[str, Any]:
    """The event in ``payload`` if ``signature`` is the account's; raises
    ``SignatureVerificationError`` (or ``ValueError`` for a body that is not JSON)."""
    import stripe

    event = stripe.Webhook.construct_event(payload, signature, account.webhook_secret)
    return event.to_dict()


def customer_create(account: StripeAccount, *, name: str, email: str, reference: str) -> str:
    customer = client_for(account).v1.customers.create(
        params={"name": name, "email": email, "metadata": {"tollgate_account": reference}},
        options={"idempotency_key": f"tollgate-customer-{reference}"},
    )
    return str(customer.id)


def checkout_session_create(
    account: StripeAccount,
    *,
    payment_id: int,
    amount_micros: int,
    currency: str,
    description: str,
    success_url: str,
    cancel_url: str,
    customer: str = "",
    save_card: bool = False,
) -> tuple[str, str]:
    """A hosted Checkout page for one payment; returns the session id and its URL."""
    metadata = {"tollgate_payment": str(payment_id)}
    intent: dict[str, Any] = {"metadata": metadata}
    if save_card:
        intent["setup_future_usage"] = "off_session"
    params: Any = {  # the library's TypedDict, built up below
        "mode": "payment",
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": currency.lower(),
                    "unit_amount": to_minor_units(amount_micros, currency),
                    "product_data": {"name": description},
                },
            }
        ],
        "client_reference_id": str(payment_id),
        "metadata": metadata,
        "payment_intent_data": intent,
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if customer:
        params["customer"] = customer
    session = client_for(account).v1.checkout.sessions.create(
        params=params, options={"idempotency_key": f"tollgate-payment-{payment_id}"}
    )
    return str(session.id), str(session.url)


def payment_intent_retrieve(account: StripeAccount, intent_id: str) -> dict[str, Any]:
    return client_for(account).v1.payment_intents.retrieve(intent_id).to_dict()


def off_session_charge(
    account: StripeAccount,
    *,
    payment_id: int,
    amount_micros: int,
    currency: str,
    customer: str,
    payment_method: str,
) -> Any:
    """Charge a saved card without the customer present; raises ``CardError`` when the
    bank declines or asks for the customer."""
    return client_for(account).v1.payment_intents.create(
        params={
            "amount": to_minor_units(amount_micros, currency),
            "currency": currency.lower(),
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "description": "Tollgate auto-recharge",
            "metadata": {"tollgate_payment": str(payment_id)},
        },
        options={"idempotency_key": f"tollgate-payment-{payment_id}"},
    )


def refund_create(
    account: StripeAccount,
    *,
    payment_intent: str,
    amount_micros: int,
    currency: str,
    reference: str,
) -> Any:
    return client_for(account).v1.refunds.create(
        params={
            "payment_intent": payment_intent,
            "amount": to_minor_units(amount_micros, currency),
        },
        options={"idempotency_key": f"tollgate-refund-{reference}"},
    )
