#!/usr/bin/env bash
# A real Kubernetes control plane as local processes, for tests: etcd, kube-apiserver and kube-controller-manager,
# all bound to 127.0.0.1, state and logs under DIR. No kubelet, scheduler or container runtime: pods stay Pending
# (Node objects can still be created by hand).
#
#   control-plane.sh start  DIR      fresh cluster: kills leftovers of an earlier run in DIR (pid files), wipes DIR's etcd
#                                    data, makes new certs, starts everything and waits until it is ready
#   control-plane.sh stop   DIR      kills the processes (pid files in DIR); leaves every file in place
#   control-plane.sh env    DIR      prints `export KUBECONFIG=...` and friends; use with eval "$(... env DIR)"
#   control-plane.sh status DIR      prints each process's state; exit 0 only if all are running
#   control-plane.sh token  DIR NAMESPACE SERVICEACCOUNT [kubectl create token flags...]
#                                    prints a token for the ServiceAccount (needs kube-controller-manager)
#   control-plane.sh sa-kubeconfig DIR NAMESPACE SERVICEACCOUNT OUT
#                                    writes a kubeconfig that authenticates as that ServiceAccount (to test RBAC)
#
# DIR layout: admin.kubeconfig, env, pki/, etcd-data/, logs/<component>.log, run/<component>.pid
#
# Environment:
#   ROLOMESH_K8S_BIN             bin dir with the binaries (default: from tests/k8s/install-tools.sh, built if missing)
#   ROLOMESH_ETCD_PORT, ROLOMESH_ETCD_PEER_PORT, ROLOMESH_APISERVER_PORT, ROLOMESH_KCM_PORT
#                                fixed ports (default: random free ports in 20000-32767)
#   ROLOMESH_K8S_CONTROLLER_MANAGER=0   do not run kube-controller-manager (then the ServiceAccount admission plugin is
#                                off, as envtest does, and there is no GC, no namespace deletion, no default SAs)
#   ROLOMESH_K8S_START_TIMEOUT   seconds to wait for each component (default 120)
#   ROLOMESH_APISERVER_EXTRA_ARGS, ROLOMESH_KCM_EXTRA_ARGS   extra flags, split on whitespace
#   ROLOMESH_APISERVER_EXTRA_SANS  comma-separated extra IPs for the serving certificate
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CMD=${1:-}
[[ $# -ge 2 ]] || { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
if [[ "$CMD" == start ]]; then
    mkdir -p "$2"
elif [[ ! -d "$2" ]]; then
    echo "control-plane: ERROR: $2 is not a directory (nothing was started there)" >&2; exit 1
fi
DIR=$(cd "$2" && pwd)
shift 2

TIMEOUT=${ROLOMESH_K8S_START_TIMEOUT:-120}
RUN_KCM=${ROLOMESH_K8S_CONTROLLER_MANAGER:-1}
COMPONENTS="etcd kube-apiserver kube-controller-manager"
PKI="$DIR/pki"
KUBECONFIG_FILE="$DIR/admin.kubeconfig"
SERVICE_CIDR=10.0.0.0/24
SERVICE_IP=10.0.0.1
KCM_CONTROLLERS='*,-node-ipam-controller,-node-lifecycle-controller,-cloud-node-lifecycle-controller,-service-lb-controller,-node-route-controller'

log() { echo "control-plane: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

resolve_bin() {
    if [[ -n "${ROLOMESH_K8S_BIN:-}" ]]; then
        BIN=$ROLOMESH_K8S_BIN
    else
        mkdir -p "$DIR/logs"
        local ilog="$DIR/logs/install-tools.log"
        if ! "$HERE/install-tools.sh" >"$ilog" 2>&1; then
            tail -n 30 "$ilog" >&2
            die "tests/k8s/install-tools.sh failed (full log: $ilog)"
        fi
        BIN=$(tail -n 1 "$ilog")
    fi
    local t
    for t in etcd kube-apiserver kube-controller-manager kubectl; do
        [[ -x "$BIN/$t" ]] || die "$BIN/$t missing; run tests/k8s/install-tools.sh"
    done
}

kctl() { "$BIN/kubectl" --kubeconfig="$KUBECONFIG_FILE" "$@"; }

# ---- processes ---------------------------------------------------------------------------------------------------
pid_of() { # component -> pid if its pid file names a live process of this DIR
    local f="$DIR/run/$1.pid" pid
    [[ -f "$f" ]] || return 1
    pid=$(<"$f")
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    # Guard against recycled pids: the command line must mention this DIR.
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$DIR/" || return 1
    echo "$pid"
}

alive() { [[ -d /proc/$1 ]] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }

stop_component() {
    local c=$1 pid i
    if pid=$(pid_of "$c"); then
        log "stopping $c (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            log "$c did not exit after SIGTERM; SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
        fi
    fi
    rm -f "$DIR/run/$c.pid"
}

stop_all() {
    local c
    for c in kube-controller-manager kube-apiserver etcd; do stop_component "$c"; done
}

launch() { # component args...
    local c=$1; shift
    local logf="$DIR/logs/$c.log"
    [[ -f "$logf" ]] && mv -f "$logf" "$logf.prev"
    # setsid: the daemons outlive the shell that ran `start` and ignore its terminal's signals; all fds go to the log.
    setsid "$BIN/$c" "$@" </dev/null >"$logf" 2>&1 &
    echo $! >"$DIR/run/$c.pid"
    log "started $c (pid $!, log $logf)"
}

fail_start() { # component message
    local c=$1 msg=$2
    log "ERROR: $msg"
    log "---- last lines of $DIR/logs/$c.log ----"
    tail -n 40 "$DIR/logs/$c.log" >&2 2>/dev/null || true
    log "---- (end) stopping what was started ----"
    stop_all
    exit 1
}

wait_for() { # component description command...
    local c=$1 what=$2; shift 2
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        pid_of "$c" >/dev/null || fail_start "$c" "$c exited while waiting for $what"
        ((SECONDS < deadline)) || fail_start "$c" "timed out after ${TIMEOUT}s waiting for $what"
        sleep 0.5
    done
}

# ---- ports -------------------------------------------------------------------------------------------------------
USED_PORTS=" "
port_busy() {
    if command -v ss >/dev/null; then
        ss -Htan "( sport = :$1 )" 2>/dev/null | grep -q .
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
pick_port() { # VAR env-override
    local var=$1 fixed=${2:-} p i
    if [[ -n "$fixed" ]]; then
        port_busy "$fixed" && die "port $fixed (for $var) is already in use"
        printf -v "$var" %s "$fixed"; USED_PORTS+="$fixed "; return
    fi
    for ((i = 0; i < 500; i++)); do
        p=$((20000 + RANDOM % 12768)) # below the usual ephemeral range
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        port_busy "$p" && continue
        printf -v "$var" %s "$p"; USED_PORTS+="$p "; return
    done
    die "no free port found"
}

# ---- certificates ------------------------------------------------------------------------------------------------
gen_pki() {
    command -v openssl >/dev/null || die "openssl not found (see .ci/apt-packages.txt)"
    rm -rf "$PKI"; mkdir -p "$PKI"
    (
        cd "$PKI"
        umask 077
        cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = rolomesh-test-ca
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = @sans
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[sans]
IP.1 = 127.0.0.1
IP.2 = SERVICE_IP
DNS.1 = localhost
DNS.2 = kubernetes
DNS.3 = kubernetes.default
DNS.4 = kubernetes.default.svc
DNS.5 = kubernetes.default.svc.cluster.local
EOF
        sed -i "s/SERVICE_IP/$SERVICE_IP/" openssl.cnf
        # Extra serving-cert IPs, for clients that reach the apiserver through a relay (e.g. from a netns).
        local n=3 ip sans=${ROLOMESH_APISERVER_EXTRA_SANS:-}
        for ip in ${sans//,/ }; do
            printf 'IP.%d = %s\n' "$n" "$ip" >> openssl.cnf
            n=$((n + 1))
        done
        openssl genrsa -out ca.key 2048 2>/dev/null
        openssl req -x509 -new -config openssl.cnf -extensions ca -key ca.key -days 3650 -out ca.crt
        leaf() { # name subject extensions
            openssl genrsa -out "$1.key" 2048 2>/dev/null
            openssl req -new -config openssl.cnf -key "$1.key" -subj "$2" -out "$1.csr"
            openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -set_serial "0x$(openssl rand -hex 16)" \
                -days 3650 -extfile openssl.cnf -extensions "$3" -out "$1.crt" 2>/dev/null
            rm -f "$1.csr"
        }
        leaf apiserver "/CN=kube-apiserver" server
        leaf admin "/O=system:masters/CN=rolomesh-admin" client
        # Service-account token signing key pair.
        openssl genrsa -out sa.key 2048 2>/dev/null
        openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    ) || die "certificate generation failed"
}

write_admin_kubeconfig() {
    local tmp="$KUBECONFIG_FILE.tmp"
    rm -f "$tmp"
    "$BIN/kubectl" --kubeconfig="$tmp" config set-cluster rolomesh --server="https://127.0.0.1:$APISERVER_PORT" \
        --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
    "$BIN/kubectl" --kubeconfig="$tmp" config set-credentials rolomesh-admin \
        --client-certificate="$PKI/admin.crt" --client-key="$PKI/admin.key" --embed-certs=true >/dev/null
    "$BIN/kubectl" --kubeconfig="$tmp" config set-context rolomesh --cluster=rolomesh --user=rolomesh-admin \
        --namespace=default >/dev/null
    "$BIN/kubectl" --kubeconfig="$tmp" config use-context rolomesh >/dev/null
    chmod 600 "$tmp"
    mv -f "$tmp" "$KUBECONFIG_FILE"
}

write_env() {
    {
        printf 'export KUBECONFIG=%q\n' "$KUBECONFIG_FILE"
        printf 'export ROLOMESH_K8S_DIR=%q\n' "$DIR"
        printf 'export ROLOMESH_K8S_BIN=%q\n' "$BIN"
        printf 'export ROLOMESH_K8S_APISERVER=%q\n' "https://127.0.0.1:$APISERVER_PORT"
        printf 'export ROLOMESH_K8S_CA_FILE=%q\n' "$PKI/ca.crt"
        printf 'export ROLOMESH_ETCD_ENDPOINT=%q\n' "http://127.0.0.1:$ETCD_PORT"
        # shellcheck disable=SC2016 # $PATH is expanded by whoever evals this
        printf 'export PATH=%q:"$PATH"\n' "$BIN"
    } >"$DIR/env.tmp"
    mv -f "$DIR/env.tmp" "$DIR/env"
}

# ---- commands ----------------------------------------------------------------------------------------------------
cmd_start() {
    resolve_bin
    mkdir -p "$DIR/run" "$DIR/logs"
    stop_all # leftovers of an earlier (possibly crashed) run in this DIR
    rm -f "$DIR/env" "$KUBECONFIG_FILE"
    rm -rf "$DIR/etcd-data" "$DIR/kcm-certs" "$DIR/apiserver-certs"

    pick_port ETCD_PORT "${ROLOMESH_ETCD_PORT:-}"
    pick_port ETCD_PEER_PORT "${ROLOMESH_ETCD_PEER_PORT:-}"
    pick_port APISERVER_PORT "${ROLOMESH_APISERVER_PORT:-}"
    pick_port KCM_PORT "${ROLOMESH_KCM_PORT:-}"
    gen_pki
    write_admin_kubeconfig
    local start=$SECONDS

    local etcd_url="http://127.0.0.1:$ETCD_PORT" peer_url="http://127.0.0.1:$ETCD_PEER_PORT"
    launch etcd --name=rolomesh --data-dir="$DIR/etcd-data" \
        --listen-client-urls="$etcd_url" --advertise-client-urls="$etcd_url" \
        --listen-peer-urls="$peer_url" --initial-advertise-peer-urls="$peer_url" \
        --initial-cluster="rolomesh=$peer_url" --initial-cluster-state=new \
        --unsafe-no-fsync=true --log-level=warn
    if command -v curl >/dev/null; then
        wait_for etcd "etcd /health" curl -fsS --max-time 2 "$etcd_url/health"
    else
        wait_for etcd "etcd port $ETCD_PORT" bash -c "exec 3<>/dev/tcp/127.0.0.1/$ETCD_PORT"
    fi

    local admission=()
    [[ "$RUN_KCM" == 0 ]] && admission=(--disable-admission-plugins=ServiceAccount)
    # shellcheck disable=SC2206
    local extra_api=(${ROLOMESH_APISERVER_EXTRA_ARGS:-})
    launch kube-apiserver \
        --advertise-address=127.0.0.1 --bind-address=127.0.0.1 --secure-port="$APISERVER_PORT" \
        --etcd-servers="$etcd_url" \
        --cert-dir="$DIR/apiserver-certs" \
        --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
        --client-ca-file="$PKI/ca.crt" \
        --authorization-mode=RBAC \
        --service-account-issuer=https://kubernetes.default.svc.cluster.local \
        --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
        --service-cluster-ip-range="$SERVICE_CIDR" \
        --endpoint-reconciler-type=none \
        --allow-privileged=true \
        --profiling=false \
        "${admission[@]}" "${extra_api[@]}"
    wait_for kube-apiserver "kube-apiserver /readyz" kctl get --raw /readyz
    log "kube-apiserver ready on https://127.0.0.1:$APISERVER_PORT after $((SECONDS - start))s"

    if [[ "$RUN_KCM" != 0 ]]; then
        # shellcheck disable=SC2206
        local extra_kcm=(${ROLOMESH_KCM_EXTRA_ARGS:-})
        launch kube-controller-manager \
            --kubeconfig="$KUBECONFIG_FILE" \
            --authentication-kubeconfig="$KUBECONFIG_FILE" --authorization-kubeconfig="$KUBECONFIG_FILE" \
            --bind-address=127.0.0.1 --secure-port="$KCM_PORT" --cert-dir="$DIR/kcm-certs" \
            --leader-elect=false \
            --controllers="$KCM_CONTROLLERS" \
            --use-service-account-credentials=true \
            --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
            --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
            --service-cluster-ip-range="$SERVICE_CIDR" \
            --profiling=false \
            "${extra_kcm[@]}"
        if command -v curl >/dev/null; then
            wait_for kube-controller-manager "kube-controller-manager /healthz" \
                curl -fksS --max-time 2 "https://127.0.0.1:$KCM_PORT/healthz"
        fi
        # The default ServiceAccount appearing proves the controllers (and token minting) work.
        wait_for kube-controller-manager "ServiceAccount default/default" kctl get serviceaccount default -n default
        log "kube-controller-manager ready after $((SECONDS - start))s"
    fi
    write_env
    log "control plane up: $(kctl version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1)" \
        "apiserver https://127.0.0.1:$APISERVER_PORT, etcd $etcd_url; eval \"\$($0 env $DIR)\""
}

cmd_status() {
    local c rc=0 pid
    for c in $COMPONENTS; do
        if pid=$(pid_of "$c"); then
            echo "$c: running (pid $pid)"
        elif [[ "$c" == kube-controller-manager && "$RUN_KCM" == 0 ]]; then
            echo "$c: not used"
        else
            echo "$c: not running"; rc=1
        fi
    done
    return $rc
}

need_env() {
    [[ -f "$DIR/env" ]] || die "no control plane started in $DIR (missing $DIR/env)"
    # shellcheck disable=SC1091
    BIN=$(source "$DIR/env" && echo "$ROLOMESH_K8S_BIN")
}

cmd_token() { # NAMESPACE SA [flags...]
    [[ $# -ge 2 ]] || die "usage: control-plane.sh token DIR NAMESPACE SERVICEACCOUNT [kubectl create token flags]"
    need_env
    local ns=$1 sa=$2; shift 2
    kctl create token "$sa" -n "$ns" "$@"
}

cmd_sa_kubeconfig() { # NAMESPACE SA OUT
    [[ $# -eq 3 ]] || die "usage: control-plane.sh sa-kubeconfig DIR NAMESPACE SERVICEACCOUNT OUT"
    need_env
    local ns=$1 sa=$2 out=$3 token server
    token=$(kctl create token "$sa" -n "$ns" --duration=24h)
    # shellcheck disable=SC1091
    server=$(source "$DIR/env" && echo "$ROLOMESH_K8S_APISERVER")
    rm -f "$out.tmp"
    "$BIN/kubectl" --kubeconfig="$out.tmp" config set-cluster rolomesh --server="$server" \
        --certificate-authority="$PKI/ca.crt" --embed-certs=true >/dev/null
    "$BIN/kubectl" --kubeconfig="$out.tmp" config set-credentials "$ns-$sa" --token="$token" >/dev/null
    "$BIN/kubectl" --kubeconfig="$out.tmp" config set-context "$ns-$sa" --cluster=rolomesh --user="$ns-$sa" \
        --namespace="$ns" >/dev/null
    "$BIN/kubectl" --kubeconfig="$out.tmp" config use-context "$ns-$sa" >/dev/null
    chmod 600 "$out.tmp"
    mv -f "$out.tmp" "$out"
}

case "$CMD" in
    start) cmd_start ;;
    stop) stop_all ;;
    env) [[ -f "$DIR/env" ]] || die "no control plane started in $DIR (missing $DIR/env)"; cat "$DIR/env" ;;
    status) cmd_status ;;
    token) cmd_token "$@" ;;
    sa-kubeconfig) cmd_sa_kubeconfig "$@" ;;
    *) die "unknown command '$CMD' (start|stop|env|status|token|sa-kubeconfig)" ;;
esac
