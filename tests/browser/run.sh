#!/usr/bin/env bash
# The browser suite: `kring ui` driven by Playwright in Debian's chromium (never a
# downloaded browser build).
#
#   tests/browser/run.sh [PYTEST ARGS...]
#
# Installs chromium with apt-get when /usr/bin/chromium is missing, creates
# target/venv-browser from tests/browser/requirements.txt (PyPI) when missing or
# when the requirements changed, builds kring, kring-relay and kring-certs-dev
# (cargo --locked), starts a federation of two relays on free local ports and runs
# pytest. Every process it starts is stopped at the end. With
# KRING_UI_SCREENSHOTS=DIR the tests save screenshots of the main pages there
# (docs/ui holds the ones in the documentation).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/target/venv-browser"
req="$root/tests/browser/requirements.txt"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "run.sh: run as root or install it yourself: $*" >&2
        exit 2
    fi
}

if [ ! -x /usr/bin/chromium ]; then
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
fi
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/.requirements"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.requirements"
fi

(cd "$root" && cargo build --locked -p kring-client -p kring-relay -p kring-certs-dev --bins)

export KRING_BIN_DIR="$root/target/debug"
export PYTHONDONTWRITEBYTECODE=1
# Playwright drives the system chromium; it must never fetch a browser of its own.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
cd "$root/tests/browser"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
