#!/usr/bin/env bash
# meshboi, the toy mesh VPN from the reference article (Go module github.com/samvrlewis/meshboi): a rolodex in
# namespace A and one client per namespace sharing a PSK, as its README shows. The start step follows that README
# and has not run here: the module proxy has refused to serve the module (see the build error in the results).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BIN=$CACHE/bin/meshboi/meshboi
case "$1" in
    build) go_build meshboi local "github.com/samvrlewis/meshboi/cmd/meshboi@$MESHBOI_VERSION" ;;
    start)
        WORK=$2
        spawn "$WORK" "$NS_A" rolodex "$BIN" rolodex >/dev/null
        sleep 0.5 # no readiness signal to wait on; clients retry registration anyway
        pa=$(spawn "$WORK" "$NS_A" meshboi-a "$BIN" client -rolodex-address "$UNDER_A" -vpn-ip 10.79.0.1/24 \
            -psk rolomesh-bench-psk -network bench -tun-name mba)
        pb=$(spawn "$WORK" "$NS_B" meshboi-b "$BIN" client -rolodex-address "$UNDER_A" -vpn-ip 10.79.0.2/24 \
            -psk rolomesh-bench-psk -network bench -tun-name mbb)
        wait_for 20 "meshboi devices" in_ns "$NS_A" ip link show mba
        wait_for 20 "meshboi devices" in_ns "$NS_B" ip link show mbb
        cat >"$WORK/peer.env" <<ENV
OVERLAY_A=10.79.0.1
OVERLAY_B=10.79.0.2
DEV_A=mba
DEV_B=mbb
ENDPOINT_PIDS=$pa $pb
VERSION=meshboi $MESHBOI_VERSION
ENV
        ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
