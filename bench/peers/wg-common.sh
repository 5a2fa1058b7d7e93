# Userspace WireGuard in both namespaces (sourced by wireguard-go.sh and boringtun.sh, which define
# `wg_spawn WORK NS DEV` to start their daemon and print its pid). The daemon creates the TUN device and the UAPI
# socket /var/run/wireguard/DEV.sock; `wg` from wireguard-tools configures it over that socket and `ip` sets the
# address. Devices are wga/wgb because the socket directory is shared by all namespaces.

wg_start() {
    WORK=$1
    local n pid pids=() sock
    for n in a b; do
        wg genkey >"$WORK/$n.key"
        wg pubkey <"$WORK/$n.key" >"$WORK/$n.pub"
    done
    for n in a b; do
        local ns=$NS_A && [[ $n == b ]] && ns=$NS_B
        sock=/var/run/wireguard/wg$n.sock
        rm -f "$sock" # left by a killed run
        pid=$(wg_spawn "$WORK" "$ns" "wg$n")
        pids+=("$pid")
        wait_for 20 "$sock" test -S "$sock"
        alive "$pid" "$WORK/wg$n.log"
    done
    wg_peer "$NS_A" wga a b "$UNDER_B" 10.78.0.1 10.78.0.2
    wg_peer "$NS_B" wgb b a "$UNDER_A" 10.78.0.2 10.78.0.1
    cat >"$WORK/peer.env" <<ENV
OVERLAY_A=10.78.0.1
OVERLAY_B=10.78.0.2
DEV_A=wga
DEV_B=wgb
ENDPOINT_PIDS=${pids[*]}
ENV
}

wg_peer() { # NS DEV SELF PEER PEER_UNDERLAY OWN_OVERLAY PEER_OVERLAY
    local ns=$1 dev=$2 self=$3 peer=$4
    in_ns "$ns" wg set "$dev" private-key "$WORK/$self.key" listen-port 51820 \
        peer "$(cat "$WORK/$peer.pub")" allowed-ips "$7/32" endpoint "$5:51820" || die "wg set $dev failed"
    in_ns "$ns" ip addr add "$6/24" dev "$dev"
    # wg-quick's default MTU: 1500 minus the IPv4, UDP and WireGuard overhead.
    in_ns "$ns" ip link set "$dev" mtu 1420 up
}
