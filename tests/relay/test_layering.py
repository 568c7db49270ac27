"""The relay builds on billing and the tenancy domain only: no view, template or UI code.

import-linter (``pyproject.toml``) checks the project's own layers and forbids the console
and the UI libraries; it cannot name Django's own view and template modules, so this reads
every relay module's imports, function-level ones included.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "relay"
UI_MODULES = (
    "console",
    "django.template",
    "django.views",
    "django.shortcuts",
    "django.contrib.admin",
    "django.contrib.messages",
    "rest_framework",
)


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def is_ui(module: str) -> bool:
    return any(module == ui or module.startswith(f"{ui}.") for ui in UI_MODULES)


@pytest.mark.parametrize(
    "path", sorted(RELAY.rglob("*.py")), ids=lambda p: str(p.relative_to(RELAY.parent))
)
def test_relay_modules_import_no_ui_code(path: Path) -> None:
    assert sorted(m for m in imported_modules(path) if is_ui(m)) == []


def test_the_check_sees_ui_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    body = "def f():\n    from django.shortcuts import render\n    import console.views\n"
    sample.write_text(body)
    assert sorted(m for m in imported_modules(sample) if is_ui(m)) == [
        "console.views",
        "django.shortcuts",
    ]


# What a web worker (``config.asgi``) must not load at start: each is only for some
# processes or some channels, and costs every worker its memory (issue 18: at most 120 MB
# per worker). Bedrock's and Vertex's SDKs load with the first channel of that type.
NOT_IN_A_WEB_WORKER = (
    "celery",
    "kombu",
    "botocore",
    "google.auth",
    "stripe",
    "fpdf",
    "bpe_openai",  # the token counter's child loads it, never the worker
    "mozilla_django_oidc",  # only an SSO sign-in
    "requests",
    "relay.health",
)
LOADED_BY_A_WORKER = """
import sys
import config.asgi
print("LOADED", *sorted(n for n in {names} if n in sys.modules))
"""


def test_a_web_worker_starts_without_libraries_it_may_never_use() -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter, our own script
        [sys.executable, "-c", LOADED_BY_A_WORKER.format(names=repr(NOT_IN_A_WEB_WORKER))],
        cwd=RELAY.parent,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "LOADED", done.stdout[-500:]
