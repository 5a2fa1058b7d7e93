#!/usr/bin/env bash
# Nebula as Debian packages it (apt `nebula`, installed by bench/run from bench/apt-packages.txt).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/nebula-common.sh"
NEBULA=/usr/bin/nebula
NEBULA_CERT=/usr/bin/nebula-cert
case "$1" in
    build) [[ -x $NEBULA && -x $NEBULA_CERT ]] || die "$NEBULA missing: apt-get install nebula" ;;
    start) nebula_start "$2" ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
