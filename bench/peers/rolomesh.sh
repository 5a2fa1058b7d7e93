#!/usr/bin/env bash
# Rolomesh: the rolodex and agent A in namespace A, agent B in namespace B. The binary is $ROLOMESH_BIN
# (bench/run sets it to the release build).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BIN=${ROLOMESH_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/rolomesh/target}/release/rolomesh}

agent() { # WORK NS NAME OVERLAY
    spawn "$1" "$2" "agent-$3" env RUST_LOG=info "$BIN" agent --network bench --secret-file "$1/secret" \
        --name "$3" --address "$4/10" --rolodex "$UNDER_A:6264" --tun-name rm0 --metrics-listen 127.0.0.1:9464
}

case "$1" in
    build) [[ -x $BIN ]] || die "$BIN missing: cargo build --release -p rolomesh" ;;
    start)
        WORK=$2
        "$BIN" keys generate >"$WORK/secret" || die "$BIN keys generate failed"
        "$BIN" keys rolodex-key --network bench --secret-file "$WORK/secret" >"$WORK/rolodex.key" ||
            die "$BIN keys rolodex-key failed"
        rpid=$(spawn "$WORK" "$NS_A" rolodex "$BIN" rolodex --listen "$UNDER_A:6264" \
            --network "bench=$WORK/rolodex.key")
        pa=$(agent "$WORK" "$NS_A" a 100.64.0.1)
        pb=$(agent "$WORK" "$NS_B" b 100.64.0.2)
        wait_for 20 "rm0 in $NS_A" in_ns "$NS_A" ip link show rm0
        wait_for 20 "rm0 in $NS_B" in_ns "$NS_B" ip link show rm0
        alive "$rpid" "$WORK/rolodex.log"
        alive "$pa" "$WORK/agent-a.log"
        alive "$pb" "$WORK/agent-b.log"
        rev=$(git -C "$BENCH_DIR" describe --always --dirty 2>/dev/null || echo unknown)
        cat >"$WORK/peer.env" <<ENV
OVERLAY_A=100.64.0.1
OVERLAY_B=100.64.0.2
DEV_A=rm0
DEV_B=rm0
ENDPOINT_PIDS=$pa $pb
VERSION=rolomesh $rev ($(basename "$(dirname "$BIN")") build)
ENV
        ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
