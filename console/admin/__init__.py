"""Django admin: the operator's first UI for organisations, keys, channels and billing.

Secrets stay write-only here: an API key's secret is shown once on the page that
answers its creation, a channel's secret can be replaced but never displayed, and
neither digest nor ciphertext is rendered. Every change made here writes an AuditEntry
inside the admin's own transaction. Importing the modules registers their admins.
"""

from __future__ import annotations

from console.admin import audit, billing, channels, keys, organizations

__all__ = ["audit", "billing", "channels", "keys", "organizations"]
