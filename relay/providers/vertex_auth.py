"""Vertex AI access tokens from a service account, shared by all of a process's requests.

google-auth signs the service account's JWT and exchanges it at the account's
``token_uri``; its refresh is blocking, so it runs on a worker thread. A token is
refreshed a while before it expires, and however many requests need a fresh token at the
same moment (on any event loop of the process) only one fetch is made: the others await
the same future. After a failed fetch the source backs off (2 s, doubling up to 60 s):
meanwhile requests fail at once, or use the previous token while it is still valid,
rather than hammering the token endpoint.

google-auth (with urllib3 and cryptography's RSA under it) is imported when the first
Vertex token source is made: a process with no Vertex channel never loads it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import functools
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import urllib3

SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
# Refresh this long before expiry, or a quarter of the token's life if that is shorter.
REFRESH_MARGIN_SECONDS = 300.0
FETCH_TIMEOUT_SECONDS = 15.0
MAX_SOURCES = 1024
BACKOFF_MIN_SECONDS = 2.0
BACKOFF_MAX_SECONDS = 60.0
REQUIRED_FIELDS = ("client_email", "private_key", "token_uri")

_executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="vertex-auth")


@functools.cache
def _http() -> urllib3.PoolManager:
    """The process's one connection pool to token endpoints, made on the first fetch."""
    import urllib3

    return urllib3.PoolManager(timeout=urllib3.Timeout(total=FETCH_TIMEOUT_SECONDS), retries=False)


class TokenFetchFailed(Exception):
    """No token: the token endpoint refused the service account (this class itself), or
    could not give one (``TokenEndpointUnavailable``)."""


class TokenEndpointUnavailable(TokenFetchFailed):
    """The token endpoint could not be reached, or failed (5xx, 408, 429, an answer without
    a token): an outage that says nothing about the service account."""


def _endpoint_failed(exc: Exception, statuses: list[int]) -> bool:
    """Whether a failed fetch was the endpoint's fault rather than a refusal. Only a 4xx
    from the endpoint (``invalid_grant``: an unknown key, a bad signature, a deleted
    account) refuses the account; google-auth's RefreshError carries no status, so the
    exchange's own statuses tell the two apart."""
    from google.auth.exceptions import TransportError

    if isinstance(exc, TransportError):
        return True  # nothing answered: refused connection, timeout, TLS failure
    if not statuses:
        return False  # failed before any exchange: the key itself (signing)
    last = statuses[-1]
    return not 400 <= last < 500 or last in (408, 429)


def check_service_account(info: Mapping[str, Any]) -> None:
    """Raise ValueError unless ``info`` looks like a service-account key file."""
    if info.get("type") != "service_account":
        raise ValueError(
            "The JSON is not a service-account key (its type must be service_account)."
        )
    missing = [name for name in REQUIRED_FIELDS if not isinstance(info.get(name), str)]
    if missing:
        raise ValueError(f"The service-account key lacks {', '.join(missing)}.")


class VertexTokenSource:
    """Bearer tokens for one service account, refreshed before they expire."""

    def __init__(self, info: Mapping[str, Any], *, clock: Callable[[], float] = time.time) -> None:
        from google.oauth2 import service_account

        check_service_account(info)
        self._credentials = service_account.Credentials.from_service_account_info(
            dict(info), scopes=list(SCOPES)
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: concurrent.futures.Future[str] | None = None
        self._token: str | None = None
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._backoff = 0.0  # after a failed fetch: the wait before the next one
        self._retry_at = 0.0
        self._failure = ""
        self._failure_type: type[TokenFetchFailed] = TokenFetchFailed
        self.fetches = 0  # token fetches made, for tests and metrics

    @property
    def email(self) -> str:
        return str(self._credentials.service_account_email)

    def _fresh(self) -> str | None:
        token = self._token
        return token if token is not None and self._clock() < self._refresh_at else None

    async def token(self) -> str:
        """A valid token; at most one fetch is in flight however many callers wait."""
        token = self._fresh()
        if token is not None:
            return token
        with self._lock:
            token = self._fresh()
            if token is not None:
                return token
            if self._pending is None:
                if self._clock() < self._retry_at:
                    return self._during_backoff()
                self._pending = _executor.submit(self._fetch)
            pending = self._pending
        return await asyncio.wrap_future(pending)

    def _during_backoff(self) -> str:
        """The last token while it is still valid, else the last failure (lock held)."""
        if self._token is not None and self._clock() < self._expires_at:
            return self._token
        wait = max(self._retry_at - self._clock(), 0.0)
        raise self._failure_type(f"{self._failure} (next token fetch in {wait:.0f} s)")

    def _fetch(self) -> str:
        from google.auth.exceptions import GoogleAuthError
        from google.auth.transport.urllib3 import Request as Urllib3Request

        started = self._clock()
        send = Urllib3Request(_http())
        statuses: list[int] = []  # of this fetch's exchanges (google-auth retries some)

        def request(*args: Any, **kwargs: Any) -> Any:
            response = send(*args, **kwargs)
            statuses.append(response.status)
            return response

        try:
            self._credentials.refresh(request)
            token = self._credentials.token
            expiry = self._credentials.expiry  # naive UTC, as google-auth keeps it
            if not isinstance(token, str) or expiry is None:
                raise TokenFetchFailed("The token endpoint answered without a token.")
            lifetime = expiry.replace(tzinfo=datetime.UTC).timestamp() - time.time()
            margin = min(REFRESH_MARGIN_SECONDS, max(lifetime, 0.0) / 4)
            with self._lock:
                self.fetches += 1
                self._token = token
                self._refresh_at = started + lifetime - margin
                self._expires_at = started + lifetime
                self._backoff = 0.0
            return token
        except (GoogleAuthError, TokenFetchFailed) as exc:
            message = str(exc)[:300]
            failure_type = (
                TokenEndpointUnavailable if _endpoint_failed(exc, statuses) else TokenFetchFailed
            )
            with self._lock:
                self.fetches += 1
                self._backoff = min(
                    max(self._backoff * 2, BACKOFF_MIN_SECONDS), BACKOFF_MAX_SECONDS
                )
                self._retry_at = self._clock() + self._backoff
                self._failure = message
                self._failure_type = failure_type
                if self._token is not None and self._clock() < self._expires_at:
                    return self._token  # refreshed early: the old one still serves
            raise failure_type(message) from None
        finally:
            with self._lock:
                self._pending = None


_sources: OrderedDict[str, VertexTokenSource] = OrderedDict()
_sources_lock = threading.Lock()


def token_source(info: Mapping[str, Any]) -> VertexTokenSource:
    """The process's one token source for this service-account key (made on first use),
    so channels and snapshots that share a key share its tokens."""
    fingerprint = hashlib.sha256(
        "\0".join(str(info.get(name, "")) for name in (*REQUIRED_FIELDS, "private_key_id")).encode()
    ).hexdigest()
    with _sources_lock:
        source = _sources.get(fingerprint)
        if source is None:
            source = _sources[fingerprint] = VertexTokenSource(info)
            while len(_sources) > MAX_SOURCES:
                _sources.popitem(last=False)
        else:
            _sources.move_to_end(fingerprint)
        return source
