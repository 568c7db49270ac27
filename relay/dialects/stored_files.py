"""Files kept with the provider, which a request may not name.

OpenAI and Anthropic let a request refer to a file uploaded to the account beforehand
(``file_id``) instead of carrying its content. Through the relay that account is the
channel's: the relay offers no upload, so an id a client sends names a file of the
operator's, or of another app on the same account, and the model would read it out to
the client. Such parts are refused with a 400 that says where; the content itself (a
``data:`` URL, ``file_data``, a base64 ``source``) passes as before.

Only the parts that carry a file are looked at, never a tool's input or schema that
happens to have a ``file_id`` field. Most bodies are not walked at all: a key that
decodes to ``file_id`` is written either as it is or with a ``\\u`` escape in it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay import errors

_NAME = b'"file_id"'
_ESCAPE = b"\\u"


def _may_name_a_file(body: bytes) -> bool:
    return _NAME in body or _ESCAPE in body


def _refused(param: str) -> errors.RelayError:
    return errors.invalid_request(
        "A file kept with the provider cannot be named here: send its content in the "
        "request instead.",
        param=param,
    )


def _parts(value: Any) -> list[tuple[int, Mapping[str, Any]]]:
    if not isinstance(value, list):
        return []
    return [(index, part) for index, part in enumerate(value) if isinstance(part, Mapping)]


def check_chat(body: bytes, payload: Mapping[str, Any]) -> None:
    """Chat completions: a ``file`` part naming its ``file.file_id``."""
    if not _may_name_a_file(body):
        return
    for m, message in _parts(payload.get("messages")):
        for p, part in _parts(message.get("content")):
            file = part.get("file")
            if part.get("type") == "file" and isinstance(file, Mapping) and file.get("file_id"):
                raise _refused(f"messages[{m}].content[{p}].file.file_id")


def _check_response_parts(value: Any, where: str) -> None:
    for p, part in _parts(value):
        if part.get("type") in ("input_file", "input_image") and part.get("file_id"):
            raise _refused(f"{where}[{p}].file_id")


def check_responses(body: bytes, payload: Mapping[str, Any]) -> None:
    """Responses: an ``input_file`` or ``input_image`` part with a ``file_id``, in a
    message's content or in a tool output given as parts."""
    if not _may_name_a_file(body):
        return
    for i, item in _parts(payload.get("input")):
        _check_response_parts(item.get("content"), f"input[{i}].content")
        _check_response_parts(item.get("output"), f"input[{i}].output")


def _check_blocks(value: Any, where: str) -> None:
    for b, block in _parts(value):
        source = block.get("source")
        if isinstance(source, Mapping) and source.get("type") == "file":
            raise _refused(f"{where}.{b}.source")
        if block.get("type") == "container_upload" and block.get("file_id"):
            raise _refused(f"{where}.{b}.file_id")
        if block.get("type") == "tool_result":
            _check_blocks(block.get("content"), f"{where}.{b}.content")


def check_messages(body: bytes, payload: Mapping[str, Any]) -> None:
    """Messages: a block whose ``source`` is a ``file`` (a document or an image, in a
    message or a tool result), or a ``container_upload``."""
    if not _may_name_a_file(body):
        return
    for m, message in _parts(payload.get("messages")):
        _check_blocks(message.get("content"), f"messages.{m}.content")
