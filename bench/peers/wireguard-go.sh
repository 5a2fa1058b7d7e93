#!/usr/bin/env bash
# wireguard-go (userspace WireGuard in Go), built from the Go module proxy; configured with `wg`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/wg-common.sh"
BIN=$CACHE/bin/wireguard-go/wireguard
wg_spawn() { spawn "$1" "$2" "$3" "$BIN" -f "$3"; }
case "$1" in
    build) go_build wireguard-go local "golang.zx2c4.com/wireguard@$WIREGUARD_GO_VERSION" ;;
    start)
        wg_start "$2"
        echo "VERSION=wireguard-go $("$BIN" --version 2>&1 | grep -o 'v[0-9][^ ]*' | head -1) ($WIREGUARD_GO_VERSION)" \
            >>"$2/peer.env"
        ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
