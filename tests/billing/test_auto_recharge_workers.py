"""Auto-recharge under two real Celery workers (PostgreSQL, Redis): however many checks
run at once, a crossing charges the card once and a day never more than its cap."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.conf import settings

from billing.services.auto_recharge import auto_recharge_set
from billing.tasks import auto_recharge_check_task, auto_recharge_checks_task
from config.celery_app import app
from tests.billing.payments_fixtures import (
    USD,
    Shop,
)
from tests.billing.test_auto_recharge import confirm_charges, save_card, spend
from tests.servers import celery_worker, worker_env

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
WAIT_SECONDS = 120
CHECKS = 12


@pytest.fixture
def two_workers(fake_stripe: Any) -> Iterator[str]:
    """Two worker processes consuming one queue of this test's own."""
    queue = f"recharge-{uuid.uuid4().hex[:10]}"
    env = worker_env(STRIPE_API_BASE=fake_stripe.url)
    processes = [
        celery_worker(queue, f"{queue}-{n}", env, stderr=subprocess.PIPE) for n in range(2)
    ]
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = False
    try:
        yield queue
    finally:
        app.conf.task_always_eager = previous
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                _, stderr = process.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                _, stderr = process.communicate()
            if stderr.strip():
                sys.stderr.write("worker stderr:\n" + stderr.decode(errors="replace"))


def _check_concurrently(shop: Shop, queue: str, *, charges: int) -> None:
    """Many checks at once on two workers; then the charges Stripe saw must be exactly
    ``charges``, and stay so once the workers are idle."""
    for _ in range(CHECKS):
        auto_recharge_check_task.apply_async((shop.account.pk,), queue=queue)
    auto_recharge_checks_task.apply_async(queue=queue)  # the beat's fan-out, same queue
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    seen = lambda: len(shop.fake.calls("POST", "/v1/payment_intents"))  # noqa: E731
    deadline = time.monotonic() + WAIT_SECONDS
    while broker.llen(queue) or seen() < charges:
        assert time.monotonic() < deadline, f"workers: {seen()} charges, not {charges}"
        time.sleep(0.1)
    time.sleep(2.0)  # acks_late, prefetch 1: at most one check each still running
    assert seen() == charges


def test_two_workers_charge_once_per_crossing_and_respect_the_cap(
    shop: Shop, tenant_owner: Any, two_workers: str
) -> None:
    save_card(shop, tenant_owner)  # balance 20
    auto_recharge_set(
        account=shop.account,
        enabled=True,
        threshold_micros=10 * USD,
        amount_micros=50 * USD,
        max_per_day=2,
        actor="t",
    )
    spend(shop, 15 * USD)  # 5: below the threshold
    _check_concurrently(shop, two_workers, charges=1)
    assert confirm_charges(shop) == 1 and shop.balance() == 55 * USD

    _check_concurrently(shop, two_workers, charges=1)  # above again: re-armed, no charge

    spend(shop, 50 * USD)
    _check_concurrently(shop, two_workers, charges=2)
    confirm_charges(shop)
    assert shop.balance() == 55 * USD

    spend(shop, 50 * USD)
    _check_concurrently(shop, two_workers, charges=2)  # the day's cap of two
    assert shop.balance() == 5 * USD
