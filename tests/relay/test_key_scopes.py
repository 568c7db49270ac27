"""A key's limit scopes, built once with the key: its own limits, then its tenant's, and
only those that limit anything."""

from __future__ import annotations

import dataclasses

from relay.limits import Limits, Scope
from relay.snapshot import KeyInfo


def _key(**changes: object) -> KeyInfo:
    key = KeyInfo(
        id=12, tenant_id=3, name="k", active=True, expires_at=None, allowed_models=frozenset()
    )
    return dataclasses.replace(key, **changes)


def test_a_key_without_limits_has_no_scopes() -> None:
    assert _key().limit_scopes() == []
    assert _key(key_limits=Limits(), tenant_limits=Limits()).limit_scopes() == []


def test_the_keys_scope_comes_before_its_tenants() -> None:
    mine, theirs = Limits(rpm=0), Limits(daily_tokens=5)  # 0 is a limit: nothing allowed
    key = _key(key_limits=mine, tenant_limits=theirs)
    assert key.limit_scopes() == [Scope("key:12", mine), Scope("tenant:3", theirs)]
    assert _key(tenant_limits=Limits(concurrency=2)).limit_scopes() == [
        Scope("tenant:3", Limits(concurrency=2))
    ]


def test_a_changed_key_has_its_own_scopes_and_callers_cannot_change_them() -> None:
    key = _key(key_limits=Limits(tpm=10))
    changed = dataclasses.replace(key, id=13, key_limits=Limits(rpm=1))
    assert changed.limit_scopes() == [Scope("key:13", Limits(rpm=1))]
    scopes = key.limit_scopes()
    scopes.clear()
    assert key.limit_scopes() == [Scope("key:12", Limits(tpm=10))]
    assert key == _key(key_limits=Limits(tpm=10))  # the scopes take no part in equality
