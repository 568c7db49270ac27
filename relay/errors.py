"""OpenAI-shaped errors: every failure leaves the relay as ``{"error": {...}}``."""

from __future__ import annotations

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
        return orjson.dumps(self.payload())


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
