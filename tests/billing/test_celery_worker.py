"""End to end through a real Celery worker and Redis: usage events in, invoices out."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from billing.models import Invoice, LedgerEntry, UsageEvent, UsageRollup
from billing.tasks import invoice_drafts_task, rollups_advance_task, usage_charges_advance_task
from config.celery_app import app
from tests.billing.conftest import MARCH, Market, generate_month
from tests.servers import celery_worker, worker_env

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 60


@pytest.fixture
def worker_queue() -> Iterator[str]:
    """A Celery worker in its own process, on the test database and this run's Redis,
    consuming a queue of its own (so no other worker can take the test's tasks)."""
    queue = f"billing-e2e-{uuid.uuid4().hex[:10]}"
    process = celery_worker(queue, queue, worker_env(), stderr=subprocess.PIPE)
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False  # this test sends to the broker, whatever the default
    try:
        yield queue
    finally:
        app.conf.task_always_eager = previous
        process.terminate()
        try:
            _, stderr = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        if stderr.strip():
            sys.stderr.write("worker stderr:\n" + stderr.decode(errors="replace"))


def _until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not check():
        assert time.monotonic() < deadline, f"{what}: not done within {WAIT_SECONDS} s"
        time.sleep(0.25)


def test_usage_events_in_invoices_out(market: Market, worker_queue: str) -> None:
    events = generate_month(market, count=80)
    customers = [*market.tenants, market.reseller, market.other_reseller]

    usage_charges_advance_task.apply_async(queue=worker_queue)
    rollups_advance_task.apply_async(queue=worker_queue)
    invoice_drafts_task.apply_async(("2026-03",), queue=worker_queue)

    _until(lambda: Invoice.objects.count() == len(customers), "invoice drafts")
    for customer in customers:
        invoice = Invoice.objects.get(customer=customer, period_start=MARCH.start)
        side = "retail" if customer.kind == "tenant" else "wholesale"
        scope = {"tenant": customer} if customer.kind == "tenant" else {"reseller": customer}
        expected = sum(
            getattr(e, f"cost_{side}_micros") for e in UsageEvent.objects.filter(**scope)
        )
        assert invoice.total_micros == expected > 0
        assert invoice.status == Invoice.Status.DRAFT

    # The same worker folded the events into rollups and the ledger.
    daily = UsageRollup.objects.filter(granularity="day")
    assert sum(daily.values_list("requests", flat=True)) == len(events)
    assert sum(daily.values_list("cost_retail_micros", flat=True)) == sum(
        e.cost_retail_micros for e in events
    )
    assert LedgerEntry.objects.filter(kind="usage").exists()


# As a web process or management command sends: Django set up, config.celery_app never
# imported, and the send made from a thread other than the main one (a server's pool).
SEND_FROM_A_THREAD = """
import sys, threading
import django
django.setup()
from billing.tasks import rollups_advance_task
sent = []
def send():
    sent.append(rollups_advance_task.apply_async(queue=sys.argv[1]))
thread = threading.Thread(target=send)
thread.start()
thread.join()
assert sent, "the send failed"
assert "config.celery_app" not in sys.modules
print(rollups_advance_task.app.main, rollups_advance_task.app.conf.broker_url)
"""


def test_a_process_without_the_worker_module_sends_through_the_configured_broker(
    market: Market, worker_queue: str
) -> None:
    """Tasks bind to portal.background.app, which reads the broker from the settings: a
    send from any process and thread reaches the worker, not Celery's fallback (AMQP)."""
    events = generate_month(market, count=12)
    done = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", SEND_FROM_A_THREAD, worker_queue],
        cwd=ROOT,
        env={**worker_env(), "DJANGO_SETTINGS_MODULE": "config.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["tollgate", settings.CELERY_BROKER_URL]
    daily = UsageRollup.objects.filter(granularity="day")
    _until(lambda: sum(daily.values_list("requests", flat=True)) == len(events), "rollups")
