"""Which of a client's ``anthropic-beta`` names reach an Anthropic channel.

A beta turns on behaviour the provider may bill apart from the tokens the relay meters
(code containers, fast mode, a second model's inference), or behaviour not yet known here
at all. Forwarding the header as sent would let any new billed beta through on the
operator's account the day Anthropic ships it. So only names known to change nothing
but the request's tokens (which the relay meters, cache writes and long-context tiers
included) or the answer's shape are forwarded; a beta tied to a feature billed apart goes
only when the operator lets that feature through (``RELAY_UNMETERED_FEATURES``); the
operator may name more (``RELAY_ANTHROPIC_BETAS``). Other names are dropped, not refused:
clients such as Claude Code send several betas on every request and work without most,
and a request that relies on a dropped beta's body fields is refused by the provider
itself, in its own words.
"""

from __future__ import annotations

from django.conf import settings

# Each changes what is asked or answered, never what is billed beyond the metered tokens.
FORWARDED = frozenset(
    {
        "claude-code-20250219",
        "computer-use-2024-10-22",
        "computer-use-2025-01-24",
        "computer-use-2025-11-24",
        "context-1m-2025-08-07",  # long prompts: only where priced (``priced_for``)
        "context-management-2025-06-27",
        "dev-full-thinking-2025-05-14",
        "effort-2025-11-24",
        "extended-cache-ttl-2025-04-11",  # 1-hour cache writes: metered as such
        "fine-grained-tool-streaming-2025-05-14",
        "interleaved-thinking-2025-05-14",
        "mcp-client-2025-04-04",  # the provider calls the client's own MCP servers
        "mcp-client-2025-11-20",
        "model-context-window-exceeded-2025-08-26",
        "output-128k-2025-02-19",  # more output: held and metered as any output
        "output-300k-2026-03-24",
        "pdfs-2024-09-25",
        "prompt-caching-2024-07-31",
        "structured-outputs-2025-11-13",
        "thinking-display-updates-2026-08-18",
        "thinking-token-count-2026-05-13",
        "token-counting-2024-11-01",
        "token-efficient-tools-2025-02-19",
        "web-fetch-2025-09-10",  # fetched pages are billed as prompt tokens only
    }
)

# Betas (by the name before their date) for features billed apart from tokens, by the
# feature's name in RELAY_UNMETERED_FEATURES (``relay.dialects.fees``).
FEATURE_BETAS = (
    ("advisor-tool-", "advisor"),
    ("code-execution-", "code_execution"),
    ("fast-mode-", "fast_mode"),
    ("skills-", "code_execution"),  # skills run in a code execution container
)


# Betas that open prompts past the standard context window, which Anthropic bills at its
# long-context rates: forwarded only for a model whose price has a long-context tier.
LONG_CONTEXT_PREFIX = "context-1m-"


def priced_for(header: str | None, long_context_priced: bool) -> str | None:
    """``header`` (as ``forwarded`` left it) for a model of this price: without the
    long-context betas when the price has no long-context tier, so such a prompt is
    refused by the provider rather than billed at rates the relay would not charge."""
    if not header or long_context_priced or LONG_CONTEXT_PREFIX not in header:
        return header
    names = [name for name in header.split(",") if not name.startswith(LONG_CONTEXT_PREFIX)]
    return ",".join(names) or None


def _allowed(name: str, features: frozenset[str], extra: frozenset[str]) -> bool:
    if name in FORWARDED or name in extra:
        return True
    return any(name.startswith(prefix) and feature in features for prefix, feature in FEATURE_BETAS)


def forwarded(header: str | None) -> str | None:
    """The client's ``anthropic-beta`` header as the channel gets it: the names it may
    have, in the client's order; None when none is left."""
    if not header:
        return None
    features = frozenset(settings.RELAY_UNMETERED_FEATURES)
    extra = frozenset(settings.RELAY_ANTHROPIC_BETAS)
    names = [name for part in header.split(",") if (name := part.strip())]
    kept = [name for name in names if _allowed(name, features, extra)]
    return ",".join(kept) or None
