"""Roles beyond the core personas that the tenancy domain's tests need.

The organisation tree and the core personas (operator, reseller admin, tenant owner,
tenant member, outsider) come from tests/conftest.py; the console's tests reuse these too.
"""

from __future__ import annotations

from typing import Any

import pytest

from portal.models import Membership, Organization
from tests.conftest import make_member


@pytest.fixture
def tenant_admin(tenant_org: Organization) -> Any:
    return make_member("tenant-admin", tenant_org, Membership.Role.ADMIN)


@pytest.fixture
def tenant_billing(tenant_org: Organization) -> Any:
    """Sees balance and invoices of ``tenant_org``, nothing else."""
    return make_member("tenant-billing", tenant_org, Membership.Role.BILLING)
