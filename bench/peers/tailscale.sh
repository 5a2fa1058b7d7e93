#!/usr/bin/env bash
# Tailscale: tailscaled (kernel TUN mode) in each namespace, joined through a local headscale control server in
# namespace A. Both are built from the Go module proxy. headscale insists on a DERP map, so its embedded relay is
# configured, but clients cannot use it (they want TLS): the nodes talk directly over the veth, which the
# `tailscale ping` line in the results' notes confirms. The namespaces have no route off the machine.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
TS=$CACHE/bin/tailscale
HS=$CACHE/bin/headscale/headscale

headscale_config() {
    cat <<CFG
server_url: http://$UNDER_A:8080
listen_addr: $UNDER_A:8080
metrics_listen_addr: 127.0.0.1:9090
grpc_listen_addr: 127.0.0.1:50443
noise: {private_key_path: $WORK/hs/noise_private.key}
prefixes: {v4: 100.64.0.0/10, v6: "fd7a:115c:a1e0::/48", allocation: sequential}
derp:
  server:
    enabled: true
    region_id: 999
    region_code: bench
    region_name: bench
    stun_listen_addr: "$UNDER_A:3478"
    private_key_path: $WORK/hs/derp_server_private.key
    automatically_add_embedded_derp_region: true
    ipv4: $UNDER_A
  urls: []
  paths: []
  auto_update_enabled: false
disable_check_updates: true
database:
  type: sqlite
  sqlite: {path: $WORK/hs/db.sqlite, write_ahead_log: true}
log: {level: info}
policy: {mode: file, path: ""}
dns: {magic_dns: false, override_local_dns: false, base_domain: bench.test, nameservers: {global: []}}
unix_socket: $WORK/hs/headscale.sock
unix_socket_permission: "0770"
logtail: {enabled: false}
CFG
}

node() { # NS NAME KEY : starts tailscaled, logs it in, prints its pid
    local ns=$1 n=$2 key=$3 dir=$WORK/ts-$2 pid
    mkdir -p "$dir"
    # --no-logs-no-support: no log upload; the namespaces have no route out anyway.
    pid=$(spawn "$WORK" "$ns" "tailscaled-$n" "$TS/tailscaled" --no-logs-no-support --tun="ts$n" \
        --state="$dir/state" --statedir="$dir" --socket="$dir/sock" --port=41641)
    wait_for 30 "tailscaled-$n socket" test -S "$dir/sock"
    in_ns "$ns" timeout 60 "$TS/tailscale" --socket="$dir/sock" up --login-server="http://$UNDER_A:8080" \
        --authkey="$key" --hostname="$n" --accept-dns=false --netfilter-mode=off >&2 ||
        die "tailscale up ($n) failed: $(tail -5 "$WORK/tailscaled-$n.log")"
    echo "$pid"
}

case "$1" in
    build)
        go_build tailscale local "tailscale.com/cmd/tailscaled@$TAILSCALE_VERSION" \
            "tailscale.com/cmd/tailscale@$TAILSCALE_VERSION"
        go_build_via_module headscale github.com/juanfont/headscale "$HEADSCALE_VERSION" \
            github.com/juanfont/headscale/cmd/headscale
        ;;
    start)
        WORK=$2
        mkdir -p "$WORK/hs"
        headscale_config >"$WORK/hs/config.yaml"
        hs=(in_ns "$NS_A" "$HS" -c "$WORK/hs/config.yaml")
        hpid=$(spawn "$WORK" "$NS_A" headscale "$HS" -c "$WORK/hs/config.yaml" serve)
        wait_for 30 "headscale" "${hs[@]}" users list
        alive "$hpid" "$WORK/headscale.log"
        "${hs[@]}" users create bench >&2
        uid=$("${hs[@]}" users list -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
        key=$("${hs[@]}" preauthkeys create --user "$uid" --reusable --expiration 1h -o json |
            python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
        pa=$(node "$NS_A" a "$key")
        pb=$(node "$NS_B" b "$key")
        ip_of() { in_ns "$1" "$TS/tailscale" --socket="$WORK/ts-$2/sock" ip -4; }
        oa=$(ip_of "$NS_A" a) ob=$(ip_of "$NS_B" b)
        # Disco pings until B is in A's network map and the direct path is up; the pong says which path won.
        path=""
        for _ in {1..40}; do
            path=$(in_ns "$NS_A" "$TS/tailscale" --socket="$WORK/ts-a/sock" ping -c 5 --timeout 1s "$ob" 2>&1 |
                grep pong | tail -1 || true)
            [[ $path == *"via $UNDER_B:"* ]] && break
            sleep 0.5
        done
        [[ -n $path ]] || die "tailscale ping from a never reached b ($ob)"
        cat >"$WORK/peer.env" <<ENV
OVERLAY_A=$oa
OVERLAY_B=$ob
NOTE=headscale $HEADSCALE_VERSION as control server; tailscale ping: $path
DEV_A=tsa
DEV_B=tsb
ENDPOINT_PIDS=$pa $pb
VERSION=tailscale $("$TS/tailscale" version | head -1 | sed "s/-ERR-BuildInfo//")
ENV
        ;;
    *) die "usage: $0 build|start WORKDIR" ;;
esac
