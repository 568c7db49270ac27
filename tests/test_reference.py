"""The OpenAI schemas the tests validate against travel with the repository.

A fresh clone has only ``tests/reference/``; CI's checkout also has ``../shared/reference/``,
the copies' source, and there they must not have drifted apart (refresh as the README there
says).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.openai_schema import REFERENCE_DIR, schema_document

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def test_the_schemas_and_their_licence_are_in_the_repository() -> None:
    names = {path.name for path in REFERENCE_DIR.iterdir()}
    assert {
        "openai-openapi-chat-subset.json",
        "openai-openapi-responses-subset.json",
        "openai-openapi.LICENSE",
        "README.md",
    } <= names
    assert "MIT License" in (REFERENCE_DIR / "openai-openapi.LICENSE").read_text()
    assert "CreateChatCompletionResponse" in schema_document()["components"]["schemas"]


@pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="no ../shared/reference beside")
def test_the_copies_match_their_source() -> None:
    for source in sorted(SHARED_REFERENCE.iterdir()):
        copy = REFERENCE_DIR / source.name
        assert copy.is_file(), f"{source.name} is not copied into tests/reference/"
        assert copy.read_bytes() == source.read_bytes(), f"{source.name} is stale"
