"""Key hashing and at-rest encryption of upstream secrets.

Relay keys are random, so a keyed SHA-256 (HMAC) is the right digest: fast on the hot
path, useless to anyone holding only the database. Upstream secrets must be sent to the
provider, so they are encrypted (Fernet), not hashed; rotation keeps old keys readable.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings

API_KEY_PREFIX = "sk-tg-"
# How much of a key is kept in clear so people can tell their keys apart.
API_KEY_VISIBLE_CHARS = 12


def generate_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_digest(secret: str) -> str:
    return hmac.new(
        settings.TOLLGATE_KEY_HMAC_SECRET.encode(), secret.encode(), hashlib.sha256
    ).hexdigest()


def digests_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@functools.lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def _current_fernet() -> MultiFernet:
    return _fernet(tuple(settings.TOLLGATE_ENCRYPTION_KEYS))


def encrypt_secret(plain: str) -> str:
    return _current_fernet().encrypt(plain.encode()).decode()


def decrypt_secret(token: str) -> str:
    if not token:
        return ""
    try:
        return _current_fernet().decrypt(token.encode()).decode()
    except InvalidToken as exc:
        raise ValueError(
            "An upstream secret cannot be decrypted with TOLLGATE_ENCRYPTION_KEYS"
        ) from exc


def rotate_secret(token: str) -> str:
    """Re-encrypt a token under the newest key (for the key rotation command)."""
    return _current_fernet().rotate(token.encode()).decode()
