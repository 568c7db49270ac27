"""Provider adapters: one module per provider type that a channel can speak.

Each adapter owns its credentials and authentication, builds the provider's native request
from the canonical form, decodes answers and streams back into it, maps the provider's
errors to retryable, credential and client failures, and normalises usage (cache reads and
writes, reasoning tokens). ``relay.providers.client`` sends a request through an adapter.
"""

from __future__ import annotations

PROVIDER_TYPES = ("openai", "anthropic", "gemini", "vertex", "bedrock", "azure")
