# Sourced by scripts/demo and scripts/test: create or reuse .venv at the
# repository root and install into it, with pip's hash checking on, exactly
# what requirements/test.lock pins (the appliance, the cluster side, the SDK
# and the test tools), then Sluice itself (editable, no dependencies, built
# with the locked setuptools).  Reinstalls when the lock or pyproject changes.
# Usage: ensure_venv

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
LOCK="$ROOT/requirements/test.lock"

ensure_venv() {
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
    want="$(cat "$ROOT/pyproject.toml" "$LOCK" | sha256sum | cut -c1-16)"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "Installing Sluice and its locked dependencies into $VENV ..." >&2
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r "$LOCK"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e "$ROOT"
        "$VENV/bin/python" -m pip check --disable-pip-version-check >/dev/null
        echo "$want" > "$stamp"
    fi
}
