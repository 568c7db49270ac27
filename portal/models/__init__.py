"""The portal's models, one module per concern."""

from __future__ import annotations

from portal.models.audit import AuditEntry
from portal.models.catalog import CatalogModel
from portal.models.channels import Channel, ChannelModel
from portal.models.invitations import Invitation
from portal.models.keys import ApiKey
from portal.models.organizations import Membership, Organization
from portal.models.sso import SsoIdentity, SsoProvider
from portal.models.tokens import PersonalAccessToken

__all__ = [
    "ApiKey",
    "AuditEntry",
    "CatalogModel",
    "Channel",
    "ChannelModel",
    "Invitation",
    "Membership",
    "Organization",
    "PersonalAccessToken",
    "SsoIdentity",
    "SsoProvider",
]
