# Nebula in both namespaces (sourced by nebula.sh and nebula-deb.sh, which set NEBULA and NEBULA_CERT):
# a CA and one certificate per host; A is also the lighthouse, B finds it through static_host_map.

nebula_config() { # NAME AM_LIGHTHOUSE LIGHTHOUSES
    cat <<CFG
pki: {ca: $WORK/ca.crt, cert: $WORK/$1.crt, key: $WORK/$1.key}
static_host_map: {"10.77.0.1": ["$UNDER_A:4242"]}
lighthouse: {am_lighthouse: $2, interval: 60, hosts: [$3]}
listen: {host: 0.0.0.0, port: 4242}
punchy: {punch: true}
tun: {dev: neb$1}
logging: {level: info}
firewall:
  outbound: [{port: any, proto: any, host: any}]
  inbound: [{port: any, proto: any, host: any}]
CFG
}

nebula_start() {
    WORK=$1
    (cd "$WORK" && "$NEBULA_CERT" ca -name rolomesh-bench) >&2 || die "nebula-cert ca failed"
    local n ip
    for n in a b; do
        [[ $n == a ]] && ip=10.77.0.1/24 || ip=10.77.0.2/24
        (cd "$WORK" && "$NEBULA_CERT" sign -name "$n" -ip "$ip") >&2 || die "nebula-cert sign $n failed"
    done
    nebula_config a true "" >"$WORK/a.yml"
    nebula_config b false '"10.77.0.1"' >"$WORK/b.yml"
    local pa pb
    pa=$(spawn "$WORK" "$NS_A" nebula-a "$NEBULA" -config "$WORK/a.yml")
    pb=$(spawn "$WORK" "$NS_B" nebula-b "$NEBULA" -config "$WORK/b.yml")
    wait_for 20 "nebula devices" in_ns "$NS_A" ip link show neba
    wait_for 20 "nebula devices" in_ns "$NS_B" ip link show nebb
    alive "$pa" "$WORK/nebula-a.log"
    alive "$pb" "$WORK/nebula-b.log"
    cat >"$WORK/peer.env" <<ENV
OVERLAY_A=10.77.0.1
OVERLAY_B=10.77.0.2
DEV_A=neba
DEV_B=nebb
ENDPOINT_PIDS=$pa $pb
VERSION=nebula $("$NEBULA" -version 2>&1 | head -1 | sed 's/^Version: //')
ENV
}
