"""Shared pytest fixtures: the organisation tree and the people who act in it.

The tree every persona lives in::

    platform_org ("platform")
    ├── reseller_org ("reseller")             reseller_admin (admin)
    │   └── tenant_org ("tenant")             tenant_owner (owner), tenant_member (member)
    └── other_reseller_org ("other-reseller")
        └── other_tenant_org ("other-tenant") outsider (owner)

``operator_user`` is platform staff (is_staff and is_superuser, owner of the platform).
Every view and endpoint test should include ``outsider``: someone with full rights in
another tenant, under another reseller, who must see none of ``tenant_org``.

Fixtures write rows directly through the ORM rather than through services, so they add
no audit entries and tests can count those from zero. Users have no usable password; log
them in with ``client.force_login(user)``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection

from portal.models import Membership, Organization

# --- Test run plumbing ----------------------------------------------------------------------


# The database the settings name, before pytest-django points the connection at a test one.
_CONFIGURED_DB = settings.DATABASES["default"]["NAME"]


def pytest_configure(config: pytest.Config) -> None:
    # Each run gets its own cache namespace, so counters in a shared Redis (rate limits,
    # change generations) never leak from one run, or one developer, into another.
    settings.CACHES["default"]["KEY_PREFIX"] = f"tollgate-test-{uuid.uuid4().hex[:12]}"


def services_available() -> bool:
    """Whether this run has the production engines: PostgreSQL and Redis."""
    return connection.vendor == "postgresql" and bool(settings.REDIS_URL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if services_available() or os.environ.get("TOLLGATE_REQUIRE_SERVICES") == "1":
        return  # run them; where the services are required but absent they fail loudly
    skip = pytest.mark.skip(reason="needs PostgreSQL and Redis (set DATABASE_URL and REDIS_URL)")
    for item in items:
        if "services" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_relay_memory() -> Iterator[None]:
    """Without Redis the relay keeps its limits and breakers in this process's memory: a
    breaker one test trips must not refuse a later test's channel (SQLite reuses row ids,
    so that channel can have the same id)."""
    yield
    from relay import shared

    shared.forget_local()


@pytest.fixture(scope="session", autouse=True)
def _end_server_sessions(django_db_setup: None, django_db_blocker: Any) -> Iterator[None]:
    """Let the test database be dropped although server threads still hold connections.

    Only the test database's: a run whose tests need none (one file, say) creates none, and
    its connection is then to the configured database, where a developer's own server and
    the other xdist workers also hold sessions."""
    yield
    if connection.vendor != "postgresql" or connection.settings_dict["NAME"] == _CONFIGURED_DB:
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def make_user(username: str, **extra: Any) -> AbstractBaseUser:
    """A user without a usable password (hashing one would slow every test down)."""
    user = get_user_model()(username=username, email=f"{username}@example.test", **extra)
    user.set_unusable_password()
    user.save()
    return user


def make_member(username: str, organization: Organization, role: str) -> AbstractBaseUser:
    """A user holding ``role`` in ``organization``."""
    user = make_user(username)
    Membership.objects.create(user=user, organization=organization, role=role)
    return user


# --- Organisations --------------------------------------------------------------------------


@pytest.fixture
def platform_org(db: None) -> Organization:
    return Organization.objects.create(
        name="Platform", slug="platform", kind=Organization.Kind.PLATFORM
    )


@pytest.fixture
def reseller_org(platform_org: Organization) -> Organization:
    return Organization.objects.create(
        name="Reseller", slug="reseller", kind=Organization.Kind.RESELLER, parent=platform_org
    )


@pytest.fixture
def tenant_org(reseller_org: Organization) -> Organization:
    return Organization.objects.create(
        name="Tenant", slug="tenant", kind=Organization.Kind.TENANT, parent=reseller_org
    )


@pytest.fixture
def other_reseller_org(platform_org: Organization) -> Organization:
    return Organization.objects.create(
        name="Other Reseller",
        slug="other-reseller",
        kind=Organization.Kind.RESELLER,
        parent=platform_org,
    )


@pytest.fixture
def other_tenant_org(other_reseller_org: Organization) -> Organization:
    return Organization.objects.create(
        name="Other Tenant",
        slug="other-tenant",
        kind=Organization.Kind.TENANT,
        parent=other_reseller_org,
    )


# --- People ---------------------------------------------------------------------------------


@pytest.fixture
def operator_user(platform_org: Organization) -> AbstractBaseUser:
    """Platform staff: may use the Django admin and see every organisation."""
    user = make_user("operator", is_staff=True, is_superuser=True)
    Membership.objects.create(user=user, organization=platform_org, role=Membership.Role.OWNER)
    return user


@pytest.fixture
def reseller_admin(reseller_org: Organization) -> AbstractBaseUser:
    return make_member("reseller-admin", reseller_org, Membership.Role.ADMIN)


@pytest.fixture
def tenant_owner(tenant_org: Organization) -> AbstractBaseUser:
    return make_member("tenant-owner", tenant_org, Membership.Role.OWNER)


@pytest.fixture
def tenant_member(tenant_org: Organization) -> AbstractBaseUser:
    """A read-only member of ``tenant_org``: may look, may not change."""
    return make_member("tenant-member", tenant_org, Membership.Role.MEMBER)


@pytest.fixture
def outsider(other_tenant_org: Organization) -> AbstractBaseUser:
    """Owner of another tenant under another reseller; must never see ``tenant_org``."""
    return make_member("outsider", other_tenant_org, Membership.Role.OWNER)


def price_models(*public_ids: str) -> None:
    """Give each catalog model (created if missing) a wholesale price, so that it is
    "available" rather than "unpriced" wherever a channel serves it."""
    from billing.models import PriceList
    from billing.services import model_price_set, price_list_create
    from portal.models import CatalogModel

    platform, _ = Organization.objects.get_or_create(
        kind=Organization.Kind.PLATFORM, defaults={"name": "Platform", "slug": "platform"}
    )
    wholesale = PriceList.objects.filter(owner=platform, is_default=True).first()
    if wholesale is None:
        wholesale = price_list_create(
            owner=platform, name="Wholesale", actor="test", is_default=True
        )
    for public_id in public_ids:
        model, _ = CatalogModel.objects.get_or_create(public_id=public_id)
        model_price_set(
            price_list=wholesale, model=model, input_per_mtok=1, output_per_mtok=2, actor="test"
        )


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium (Debian's) for the browser tests (tests/browser.py)."""
    from tests import browser as chromium

    with chromium.launched(monkeypatch) as launched:
        yield launched
