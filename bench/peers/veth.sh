#!/usr/bin/env bash
# Baseline: the raw veth pair between the namespaces, no tunnel (compare.py builds it as `under0` on both sides).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
case "$1" in
    build) ;;
    start)
        cat >"$2/peer.env" <<ENV
OVERLAY_A=$UNDER_A
OVERLAY_B=$UNDER_B
DEV_A=under0
DEV_B=under0
ENDPOINT_PIDS=
VERSION=kernel $(uname -r)
ENV
        ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
