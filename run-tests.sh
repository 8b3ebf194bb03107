#!/usr/bin/env bash
# Every test of Kring, on a fresh machine with a Rust toolchain: installs the tools the
# tests use when they are missing (promtool from Debian's prometheus package for the
# metrics test; cargo-deb, dpkg-deb and systemd-analyze for the packaging check), then
# runs the packaging check and `cargo test --workspace --locked`.
#
#   ./run-tests.sh                    # everything
#   KRING_SKIP_PACKAGING=1 ./run-tests.sh   # without building the Debian packages
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

echo "== tools (installed only when missing)"
apt_missing=()
command -v promtool >/dev/null || apt_missing+=(prometheus)
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

echo "== cargo test --workspace"
cargo test --workspace --locked
