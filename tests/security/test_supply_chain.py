"""Dependencies are pinned by a lock file, and every way of installing uses it as it is."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_every_dependency_is_locked_to_one_version_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {package["name"]: package for package in lock["package"]}
    wanted = [*project["project"]["dependencies"], *project["dependency-groups"]["dev"]]
    for requirement in wanted:
        package = locked.get(_name(requirement))
        assert package is not None, f"{requirement} is not in uv.lock"
        assert package["version"], requirement
        files = [package.get("sdist"), *package.get("wheels", [])]
        assert all(f["hash"].startswith("sha256:") for f in files if f), requirement
    # What is installed here is what the lock says (the venv was synced from it).
    for requirement in project["project"]["dependencies"]:
        name = _name(requirement)
        assert metadata.version(name) == locked[name]["version"], name


def test_every_install_path_installs_from_the_lock() -> None:
    bootstrap = (ROOT / "bin" / "_bootstrap.sh").read_text()
    assert "uv sync --frozen" in bootstrap  # README's bin/demo and bin/test
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "COPY pyproject.toml uv.lock" in dockerfile
    assert "uv sync --frozen --no-dev" in dockerfile
    assert "pip install" not in dockerfile.replace('pip install --no-cache-dir "uv==', "")
    uv_version = re.search(r'UV_VERSION="([^"]+)"', bootstrap)
    assert uv_version and f'"uv=={uv_version.group(1)}"' in dockerfile  # the same uv
