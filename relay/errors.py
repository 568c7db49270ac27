"""Relay errors: every failure leaves the relay as OpenAI's ``{"error": {...}}``, or on
Anthropic's Messages API as ``{"type": "error", "error": {...}}``."""

from __future__ import annotations

from typing import Any

import orjson


class RelayError(Exception):
    """An error answered to the client with OpenAI's envelope and status code."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers

    def payload(self) -> dict[str, dict[str, str | None]]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return _dumps(self.payload())

    def anthropic_status(self) -> int:
        """The status Anthropic's API gives the same error: a request nobody will pay for is
        its 402 ``billing_error`` (OpenAI's 429 ``insufficient_quota`` would have
        Anthropic's SDKs, and Claude Code, retry it as a rate limit)."""
        return 402 if self.type == "insufficient_quota" else self.status

    def anthropic_payload(self) -> dict[str, object]:
        """The same error in Anthropic's envelope, ``{"type": "error", "error": {...}}``."""
        kind = ANTHROPIC_TYPES.get(self.anthropic_status())
        if kind is None:
            kind = "api_error" if self.status >= 500 else "invalid_request_error"
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def anthropic_body(self, request_id: str | None = None) -> bytes:
        payload = self.anthropic_payload()
        if request_id is not None:
            payload["request_id"] = request_id
        return _dumps(payload)


def _dumps(payload: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError:
        # A string echoed from the request (a model name) that is not valid Unicode: the
        # answer must still go out, with the unpaired surrogates replaced.
        error = payload["error"]
        for name, value in error.items():
            if isinstance(value, str):
                error[name] = valid_unicode(value)
        return orjson.dumps(payload)


def valid_unicode(text: str) -> str:
    """``text`` with any unpaired surrogate (from a JSON ``\\ud800`` escape) replaced."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Anthropic's error types by HTTP status (its API's own table).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None
) -> RelayError:
    return RelayError(400, message, param=param, code=code)


def authentication(message: str, *, code: str | None = "invalid_api_key") -> RelayError:
    return RelayError(401, message, code=code)


def model_not_found(model: str) -> RelayError:
    return RelayError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


def model_not_priced(model: str) -> RelayError:
    # Never served free: a model without a price for the tenant is refused, and says why.
    return RelayError(
        403,
        f"The model `{model}` has no price for your account, so it cannot be served. "
        "Ask your provider to add it to your price list.",
        type="permission_error",
        code="model_not_priced",
        param="model",
    )


def no_channel(model: str) -> RelayError:
    return RelayError(
        503,
        f"The model `{model}` is temporarily unavailable: no upstream channel can serve it.",
        type="server_error",
        code="model_unavailable",
    )


def upstream_failed(status: int, message: str, *, code: str = "upstream_error") -> RelayError:
    return RelayError(status, message, type="server_error", code=code)
