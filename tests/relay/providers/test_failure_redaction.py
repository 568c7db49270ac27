"""Provider adapters redact a secret echoed in an error's code or type, as in its message
(issue 11, #4): the code reaches the client and the usage event's ``error_code``."""

from __future__ import annotations

import orjson

from relay.providers import anthropic, bedrock, openai

KEY = "sk-echoed\nsecret-123456"


def test_openai_error_code_is_redacted() -> None:
    body = {"error": {"message": f"key {KEY} refused", "code": f"bad_key:{KEY}"}}
    failure = openai.failure_from(400, body, (KEY,))
    assert failure.code == "bad_key:[redacted]"
    assert "secret-123456" not in failure.message


def test_anthropic_error_type_is_redacted() -> None:
    body = {"error": {"type": KEY, "message": "no"}}
    assert anthropic.failure_from(400, body, (KEY,)).code == "[redacted]"


def test_bedrock_error_kind_is_redacted() -> None:
    body = orjson.dumps({"message": "no"})
    failure = bedrock.failure_for("validation" + KEY, body, 400, (KEY,))
    assert failure.code is not None and "secret-123456" not in failure.code
    assert len(failure.code) <= 64
