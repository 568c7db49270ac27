"""Personas and signed-in clients shared by the console tests.

The organisation tree and the core personas (operator, reseller admin, tenant owner,
tenant member, outsider) come from tests/conftest.py, tenant admin and billing roles from
tests/portal/conftest.py; the roles only UI tests need are added here, with helpers that
sign a person in on the dashboard or the API. The billing ``market`` (a priced platform,
resellers and tenants) is re-exported for the money pages.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient

from portal.models import Membership, Organization
from tests.billing.conftest import event, market  # noqa: F401  (fixtures, used by name)
from tests.conftest import make_member
from tests.portal.conftest import tenant_admin, tenant_billing  # noqa: F401  (fixtures)


def client_for(user: Any) -> Client:
    """A dashboard client signed in as ``user``."""
    client = Client()
    client.force_login(user)
    return client


def api_client_for(user: Any) -> APIClient:
    """An API client with ``user``'s session."""
    client = APIClient()
    client.force_login(user)
    return client


@pytest.fixture
def other_reseller_admin(other_reseller_org: Organization) -> Any:
    """Admin of another reseller: must see nothing of ``reseller_org`` or its tenants."""
    return make_member("other-reseller-admin", other_reseller_org, Membership.Role.ADMIN)


@pytest.fixture
def operator(operator_user: Any) -> Client:
    return client_for(operator_user)
