"""The README's configuration tables name every environment variable the settings read."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# env.str("NAME", ...), env.bool(...), env.db(...), os.environ.get("NAME"), os.environ["NAME"]
READS = re.compile(
    r"""(?:\benv\.\w+\(|\bos\.environ\.get\(|\bos\.getenv\(|\bos\.environ\[)\s*["']([A-Z][A-Z0-9_]+)["']"""
)


def settings_variables() -> set[str]:
    names: set[str] = set()
    for path in sorted((ROOT / "config").glob("*.py")):
        names |= set(READS.findall(path.read_text()))
    return names - {"DJANGO_SETTINGS_MODULE"}


def readme_table_variables() -> set[str]:
    names: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("| `"):
            names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", line.split("|")[1]))
    return names


def test_every_variable_the_settings_read_is_in_a_configuration_table() -> None:
    read = settings_variables()
    assert {"DATABASE_URL", "REDIS_URL", "TOLLGATE_PERIODIC_SECONDS"} <= read  # the scan works
    missing = read - readme_table_variables()
    assert not missing, f"add to the README's configuration table: {sorted(missing)}"
