#!/usr/bin/env bash
# Nebula's current release, built from the Go module proxy.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/nebula-common.sh"
NEBULA=$CACHE/bin/nebula/nebula
NEBULA_CERT=$CACHE/bin/nebula/nebula-cert
case "$1" in
    build) go_build nebula local "github.com/slackhq/nebula/cmd/nebula@$NEBULA_VERSION" \
        "github.com/slackhq/nebula/cmd/nebula-cert@$NEBULA_VERSION" ;;
    start) nebula_start "$2" && echo "NOTE=$NEBULA_NOTE" >>"$2/peer.env" ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
