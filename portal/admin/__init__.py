"""Django admin for the portal: the operator's first UI for organisations, keys and channels.

Secrets stay write-only here: an API key's secret is shown once on the page that
answers its creation, a channel's secret can be replaced but never displayed, and
neither digest nor ciphertext is rendered. Every change made here writes an AuditEntry
inside the admin's own transaction. Importing the modules registers their admins.
"""

from __future__ import annotations

from portal.admin import audit, channels, keys, organizations

__all__ = ["audit", "channels", "keys", "organizations"]
