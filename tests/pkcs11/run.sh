#!/usr/bin/env bash
# Device keys on a PKCS#11 token: installs SoftHSM2 (Debian's softhsm2) when it is
# missing, then runs tests/tests/pkcs11.rs, which must not skip.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -f /usr/lib/softhsm/libsofthsm2.so ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends softhsm2
fi
KRING_REQUIRE_SOFTHSM=1 cargo test --locked -p kring-tests --test pkcs11
