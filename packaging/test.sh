#!/usr/bin/env bash
# Builds the Debian packages of the relay (kring-relay) and the client (kring) with
# `cargo deb`, and checks them: the files and dependencies they carry, the maintainer
# script that creates the kring user, and the relay's systemd unit with
# `systemd-analyze verify` (every directive known, every command executable; any
# warning fails) and `systemd-analyze security` (exposure at most 2.0, "OK").
#
# Needs cargo-deb (`cargo install --locked cargo-deb`), dpkg-deb and systemd-analyze
# (Debian's dpkg and systemd packages); .ci/run installs what is missing.
# KRING_DEB_OUT keeps the packages in that directory (default: a temporary one).
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "packaging: $*" >&2; exit 1; }
for tool in cargo-deb dpkg-deb systemd-analyze; do
    command -v "$tool" >/dev/null || fail "$tool not found (see the top of $0)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out=${KRING_DEB_OUT:-$work/debs}
mkdir -p "$out"

cargo deb --locked -p kring-relay -o "$out/"
cargo deb --locked -p kring-client -o "$out/"
relay=$(ls "$out"/kring-relay_*.deb)
client=$(ls "$out"/kring_*.deb)
echo "built: $relay $client"

# What the packages carry.
contents() { dpkg-deb -c "$1" | awk '{print $6}'; }
for f in ./usr/bin/kring-relay ./usr/lib/systemd/system/kring-relay.service \
    ./usr/share/doc/kring-relay/operations.md ./usr/share/doc/kring-relay/relay.toml.example; do
    contents "$relay" | grep -qx "$f" || fail "$relay lacks $f"
done
contents "$client" | grep -qx ./usr/bin/kring || fail "$client lacks ./usr/bin/kring"
dpkg-deb -f "$relay" Depends | grep -qw adduser || fail "kring-relay does not depend on adduser"
dpkg-deb -e "$relay" "$work/control"
grep -q 'adduser --system' "$work/control/postinst" || fail "postinst does not create the kring user"
grep -q 'deb-systemd-helper' "$work/control/postinst" || fail "postinst does not register the unit"
grep -q '#DEBHELPER#' "$work/control/postinst" && fail "postinst still holds the #DEBHELPER# token"
sh -n "$work/control/postinst" || fail "postinst is not valid sh"

# The unit as packaged, checked against the packaged binary: the same file with its
# commands pointing into the unpacked package.
dpkg-deb -x "$relay" "$work/root"
"$work/root/usr/bin/kring-relay" --version
mkdir -p "$work/unit"
sed "s#/usr/bin/kring-relay#$work/root/usr/bin/kring-relay#g" \
    "$work/root/usr/lib/systemd/system/kring-relay.service" > "$work/unit/kring-relay.service"
verify=$(systemd-analyze verify "$work/unit/kring-relay.service" 2>&1) \
    || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify warns: $verify"
systemd-analyze security --offline=yes --threshold=20 "$work/unit/kring-relay.service" \
    > "$work/security.txt" 2>&1 || { cat "$work/security.txt" >&2; fail "unit exposure above 2.0"; }
grep 'Overall exposure level' "$work/security.txt"
echo "packaging: kring-relay and kring packages built and checked"
