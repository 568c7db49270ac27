"""The credentials a simulator trusts, and the Vertex tokens it has issued."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable


@dataclasses.dataclass(slots=True)
class ServiceAccount:
    email: str
    public_key_pem: str
    project: str


@dataclasses.dataclass(slots=True)
class NativeTrust:
    """Registered by tests; an empty key set means "any non-empty key" for that provider.

    AWS access keys and service accounts are never open: an unknown one is refused.
    """

    gemini_keys: set[str] = dataclasses.field(default_factory=set)
    azure_keys: set[str] = dataclasses.field(default_factory=set)
    azure_deployments: set[str] = dataclasses.field(default_factory=set)
    # Deployments with the base model each runs, as Azure's deployment listing shows them
    # (a deployment in azure_deployments alone runs the model of its own name).
    azure_deployment_models: dict[str, str] = dataclasses.field(default_factory=dict)
    # False: the resource refuses the data-plane deployment listing, as Azure now does
    # for most resources.
    azure_lists_deployments: bool = True
    azure_api_versions: set[str] = dataclasses.field(
        default_factory=lambda: {"2024-10-21", "2025-04-01-preview"}
    )
    aws_keys: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    service_accounts: dict[str, ServiceAccount] = dataclasses.field(default_factory=dict)
    token_lifetime: int = 3600
    clock: Callable[[], float] = time.time
    # token -> (service-account email, expiry); grows only as tokens are issued to
    # trusted accounts, and expired ones are dropped on each issue.
    tokens: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    token_fetches: int = 0

    def azure_known(self) -> set[str]:
        """Every deployment the resource has; empty means any name is one."""
        return self.azure_deployments | set(self.azure_deployment_models)

    def trust_aws(self, access_key_id: str, secret_access_key: str, region: str) -> None:
        self.aws_keys[access_key_id] = (secret_access_key, region)

    def trust_service_account(self, email: str, public_key_pem: str, project: str) -> None:
        self.service_accounts[email] = ServiceAccount(email, public_key_pem, project)

    def issue_token(self, email: str) -> tuple[str, int]:
        now = self.clock()
        for token, (_, expiry) in list(self.tokens.items()):
            if expiry <= now:
                del self.tokens[token]
        token = "ya29.sim-" + secrets.token_urlsafe(24)
        self.tokens[token] = (email, now + self.token_lifetime)
        self.token_fetches += 1
        return token, self.token_lifetime

    def token_account(self, token: str) -> ServiceAccount | None:
        """The account a live token was issued to; None if unknown or expired."""
        issued = self.tokens.get(token)
        if issued is None or issued[1] <= self.clock():
            return None
        return self.service_accounts.get(issued[0])

    @staticmethod
    def key_ok(allowed: set[str], key: str, option_key: str | None) -> bool:
        if not key:
            return False
        if option_key is not None:
            return secrets.compare_digest(key, option_key)
        return not allowed or key in allowed
