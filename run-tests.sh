#!/usr/bin/env bash
# Every test of Kring, on a fresh machine with a Rust toolchain: installs the tools the
# tests use when they are missing (promtool from Debian's prometheus package for the
# metrics test; SoftHSM2 for the PKCS#11 key test; cargo-deb, dpkg-deb and
# systemd-analyze for the packaging check; Debian's chromium for the browser tests;
# Python packages from PyPI in virtual environments under target/), then runs the
# packaging check, `cargo test --workspace --locked`, the browser suite
# (tests/browser/run.sh) and the interop suite (tests/interop/run.sh).
#
#   ./run-tests.sh                    # everything
#   KRING_SKIP_PACKAGING=1 ./run-tests.sh   # without building the Debian packages
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== tools (installed only when missing)"
apt_missing=()
command -v promtool >/dev/null || apt_missing+=(prometheus)
[ -e /usr/lib/softhsm/libsofthsm2.so ] || apt_missing+=(softhsm2)
[ -x /usr/bin/chromium ] || apt_missing+=(chromium)
python3 -c 'import ensurepip, venv' 2>/dev/null || apt_missing+=(python3-venv)
if [ -z "${KRING_SKIP_PACKAGING:-}" ]; then
    command -v systemd-analyze >/dev/null || apt_missing+=(systemd)
    command -v dpkg-deb >/dev/null || apt_missing+=(dpkg)
fi
if [ ${#apt_missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${apt_missing[@]}"
fi
if [ -z "${KRING_SKIP_PACKAGING:-}" ]; then
    # Its build takes about 1.5 minutes on 2 cores.
    cargo deb --version >/dev/null 2>&1 || cargo install --locked cargo-deb
    echo "== packaging (cargo deb, systemd-analyze; packaging/test.sh)"
    packaging/test.sh
fi

# The PKCS#11 test runs (never skips) when SoftHSM2 is required.
export KRING_REQUIRE_SOFTHSM=1

echo "== cargo test --workspace"
cargo test --workspace --locked

echo "== browser tests (pytest + Playwright on Debian's chromium; tests/browser/run.sh)"
tests/browser/run.sh
echo "== interop tests (STIX, MISP, TAXII; tests/interop/run.sh)"
tests/interop/run.sh
