"""Portal workflows: organisations, memberships, invitations, logins, API
keys, the model catalog and channels.

Every function is keyword-only and runs in one transaction that also writes the
AuditEntry describing the change, so a change and its audit row commit (or vanish)
together. Secrets never reach an audit entry. One module per concern; import from here.
"""

from __future__ import annotations

from portal.services.catalog import (
    catalog_model_upsert,
)
from portal.services.channels import (
    channel_check_record,
    channel_create,
    channel_edit,
    channel_models_add,
    channel_set_status,
    channel_suspend,
    channel_update,
    channel_update_secret,
    channels_set_status,
)
from portal.services.common import Actor
from portal.services.invitations import (
    invitation_accept,
    invitation_accept_new_user,
    invitation_create,
    invitation_for_token,
    invitation_revoke,
    organization_create_with_owner,
)
from portal.services.keys import (
    api_key_create,
    api_key_revoke,
    api_keys_revoke,
)
from portal.services.organizations import (
    membership_add,
    membership_change_role,
    membership_remove,
    organization_create,
    tenant_limits_set,
    tenant_set_active,
)
from portal.services.people import user_create

__all__ = [
    "Actor",
    "api_key_create",
    "api_key_revoke",
    "api_keys_revoke",
    "catalog_model_upsert",
    "channel_check_record",
    "channel_create",
    "channel_edit",
    "channel_models_add",
    "channel_set_status",
    "channel_suspend",
    "channel_update",
    "channel_update_secret",
    "channels_set_status",
    "invitation_accept",
    "invitation_accept_new_user",
    "invitation_create",
    "invitation_for_token",
    "invitation_revoke",
    "membership_add",
    "membership_change_role",
    "membership_remove",
    "organization_create",
    "organization_create_with_owner",
    "tenant_limits_set",
    "tenant_set_active",
    "user_create",
]
