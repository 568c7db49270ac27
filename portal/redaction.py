"""Removing channel secrets from text that is stored or shown: errors, reasons, logs.

A secret can come back from a provider, an HTTP library or an exception in several
spellings: as typed, escaped the way ``repr`` or JSON escape it (a newline as ``\\n``),
percent-encoded, or cut at a character that cannot be sent (a newline, a non-ASCII
space). Every spelling, and every long enough piece of it, is replaced.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from urllib.parse import quote

REDACTED = "[redacted]"
# Pieces of a secret split at characters no header may carry; shorter ones are left alone,
# as they would match ordinary words.
MIN_PIECE = 4
_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[nrtabfv0\\'\"])")
_SPLIT = re.compile(r"[\s\x00-\x1f\x7f-\x9f\u00a0\u2000-\u200b\u2028\u2029\u3000\ufeff]+")


def spellings(secret: str) -> set[str]:
    """The ways ``secret`` can appear in an error's text."""
    if not secret:
        return set()
    forms = {
        secret,
        secret.encode("unicode_escape").decode("ascii"),
        repr(secret.encode("utf-8", "surrogatepass"))[2:-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quote(secret, safe=""),
        quote(secret, safe="/:"),
    }
    for form in list(forms):
        forms.update(piece for piece in _SPLIT.split(form) if len(piece) >= MIN_PIECE)
        # "\n" escaped: the pieces between escape sequences.
        forms.update(piece for piece in _ESCAPE.split(form) if len(piece) >= MIN_PIECE)
    return {form for form in forms if form}


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every spelling of every secret replaced by ``[redacted]``."""
    if not text:
        return text
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms |= spellings(secret)
    # Longest first, so a whole secret goes before one of its pieces.
    for form in sorted(forms, key=len, reverse=True):
        if form in text:
            text = text.replace(form, REDACTED)
    return text


# Characters that continue an identifier: a name matched only where none of them borders
# it, so the project ``prod`` is not found inside ``production``. A dot ends a sentence
# as often as it joins a host, so a dot counts only when an identifier goes on after it.
_BEFORE = r"(?<![A-Za-z0-9_\-.])"
_AFTER = r"(?![A-Za-z0-9_\-]|\.[A-Za-z0-9])"


def _whole(name: str) -> re.Pattern[str]:
    return re.compile(_BEFORE + re.escape(name) + _AFTER, re.IGNORECASE)


class Scrubber:
    """An upstream's error text made fit for a client: nothing in it may tell the client
    which provider account serves it.

    - ``secrets`` (keys, tokens) are removed in every spelling, anywhere (``redact``);
    - ``names`` (hosts, projects, account ids, key ids) are removed where they stand whole;
    - ``renames`` map the provider's names for the model to the one the client asked for;
    - ``patterns`` match what is private without being known beforehand (an ARN's
      account, a project number), and are removed.
    """

    def __init__(
        self,
        secrets: Iterable[str] = (),
        names: Iterable[str] = (),
        renames: dict[str, str] | None = None,
        patterns: Iterable[re.Pattern[str]] = (),
    ) -> None:
        self.secrets = tuple(secret for secret in secrets if secret)
        subs: list[tuple[re.Pattern[str], str]] = []
        # Longest first, so a host goes before a project named inside it.
        for old, new in sorted((renames or {}).items(), key=lambda item: -len(item[0])):
            if old and old != new:
                subs.append((_whole(old), new.replace("\\", "\\\\")))  # a literal replacement
        for name in sorted({name for name in names if name}, key=len, reverse=True):
            subs.append((_whole(name), REDACTED))
        subs.extend((pattern, REDACTED) for pattern in patterns)
        self.subs = tuple(subs)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        text = redact(text, self.secrets)
        for pattern, new in self.subs:
            text = pattern.sub(new, text)
        return text
