# Sourced by scripts/demo and scripts/test: create or reuse .venv at the
# repository root and install the project into it when pyproject.toml changed.
# Usage: ensure_venv EXTRAS   (e.g. "appliance,cluster")

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"

ensure_venv() {
    local extras="$1"
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "Sluice needs Python 3.11 or newer as '$python' (set PYTHON=...)" >&2
        return 1
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        if ! "$python" -m venv "$VENV" 2>/dev/null; then
            # Debian's python3 lacks ensurepip until python3-venv is installed.
            if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
                apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
                "$python" -m venv "$VENV"
            else
                echo "cannot create $VENV: install python3-venv" >&2
                return 1
            fi
        fi
    fi
    local stamp="$VENV/.sluice-installed"
    local want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-$extras"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "Installing Sluice and its dependencies into $VENV ..." >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[$extras]"
        echo "$want" > "$stamp"
    fi
}
