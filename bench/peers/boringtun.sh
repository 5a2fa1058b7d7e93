#!/usr/bin/env bash
# boringtun (Cloudflare's userspace WireGuard in Rust), `cargo install boringtun-cli`; configured with `wg`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/wg-common.sh"
ROOT=$CACHE/cargo/boringtun-$BORINGTUN_VERSION
BIN=$ROOT/bin/boringtun-cli
# Already root: keep privileges (it would otherwise switch to the invoking sudo user).
wg_spawn() { spawn "$1" "$2" "$3" "$BIN" --foreground --disable-drop-privileges "$3"; }
case "$1" in
    build)
        [[ -x $BIN ]] && exit 0
        cargo install boringtun-cli --version "$BORINGTUN_VERSION" --locked --root "$ROOT" >&2 ||
            die "cargo install boringtun-cli $BORINGTUN_VERSION failed"
        ;;
    start)
        wg_start "$2"
        echo "VERSION=$("$BIN" --version 2>&1 | head -1)" >>"$2/peer.env"
        ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
