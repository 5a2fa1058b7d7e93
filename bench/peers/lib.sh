# Shared by bench/run and bench/peers/*.sh (sourced, not run): pinned versions, cache paths, the namespace
# topology names, and helpers to build cached binaries and to start processes inside a namespace.
#
# Peer script contract: `peers/NAME.sh build` makes sure the binaries exist (cached; a failure prints why on stderr
# and exits non-zero); `peers/NAME.sh start WORKDIR` starts both tunnel endpoints in $NS_A and $NS_B, returns once
# they are configured, and writes WORKDIR/peer.env (KEY=VALUE lines): OVERLAY_A, OVERLAY_B (tunnel addresses),
# DEV_A, DEV_B (tunnel devices), ENDPOINT_PIDS (the two endpoint processes, whose CPU is measured) and VERSION.
# Every process started goes into WORKDIR/pids, which compare.py kills afterwards.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}/bench

NS_A=${NS_A:-rmb-a}
NS_B=${NS_B:-rmb-b}
UNDER_A=${UNDER_A:-192.168.77.1}
UNDER_B=${UNDER_B:-192.168.77.2}

# Pinned peer versions, all built with the machine's Go. Nebula v1.12.0 and v1.11.2 (the newest releases) cannot
# be built here: the module proxy refuses some of their dependencies (DefinedNet/netlink, DefinedNet/dnsconfig,
# a newer gvisor), so the newest release that builds is used.
NEBULA_VERSION=v1.11.0
NEBULA_NOTE="newest releases v1.12.0/v1.11.2 do not build here: dependencies not served by the module proxy"
WIREGUARD_GO_VERSION=v0.0.0-20260522210424-ecfc5a8d5446 # wireguard-go publishes no tags; newest served
BORINGTUN_VERSION=0.7.1
MESHBOI_VERSION=latest # the toy has no release tags
HEADSCALE_VERSION=v0.29.3
TAILSCALE_VERSION=v1.102.1 # a stable release near the tailscale.com library headscale $HEADSCALE_VERSION uses

die() { echo "$*" >&2; exit 1; }

# go_build NAME TOOLCHAIN PKG@VERSION... : installs the packages into $CACHE/bin/NAME (once).
go_build() {
    local name=$1 toolchain=$2; shift 2
    local dir="$CACHE/bin/$name" stamp="$CACHE/bin/$name/.stamp"
    local want="$*"
    [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return 0
    command -v go >/dev/null || die "go is not on PATH"
    rm -rf "$dir.tmp" && mkdir -p "$dir.tmp"
    echo "building $name: go install $*" >&2
    # Module sources and objects are cached outside the clone; CGO off keeps the binaries self-contained.
    GOTOOLCHAIN=$toolchain CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOMODCACHE="$CACHE/gomod" GOBIN="$dir.tmp" \
        go install -trimpath -ldflags "-s -w" "$@" >&2 || { rm -rf "$dir.tmp"; die "go install $* failed"; }
    echo "$want" >"$dir.tmp/.stamp"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# go_build_via_module NAME MODULE VERSION PKG : like go_build, for a module `go install M@V` refuses (here:
# headscale, where go install's deprecation check needs the module's version list, which the proxy does not
# serve). A throwaway module of ours requires it and builds the package.
go_build_via_module() {
    local name=$1 mod=$2 ver=$3 pkg=$4
    local dir="$CACHE/bin/$name" stamp="$CACHE/bin/$name/.stamp" src="$CACHE/src/$name-$ver"
    [[ -f "$stamp" && "$(cat "$stamp")" == "$pkg@$ver" ]] && return 0
    command -v go >/dev/null || die "go is not on PATH"
    rm -rf "$dir.tmp" "$src" && mkdir -p "$dir.tmp" "$src"
    printf 'module rolomesh.local/bench-%s\n\ngo 1.24\n\nrequire %s %s\n' "$name" "$mod" "$ver" >"$src/go.mod"
    printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "$pkg" >"$src/tools.go"
    echo "building $name: $pkg from $mod@$ver" >&2
    (
        cd "$src"
        export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOMODCACHE="$CACHE/gomod"
        go mod tidy >&2 && go build -trimpath -ldflags "-s -w" -o "$dir.tmp/$(basename "$pkg")" "$pkg" >&2
    ) || { rm -rf "$dir.tmp"; die "building $pkg from $mod@$ver failed"; }
    echo "$pkg@$ver" >"$dir.tmp/.stamp"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# spawn WORKDIR NS LOGNAME CMD... : starts CMD in namespace NS, output to WORKDIR/LOGNAME.log; prints its pid.
# `ip netns exec` execs the command, so the pid is the command's own.
spawn() {
    local work=$1 ns=$2 log=$3; shift 3
    ip netns exec "$ns" "$@" >"$work/$log.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >>"$work/pids"
    echo "$pid"
}

# wait_for SECONDS DESCRIPTION CMD... : polls CMD every 0.1 s until it succeeds.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.1
    done
}

# alive PID LOG : fails with the log's tail if the process has exited.
alive() {
    kill -0 "$1" 2>/dev/null || die "process $1 exited: $(tail -5 "$2" 2>/dev/null)"
}

in_ns() { ip netns exec "$@"; }
