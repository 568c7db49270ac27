"""Chromium for the browser tests: Debian's package, driven by Playwright, never downloaded.

CI installs Chromium and requires these tests (``TOLLGATE_REQUIRE_SERVICES=1``); elsewhere
they are skipped when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", "/usr/bin/chromium")
# Screenshots of the pages the tests walk through, for a person to look at.
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

browser_marks = [
    pytest.mark.skipif(
        not shutil.which(CHROMIUM) and os.environ.get("TOLLGATE_REQUIRE_SERVICES") != "1",
        reason=f"needs Chromium at {CHROMIUM} (apt-get install chromium)",
    ),
    # WhiteNoise hands static files to Django's ASGI handler as synchronous iterators.
    pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous"),
]


@contextlib.contextmanager
def launched(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A headless Chromium, for the ``browser`` fixture of the tests that need one."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on this thread; the test's own ORM calls
    # are still plain synchronous code, so Django's guard against async use is lifted.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield chromium
        chromium.close()
