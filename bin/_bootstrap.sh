# Sourced by bin/demo and bin/test: make .venv match uv.lock exactly, needing only python3.
# uv itself lives in its own small venv (.tools/) so that syncing .venv never removes it.
set -euo pipefail
# A step that fails says which, rather than leaving the caller to exit 1 in silence.
trap 'echo "bin/_bootstrap.sh: setting up .venv failed at line $LINENO: $BASH_COMMAND" >&2' ERR
UV_VERSION="0.13.9"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .tools/bin/uv ] || [ "$(.tools/bin/uv --version | cut -d' ' -f2)" != "$UV_VERSION" ]; then
    "$PYTHON" -m venv .tools
    .tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT="$ROOT/.venv"
.tools/bin/uv sync --frozen --quiet --python "$PYTHON"
export PATH="$ROOT/.venv/bin:$PATH"
trap - ERR
