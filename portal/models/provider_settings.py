"""What each provider type needs of a channel: its settings (not secret) and the shape of
its secret (stored encrypted). Checked when a channel is saved, so a channel that would
fail at its first request is refused at once, with a message that says what is missing.
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.core.exceptions import ValidationError

OPENAI, ANTHROPIC, GEMINI, VERTEX, BEDROCK, AZURE = (
    "openai",
    "anthropic",
    "gemini",
    "vertex",
    "bedrock",
    "azure",
)
# The settings each provider type accepts; anything else is refused, so a secret typed into
# the wrong box is never stored in the clear.
ALLOWED_SETTINGS: dict[str, frozenset[str]] = {
    OPENAI: frozenset(),
    ANTHROPIC: frozenset(),
    GEMINI: frozenset(),
    VERTEX: frozenset({"location", "project"}),
    BEDROCK: frozenset({"region"}),
    AZURE: frozenset({"resource", "deployments", "api_version"}),
}
# Providers with a well-known endpoint: the base URL may be left blank.
DEFAULT_ENDPOINT = frozenset({ANTHROPIC, GEMINI, VERTEX, BEDROCK, AZURE})
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d$")
_LOCATION = re.compile(r"^(global|[a-z]+-[a-z]+\d+)$")
_RESOURCE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
# Azure OpenAI's data-plane version the relay sends by default, and the first that takes
# ``stream_options`` (without ``include_usage`` a stream carries no usage, and the relay
# could only guess what it cost) and ``max_completion_tokens``, which the relay sends:
# 2024-09-01-preview, and every version since, GA 2024-10-21 included. Older ones refuse
# both as unknown arguments.
AZURE_DEFAULT_API_VERSION = "2024-10-21"
AZURE_OLDEST_API_VERSION = "2024-09-01-preview"
_NAME = re.compile(r"^[A-Za-z0-9._:/-]{1,200}$")
_SERVICE_ACCOUNT_FIELDS = ("client_email", "private_key", "token_uri")


def parse_json_secret(secret: str) -> dict[str, Any]:
    try:
        parsed = json.loads(secret)
    except ValueError:
        raise ValidationError({"secret": "The secret must be a JSON object."}) from None
    if not isinstance(parsed, dict):
        raise ValidationError({"secret": "The secret must be a JSON object."})
    return parsed


# What may go into an HTTP header as it is: visible ASCII. A key pasted with a
# non-breaking space or a line break cannot be sent (and CR/LF would inject headers).
VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
MAX_HEADER_SECRET_LENGTH = 4096


def check_header_secret(value: str, what: str = "The secret") -> None:
    """Refuse a credential that is sent in a header but cannot be (never echoing it)."""
    if len(value) > MAX_HEADER_SECRET_LENGTH:
        raise ValidationError(
            {"secret": f"{what} is longer than {MAX_HEADER_SECRET_LENGTH} characters."}
        )
    if value and not VISIBLE_ASCII.fullmatch(value):
        raise ValidationError(
            {
                "secret": f"{what} may only contain printable ASCII characters, without "
                "spaces, line breaks or non-ASCII characters (check for a space pasted "
                "with it)."
            }
        )


def check_secret(provider_type: str, secret: str) -> None:
    """Refuse a secret that cannot work for ``provider_type`` (never echoing it back).

    The one check of a channel's secret: the model's ``clean`` (so the services, the API,
    the dashboard and the admin) and the relay's routing table all use it.
    """
    if provider_type == VERTEX:
        info = parse_json_secret(secret)
        if info.get("type") != "service_account" or not all(
            isinstance(info.get(name), str) and info[name] for name in _SERVICE_ACCOUNT_FIELDS
        ):
            raise ValidationError(
                {"secret": "Paste the service account's JSON key file (type service_account)."}
            )
        if not str(info["token_uri"]).startswith(("https://", "http://")) or not (
            VISIBLE_ASCII.fullmatch(str(info["token_uri"]))
        ):
            raise ValidationError({"secret": "The key file's token_uri must be an http(s) URL."})
    elif provider_type == BEDROCK:
        keys = parse_json_secret(secret)
        if not isinstance(keys.get("access_key_id"), str) or not isinstance(
            keys.get("secret_access_key"), str
        ):
            raise ValidationError(
                {
                    "secret": 'Give {"access_key_id": ..., "secret_access_key": ...} '
                    '(and "session_token" for temporary credentials).'
                }
            )
        for name in ("access_key_id", "secret_access_key", "session_token"):
            if name in keys:  # each is sent in, or signs, a header
                check_header_secret(str(keys[name]), name)
    elif provider_type != OPENAI and not secret:
        raise ValidationError({"secret": "This provider needs an API key."})
    else:
        check_header_secret(secret)


def check_settings(provider_type: str, base_url: str, settings: Any) -> None:
    """Refuse settings that ``provider_type`` does not take or lacks."""
    if not isinstance(settings, dict):
        raise ValidationError({"provider_settings": "Settings are a JSON object."})
    allowed = ALLOWED_SETTINGS.get(provider_type, frozenset())
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValidationError(
            {"provider_settings": f"Not a setting of {provider_type}: {', '.join(unknown)}."}
        )
    if not base_url and provider_type not in DEFAULT_ENDPOINT:
        raise ValidationError({"base_url": "This provider needs a base URL."})
    if provider_type == BEDROCK and not _REGION.match(str(settings.get("region", ""))):
        raise ValidationError({"provider_settings": "Bedrock needs a region, e.g. us-east-1."})
    if provider_type == VERTEX:
        location = str(settings.get("location", "us-central1"))
        if not _LOCATION.match(location):
            raise ValidationError({"provider_settings": "location is e.g. us-central1 or global."})
        project = settings.get("project", "")
        if project and not re.match(r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$", str(project)):
            raise ValidationError({"provider_settings": "project is a Google Cloud project id."})
    if provider_type == AZURE:
        _check_azure(base_url, settings)


def azure_api_version_problem(version: str) -> str | None:
    """Why an Azure channel cannot use ``version``, in words for its operator; None if it
    can. The relay asks again of every stored channel (one saved before this rule)."""
    if not _API_VERSION.match(version):
        return "api_version is e.g. 2024-10-21 or 2025-04-01-preview."
    if version[:10] < AZURE_OLDEST_API_VERSION[:10]:
        return (
            f"api_version {version} is older than {AZURE_OLDEST_API_VERSION}, the first Azure "
            "OpenAI version with stream_options (usage of streamed answers) and "
            f"max_completion_tokens: use {AZURE_DEFAULT_API_VERSION} or later."
        )
    return None


def _check_azure(base_url: str, settings: dict[str, Any]) -> None:
    resource = settings.get("resource", "")
    if not base_url and not (isinstance(resource, str) and _RESOURCE.match(resource)):
        raise ValidationError(
            {"provider_settings": "Azure needs a resource name (or a base URL for the endpoint)."}
        )
    problem = azure_api_version_problem(str(settings.get("api_version", "")))
    if problem is not None:
        raise ValidationError({"provider_settings": problem})
    deployments = settings.get("deployments", {})
    if not isinstance(deployments, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _NAME.match(k) and _NAME.match(v)
        for k, v in deployments.items()
    ):
        raise ValidationError(
            {"provider_settings": "deployments maps model names to deployment names."}
        )
