#!/usr/bin/env bash
# The interop suite: Kring's STIX 2.1 and MISP exports and its TAXII 2.1 service
# checked with the tools organisations run (stix2-validator --strict, taxii2-client,
# PyMISP) and against medallion, the OASIS reference TAXII server.
#
#   tests/interop/run.sh [PYTEST ARGS...]
#
# Creates target/venv-interop from tests/interop/requirements.txt (PyPI) when
# missing or when the requirements changed, builds kring, kring-relay and
# kring-certs-dev (cargo --locked), starts a demo federation on free local ports
# and runs pytest. Every process it starts is stopped at the end.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv="$root/target/venv-interop"
req="$root/tests/interop/requirements.txt"

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null
    else
        echo "run.sh: python3 with venv is needed (Debian: apt-get install python3-venv)" >&2
        exit 2
    fi
fi
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$req" "$venv/.requirements"; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.requirements"
fi

(cd "$root" && cargo build --locked -p kring-client -p kring-relay -p kring-certs-dev --bins)

# Bundles of the STIX builder for every policy level and TLP colour, for
# test_export.py to validate strictly.
samples="$root/target/interop-stix-samples"
rm -rf "$samples"
(cd "$root" && KRING_STIX_SAMPLES="$samples" cargo test --locked -q -p kring-client --lib \
    -- export::stix::tests::bundles_for_every_label_and_tlp --exact >/dev/null)
export KRING_STIX_SAMPLES="$samples"

export KRING_BIN_DIR="$root/target/debug"
export PYTHONDONTWRITEBYTECODE=1
cd "$root/tests/interop"
exec "$venv/bin/python" -m pytest -p no:cacheprovider -q "$@"
