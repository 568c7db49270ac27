"""A small stand-in for Stripe's API on loopback, for the ``stripe`` library to talk to.

It implements only what Tollgate calls (customers, Checkout sessions, PaymentIntents,
refunds), with Stripe's form-encoded requests, JSON objects, error envelope and
``Idempotency-Key`` replay, and it builds the webhook events Stripe would send, signed with
Stripe's scheme (``t=<unix>,v1=<HMAC-SHA256 of "t.payload">``) through the library's own
helper. Nothing here is Stripe: what it cannot show is listed in docs/payments.md.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

import stripe


def decode_form(body: str) -> dict[str, Any]:
    """Stripe's bracketed form encoding (``a[b][0][c]=1``) back into nested dicts."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body, keep_blank_values=True):
        parts = re.findall(r"[^\[\]]+", key)
        node: Any = root
        for part, following in itertools.zip_longest(parts, parts[1:]):
            last = following is None
            if isinstance(node, list):
                index = int(part)
                while len(node) <= index:
                    node.append(None)
                if last:
                    node[index] = value
                else:
                    if node[index] is None:
                        node[index] = [] if following.isdigit() else {}
                    node = node[index]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if following.isdigit() else {})
    return root


class FakeStripe:
    """The state of the stand-in: objects by id, requests seen, and knobs for tests."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.objects: dict[str, dict[str, Any]] = {}
        self.requests: list[dict[str, Any]] = []
        self.idempotent: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.counter = itertools.count(1)
        self.decline_off_session = False
        self.url = ""

    # --- objects ---------------------------------------------------------------------------

    def _id(self, prefix: str) -> str:
        return f"{prefix}_test_{next(self.counter):06d}"

    def _store(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects[obj["id"]] = obj
        return obj

    def handle(self, method: str, path: str, params: dict[str, Any], key: str) -> tuple[int, Any]:
        now = int(time.time())
        if method == "POST" and path == "/v1/customers":
            return 200, self._store({"id": self._id("cus"), "object": "customer", **params})
        if method == "POST" and path == "/v1/checkout/sessions":
            session_id = self._id("cs")
            amount = sum(
                int(item["price_data"]["unit_amount"]) * int(item.get("quantity", 1))
                for item in params.get("line_items", [])
            )
            currency = params["line_items"][0]["price_data"]["currency"]
            return 200, self._store(
                {
                    "id": session_id,
                    "object": "checkout.session",
                    "mode": params.get("mode"),
                    "status": "open",
                    "payment_status": "unpaid",
                    "amount_total": amount,
                    "currency": currency,
                    "customer": params.get("customer"),
                    "client_reference_id": params.get("client_reference_id"),
                    "metadata": params.get("metadata", {}),
                    "payment_intent": None,
                    "success_url": params.get("success_url"),
                    "cancel_url": params.get("cancel_url"),
                    "url": f"{self.url}/c/pay/{session_id}",
                    "created": now,
                    "_intent_data": params.get("payment_intent_data", {}),
                    "_key": key,
                }
            )
        if method == "POST" and path == "/v1/payment_intents":
            intent = self._intent(params, key)
            if self.decline_off_session:
                intent["status"] = "requires_payment_method"
                intent["last_payment_error"] = {
                    "type": "card_error",
                    "code": "card_declined",
                    "decline_code": "insufficient_funds",
                    "message": "Your card has insufficient funds.",
                }
                error = {**intent["last_payment_error"], "payment_intent": intent}
                return 402, {"error": error}
            return 200, intent
        if method == "POST" and path == "/v1/refunds":
            intent = self.objects[params["payment_intent"]]
            amount = int(params.get("amount") or intent["amount_received"])
            refund = {
                "id": self._id("re"),
                "object": "refund",
                "amount": amount,
                "currency": intent["currency"],
                "payment_intent": intent["id"],
                "status": "succeeded",
                "created": now,
            }
            return 200, self._store(refund)
        match = re.fullmatch(r"/v1/(payment_intents|checkout/sessions|customers)/([\w]+)", path)
        if method == "GET" and match and match[2] in self.objects:
            return 200, self.objects[match[2]]
        return 404, {"error": {"type": "invalid_request_error", "message": f"No {path}"}}

    def _intent(self, params: dict[str, Any], key: str) -> dict[str, Any]:
        amount = int(params["amount"])
        return self._store(
            {
                "id": self._id("pi"),
                "object": "payment_intent",
                "amount": amount,
                "amount_received": amount,
                "currency": params["currency"],
                "customer": params.get("customer"),
                "payment_method": params.get("payment_method"),
                "metadata": params.get("metadata", {}),
                "status": "succeeded",
                "last_payment_error": None,
                "created": int(time.time()),
                "_key": key,
            }
        )

    # --- what tests ask of it --------------------------------------------------------------

    def public(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in obj.items() if not k.startswith("_")}

    def complete_checkout(self, session_id: str, *, payment_method: str = "pm_card_visa") -> dict:
        """The customer paid on the hosted page: the session is paid, with its intent."""
        with self.lock:
            session = self.objects[session_id]
            data = session["_intent_data"]
            intent = self._intent(
                {
                    "amount": session["amount_total"],
                    "currency": session["currency"],
                    "customer": session["customer"],
                    "payment_method": payment_method,
                    "metadata": data.get("metadata", {}),
                },
                session["_key"],
            )
            session.update(status="complete", payment_status="paid", payment_intent=intent["id"])
            return self.public(session)

    def refund(self, intent_id: str, amount: int | None = None) -> dict[str, Any]:
        with self.lock:
            params = {"payment_intent": intent_id, "amount": amount}
            return self.handle("POST", "/v1/refunds", params, "")[1]

    def event(self, type_: str, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self._id("evt"),
            "object": "event",
            "api_version": stripe.api_version,
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": type_,
            "data": {"object": self.public(obj)},
        }

    def calls(self, method: str, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == method and r["path"] == path]


def signed(
    event: dict[str, Any], secret: str, *, timestamp: int | None = None
) -> tuple[bytes, str]:
    """The body and ``Stripe-Signature`` header Stripe would send for ``event``."""
    payload = json.dumps(event)
    header = stripe.WebhookSignature.generate_signature_header(payload, secret, timestamp)
    return payload.encode(), header


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripe

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        path, _, query = self.path.partition("?")
        params = decode_form(body if method == "POST" else query)
        key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        idem = self.headers.get("Idempotency-Key") or ""
        fake = self.fake
        with fake.lock:
            fake.requests.append(
                {"method": method, "path": path, "params": params, "key": key, "idem": idem}
            )
            if not key.startswith(("sk_test_", "rk_test_")):
                status, obj = (
                    401,
                    {
                        "error": {
                            "type": "invalid_request_error",
                            "message": "Invalid API Key provided",
                        }
                    },
                )
            elif idem and (key, idem) in fake.idempotent:
                status, obj = fake.idempotent[(key, idem)]
            else:
                status, obj = fake.handle(method, path, params, key)
                if idem and method == "POST":
                    fake.idempotent[(key, idem)] = (status, obj)
        data = json.dumps(fake.public(obj) if "error" not in obj else obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_{len(fake.requests)}")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def running_fake_stripe() -> Iterator[FakeStripe]:
    fake = FakeStripe()
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
