"""/healthz and /readyz, through the project's real ASGI entry point."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from config.asgi import application
from tests.servers import serve_in_thread


@pytest.fixture
def site(transactional_db: None) -> Iterator[str]:
    base_url, stop = serve_in_thread(application)
    yield base_url
    stop()


def test_liveness(site: str) -> None:
    response = httpx.get(site + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readiness_checks_the_database_and_redis(site: str, settings: Any) -> None:
    response = httpx.get(site + "/readyz")
    assert response.status_code == 200, response.text
    checks = response.json()["checks"]
    assert checks["database"]["ok"] is True
    assert ("redis" in checks) == bool(settings.REDIS_URL)


def test_readiness_fails_when_redis_is_unreachable(site: str, settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = httpx.get(site + "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"]["ok"] is False
    assert body["checks"]["database"]["ok"] is True


def test_readiness_checks_a_separate_broker(site: str, settings: Any) -> None:
    settings.CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens
    response = httpx.get(site + "/readyz")
    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"]["ok"] is False
    assert checks["database"]["ok"] is True


@pytest.mark.services
def test_readiness_checks_a_broker_on_another_redis_database(site: str, settings: Any) -> None:
    settings.CELERY_BROKER_URL = settings.REDIS_URL.rsplit("/", 1)[0] + "/3"
    response = httpx.get(site + "/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["broker"]["ok"] is True


def test_the_dashboard_still_reaches_django(site: str) -> None:
    response = httpx.get(site + "/admin/login/")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
