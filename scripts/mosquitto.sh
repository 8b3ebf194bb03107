#!/bin/sh
# mosquitto for kring-bench: Debian's package, TLS 1.3 with client
# certificates from the Kring dev PKI, persistence on.
#
#   scripts/mosquitto.sh install            install mosquitto if missing (root; apt-get)
#   scripts/mosquitto.sh run FED_DIR [DIR]  a broker like the bench's, in the foreground:
#                                           FED_DIR from `kring-certs-dev init --out FED_DIR`,
#                                           config/state in DIR (default: a new temp dir);
#                                           prints the port; Ctrl-C stops it
#
# kring-bench itself writes the same configuration and starts `mosquitto -c FILE`
# (it needs only `install`). Persistence: `autosave_interval 1` (seconds) with
# `autosave_on_changes false` writes the in-memory state to disk every second; see
# BENCHMARKS.md for why.
set -eu

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]
}

install() {
    if have_mosquitto; then
        echo "mosquitto is installed: $( (command -v mosquitto || echo /usr/sbin/mosquitto) | head -n1)"
        return 0
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "mosquitto is missing; run this as root (apt-get install -y mosquitto)" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto
    # Debian's package starts a system broker on port 1883; the bench does not need it.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
        systemctl stop mosquitto || true
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# OpenSSL 3.0 cannot read the PKCS#8 v2 keys (with the public key) the dev PKI
# writes; re-encode the Ed25519 seed as PKCS#8 v1.
pkcs8_v1() {
    seed=$(openssl asn1parse -in "$1" | awk '/OCTET STRING/ && /HEX DUMP/ {print $NF; exit}' | sed 's/.*://; s/^0420//')
    printf '302e020100300506032b657004220420%s' "$seed" | xxd -r -p |
        openssl base64 | { echo '-----BEGIN PRIVATE KEY-----'; cat; echo '-----END PRIVATE KEY-----'; }
}

run() {
    fed=${1:?usage: scripts/mosquitto.sh run FED_DIR [DIR]}
    dir=${2:-$(mktemp -d /tmp/kring-mosquitto-XXXXXX)}
    have_mosquitto || { echo "mosquitto is missing: scripts/mosquitto.sh install" >&2; exit 1; }
    mkdir -p "$dir/data"
    port=$(free_port)
    pkcs8_v1 "$fed/relays/bz/relay.key" >"$dir/broker.key"
    chmod 600 "$dir/broker.key"
    cat >"$dir/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous false
listener $port 127.0.0.1
cafile $fed/ca/root.crt
certfile $fed/relays/bz/relay.crt
keyfile $dir/broker.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
persistence true
persistence_location $dir/data/
autosave_interval 1
autosave_on_changes false
max_queued_messages 1000000
max_inflight_messages 100
set_tcp_nodelay true
log_dest file $dir/mosquitto.log
log_type error
log_type warning
user root
EOF
    echo "mosquitto on 127.0.0.1:$port (config $dir/mosquitto.conf); server name bz.relay.kring;"
    echo "clients: --cafile $fed/ca/root.crt --cert $fed/users/USER/user.crt --key <USER key as PKCS#8 v1>"
    mosquitto -c "$dir/mosquitto.conf" &
    pid=$!
    trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; echo "mosquitto stopped"' INT TERM EXIT
    echo "port: $port"
    wait "$pid"
}

case "${1:-}" in
    install) install ;;
    run) shift; run "$@" ;;
    *) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
