#!/usr/bin/env bash
# Checks the Helm chart (charts/rolomesh) and the examples (examples/):
#   - helm lint --strict, with the default values and with other value sets;
#   - values.schema.json and the chart's own checks reject bad values, each with a clear message;
#   - every value set's manifests pass the API server of a real control plane (server-side dry run, strict field
#     validation; a Pod Security "restricted" warning about the operator pod is a failure too);
#   - a real helm install / upgrade / uninstall: the operator's arguments, and its and the agent's RBAC
#     (kubectl auth can-i as their ServiceAccounts: what they need is allowed, neighbouring rights are not);
#   - examples/*.yaml pass the API server with the chart's CRDs; examples/agent.yaml uses only keys that
#     `rolomesh agent --config` accepts;
#   - if a rolomesh binary is already built (ROLOMESH_BIN, or tests/image-build.sh's or cargo's): `rolomesh operator`
#     accepts every rendered argument list, and `rolomesh agent` accepts examples/agent.yaml.
# The control plane (tests/k8s/control-plane.sh, tools from tests/k8s/install-tools.sh) lives in a temporary
# directory and is stopped on every exit. The last line is "N passed, M failed"; exit status 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

BIN=$(tests/k8s/install-tools.sh | tail -1) || { echo "tests/k8s/install-tools.sh failed" >&2; exit 1; }
export PATH="$BIN:$PATH"
CHART=charts/rolomesh
NS=rolomesh-system

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolomesh-chart-check.XXXXXX")
# Helm keeps its caches and repository config here, not in $HOME.
export HELM_CACHE_HOME="$WORK/helm/cache" HELM_CONFIG_HOME="$WORK/helm/config" HELM_DATA_HOME="$WORK/helm/data"
cleanup() {
    if [[ -d "$WORK/k8s" ]]; then
        tests/k8s/control-plane.sh stop "$WORK/k8s" >/dev/null 2>&1 || echo "chart-check: stopping the control plane failed" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A rolomesh binary, if one is built (this script builds nothing): ROLOMESH_BIN, else the newest of the image build
# (tests/image-build.sh) and the cargo builds. Used to check the operator's arguments and examples/agent.yaml.
CACHE=${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}
ROLOMESH=${ROLOMESH_BIN:-}
if [[ -z "$ROLOMESH" ]]; then
    for b in "$CACHE/image-target/x86_64-unknown-linux-musl/release/rolomesh" \
        "${CARGO_TARGET_DIR:-$CACHE/target}/debug/rolomesh" "${CARGO_TARGET_DIR:-$CACHE/target}/release/rolomesh"; do
        [[ -x "$b" ]] && [[ -z "$ROLOMESH" || "$b" -nt "$ROLOMESH" ]] && ROLOMESH=$b
    done
fi

PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok    $1"; }
fail() { # name [details]
    FAILED=$((FAILED + 1)); echo "FAIL  $1"
    [[ -n "${2:-}" ]] && sed 's/^/      | /' <<<"$2" | head -n 40
    return 0
}
check() { # name command... : passes when the command succeeds; its output is shown on failure
    local name=$1 out; shift
    if out=$("$@" 2>&1); then pass "$name"; else fail "$name" "$out"; fi
}
summary() {
    echo "chart-check: $((SECONDS - START)) s"
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]]
}

# ---- value sets ----------------------------------------------------------------------------------------------------
# Each is a name and helm flags. They are rendered for the release namespace $NS.
VALUE_SETS=(
    "defaults|"
    "single-replica-no-leader-election|--set operator.replicas=1 --set operator.leaderElection=false"
    "watch-one-namespace|--set operator.watchNamespace=mesh --set operator.logFormat=text"
    "extra-agent-namespaces-and-servicemonitor|--set agent.serviceAccount.namespaces={default,mesh} --set serviceMonitor.enabled=true --set serviceMonitor.labels.release=prom --set operator.metrics.port=9090"
    "scheduling-and-overrides|-f $WORK/values-scheduling.yaml"
)
cat >"$WORK/values-scheduling.yaml" <<'EOF'
fullnameOverride: mesh-ctl
image:
  repository: images.example.internal:5000/team/rolomesh
  tag: 0.2.0-rc.1
  pullPolicy: Always
imagePullSecrets:
  - name: regcred
operator:
  replicas: 3
  serviceAccount:
    create: false
    name: existing-operator
  podDisruptionBudget:
    enabled: true
    maxUnavailable: 2
  priorityClassName: system-cluster-critical
  podAnnotations:
    example.com/owner: network-team
  podLabels:
    team: network
  nodeSelector:
    kubernetes.io/os: linux
  tolerations:
    - key: node-role.kubernetes.io/control-plane
      operator: Exists
      effect: NoSchedule
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                app.kubernetes.io/component: operator
  resources:
    requests: {cpu: 100m, memory: 128Mi}
    limits: {cpu: "1", memory: 512Mi}
agent:
  serviceAccount:
    create: false
    name: mesh-agent
EOF

render() { # flags... -> manifests on stdout
    helm template rolomesh "$CHART" -n "$NS" "$@"
}

# ---- offline: lint, schema ---------------------------------------------------------------------------------------
echo "== helm lint --strict"
for vs in "${VALUE_SETS[@]}"; do
    name=${vs%%|*} flags=${vs#*|}
    # shellcheck disable=SC2086
    check "lint: $name" helm lint --strict "$CHART" -n "$NS" $flags
done

echo "== bad values are rejected"
reject() { # expected-message flags...
    local want=$1 out; shift
    if out=$(helm template rolomesh "$CHART" -n "$NS" "$@" 2>&1 >/dev/null); then
        fail "rejects $*" "helm template succeeded"
    elif [[ "$out" != *"$want"* ]]; then
        fail "rejects $*" "expected the message to contain: $want"$'\n'"got: $out"
    else
        pass "rejects $* ($(grep -m1 -o -- "$want" <<<"$out"))"
    fi
}
reject "at '/operator/replicas': got string, want integer" --set operator.replicas=two
reject "at '/operator': additional properties 'replica' not allowed" --set operator.replica=2
reject "at '/operator/logFormat': value must be one of 'text', 'json'" --set operator.logFormat=xml
reject "at '/operator/metrics/port': minimum" --set operator.metrics.port=80
reject "at '/operator/metrics/port': maximum" --set operator.metrics.port=70000
reject "at '/image/pullPolicy': value must be one of" --set image.pullPolicy=Sometimes
reject "at '/agent/serviceAccount/name': 'Bad_Name' does not match pattern" --set agent.serviceAccount.name=Bad_Name
reject "at '/operator/tolerations/0/operator': value must be one of" --set 'operator.tolerations[0].operator=Maybe'
reject "at '/operator/resources/limits/memory'" --set operator.resources.limits.memory=lots
reject "operator.replicas is 2 but operator.leaderElection is false" --set operator.leaderElection=false
reject "operator.serviceAccount.name is required" --set operator.serviceAccount.create=false
reject "agent.serviceAccount.namespaces must be empty when operator.watchNamespace is set" \
    --set operator.watchNamespace=mesh --set 'agent.serviceAccount.namespaces={default}'

echo "== examples/agent.yaml keys"
# The keys `rolomesh agent --config` accepts: FileConfig's fields in kebab-case (serde deny_unknown_fields).
known=$(sed -n '/^pub(super) struct FileConfig/,/^}/s/^ *pub \([a-z_]*\):.*/\1/p' node-agent/src/config/file.rs | tr _ -)
used=$(sed -n 's/^\([a-z][a-z0-9_-]*\):.*/\1/p' examples/agent.yaml)
unknown=$(comm -13 <(sort <<<"$known") <(sort <<<"$used"))
if [[ -z "$known" ]]; then
    fail "agent.yaml keys" "found no FileConfig fields in node-agent/src/config/file.rs"
elif [[ -n "$unknown" ]]; then
    fail "agent.yaml keys" "unknown keys: $unknown (known: $(tr '\n' ' ' <<<"$known"))"
else
    pass "agent.yaml keys: $(wc -l <<<"$used") known keys"
fi

# The agent reads the whole file and validates every value before it creates the TUN device: run it without
# CAP_NET_ADMIN, so that it stops right there, and expect exactly that error.
if [[ -n "$ROLOMESH" ]]; then
    mkdir -p "$WORK/agent"
    cp examples/agent.yaml "$WORK/agent/agent.yaml"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$WORK/agent/secret"
    drop=()
    if [[ $EUID -eq 0 ]]; then
        chmod -R a+rX "$WORK/agent"; chmod a+x "$WORK"
        drop=(setpriv --reuid 65532 --regid 65532 --clear-groups --inh-caps=-all --bounding-set=-all)
    fi
    out=$(timeout 20 "${drop[@]}" "$ROLOMESH" agent --config "$WORK/agent/agent.yaml" 2>&1)
    if [[ "$out" == *"needs CAP_NET_ADMIN"* || "$out" == *"/dev/net/tun"* ]]; then
        pass "rolomesh agent --config examples/agent.yaml: valid (stopped at the TUN device)"
    else
        fail "rolomesh agent --config examples/agent.yaml" "$out"
    fi
fi

# ---- control plane -----------------------------------------------------------------------------------------------
echo "== control plane"
if ! ROLOMESH_K8S_BIN=$BIN ROLOMESH_K8S_CONTROLLER_MANAGER=0 tests/k8s/control-plane.sh start "$WORK/k8s" \
    >"$WORK/control-plane.log" 2>&1; then
    fail "control plane start" "$(tail -n 30 "$WORK/control-plane.log")"
    summary; exit 1
fi
eval "$(tests/k8s/control-plane.sh env "$WORK/k8s")"
pass "control plane started ($(kubectl version -o json 2>/dev/null | sed -n 's/.*"gitVersion": "\(v[^"]*\)".*/\1/p' | tail -1))"

# The operator pod must meet the "restricted" Pod Security Standard: warn on workloads in the release namespace.
check "namespaces" bash -c "kubectl create namespace $NS && kubectl create namespace mesh &&
    kubectl label namespace $NS pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/warn=restricted"

# A stand-in for the Prometheus Operator's ServiceMonitor CRD with the fields the chart uses (names and types as in
# monitoring.coreos.com/v1), so that strict validation catches misspelt fields there too.
kubectl apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          required: [spec]
          properties:
            spec:
              type: object
              required: [selector, endpoints]
              properties:
                selector:
                  type: object
                  properties:
                    matchLabels: {type: object, additionalProperties: {type: string}}
                namespaceSelector:
                  type: object
                  properties:
                    any: {type: boolean}
                    matchNames: {type: array, items: {type: string}}
                endpoints:
                  type: array
                  items:
                    type: object
                    properties:
                      port: {type: string}
                      path: {type: string}
                      interval: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
                      scrapeTimeout: {type: string, pattern: '^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$'}
EOF
kubectl apply --server-side -f "$CHART/crds/rolomesh.yaml" >/dev/null
check "CRDs established" kubectl wait --for condition=established --timeout=60s \
    crd/meshnetworks.rolomesh.io crd/meshmembers.rolomesh.io crd/servicemonitors.monitoring.coreos.com

echo "== rendered manifests pass the API server (dry run, strict)"
server_check() { # name flags... ; leaves $WORK/<name>.yaml (manifests) and <name>.out (what the server said)
    local name=$1 out; shift
    if ! out=$(render "$@" 2>&1 >"$WORK/$name.yaml"); then
        fail "render: $name" "$out"; return
    fi
    if ! out=$(kubectl apply --dry-run=server --validate=strict -f "$WORK/$name.yaml" 2>&1); then
        fail "dry run: $name" "$out"
    elif grep -q '^Warning:' <<<"$out"; then
        fail "dry run: $name (warnings)" "$(grep '^Warning:' <<<"$out")"
    else
        pass "dry run: $name ($(grep -c 'created (server dry run)' <<<"$out") objects)"
    fi
    echo "$out" >"$WORK/$name.out"
}
for vs in "${VALUE_SETS[@]}"; do
    # shellcheck disable=SC2086
    server_check "${vs%%|*}" ${vs#*|}
done

expect_in() { # name file pattern... : every pattern (fixed string, one line) occurs in file
    local name=$1 file=$2 missing=(); shift 2
    for p in "$@"; do grep -qF -- "$p" "$file" || missing+=("$p"); done
    if ((${#missing[@]})); then fail "$name" "missing in $file:$(printf '\n  %s' "${missing[@]}")"; else pass "$name"; fi
}
expect_not_in() { # name file pattern...
    local name=$1 file=$2 found=(); shift 2
    for p in "$@"; do grep -qF -- "$p" "$file" && found+=("$p"); done
    if ((${#found[@]})); then fail "$name" "unexpected in $file:$(printf '\n  %s' "${found[@]}")"; else pass "$name"; fi
}
kinds() { grep '^kind:' "$1" | sort | uniq -c | awk '{printf "%s %s, ", $1, $3}'; }
echo "   defaults: $(kinds "$WORK/defaults.yaml")"
expect_not_in "defaults: no ServiceMonitor, no leader-election flag" "$WORK/defaults.yaml" \
    "kind: ServiceMonitor" "--leader-election" "--namespace"
expect_in "single replica: --leader-election=false, no Lease role, no PDB" "$WORK/single-replica-no-leader-election.yaml" \
    "--leader-election=false"
expect_not_in "single replica: no Lease role, no PDB" "$WORK/single-replica-no-leader-election.yaml" \
    "rolomesh-operator-leader-election" "kind: PodDisruptionBudget"
expect_in "watch one namespace: --namespace, bindings in it" "$WORK/watch-one-namespace.yaml" \
    "- --namespace" '- "mesh"' "kind: RoleBinding" "name: rolomesh-operator-nodes"
expect_not_in "watch one namespace: no cluster-wide binding of the main role" "$WORK/watch-one-namespace.out" \
    "clusterrolebinding.rbac.authorization.k8s.io/rolomesh-operator created" \
    "clusterrolebinding.rbac.authorization.k8s.io/rolomesh-agent created"
expect_in "defaults: cluster-wide operator binding, agent bound per namespace" "$WORK/defaults.out" \
    "clusterrolebinding.rbac.authorization.k8s.io/rolomesh-operator created" \
    "rolebinding.rbac.authorization.k8s.io/rolomesh-agent created" \
    "poddisruptionbudget.policy/rolomesh-operator created"
expect_in "servicemonitor: rendered with labels and port" "$WORK/extra-agent-namespaces-and-servicemonitor.yaml" \
    "kind: ServiceMonitor" "release: prom" "containerPort: 9090" '"0.0.0.0:9090"'
expect_in "overrides: image, names, existing service accounts" "$WORK/scheduling-and-overrides.yaml" \
    'image: "images.example.internal:5000/team/rolomesh:0.2.0-rc.1"' "name: mesh-ctl-operator" \
    "serviceAccountName: existing-operator" '- "mesh-agent"'
expect_not_in "overrides: no ServiceAccount objects when create=false" "$WORK/scheduling-and-overrides.out" \
    "serviceaccount/"

# The operator's arguments as rendered are accepted by `rolomesh operator` (clap parses and checks every flag and
# value before it acts on the trailing --help).
rendered_args() { # manifests -> the operator container's args, one per line
    awk '/^          args:$/ {on = 1; next} on && /^            - / {sub(/^            - /, ""); gsub(/"/, ""); print; next} {on = 0}' "$1"
}
if [[ -n "$ROLOMESH" ]] && "$ROLOMESH" operator --help >/dev/null 2>&1; then
    for vs in "${VALUE_SETS[@]}"; do
        name=${vs%%|*}
        mapfile -t args < <(rendered_args "$WORK/$name.yaml")
        if ((${#args[@]} < 2)); then fail "operator args of $name" "no args found in $WORK/$name.yaml"; continue; fi
        check "rolomesh operator accepts the args of $name" "$ROLOMESH" "${args[@]}" --help
    done
    echo "   (binary: $ROLOMESH)"
else
    echo "skip  rolomesh operator accepts the rendered args (no rolomesh binary with an operator subcommand built;" \
        "set ROLOMESH_BIN or run tests/image-build.sh)"
fi

# ---- a real install ----------------------------------------------------------------------------------------------
echo "== helm install, RBAC, upgrade, uninstall"
if out=$(helm install rolomesh "$CHART" -n "$NS" --set 'agent.serviceAccount.namespaces={default}' 2>&1); then
    pass "helm install"
    grep -q 'kubectl apply -f examples/meshnetwork.yaml' <<<"$out" &&
        grep -q 'kubectl get meshnetworks,meshmembers' <<<"$out" &&
        pass "NOTES name the next steps" || fail "NOTES name the next steps" "$out"
else
    fail "helm install" "$out"
fi

want='["operator","--agent-service-account","rolomesh-agent","--image","rolomesh/rolomesh:0.1.0","--metrics-listen","0.0.0.0:8080","--lease-namespace","rolomesh-system","--log-format","json"]'
got=$(kubectl -n "$NS" get deployment rolomesh-operator -o jsonpath='{.spec.template.spec.containers[0].args}' 2>&1)
[[ "$got" == "$want" ]] && pass "operator args" || fail "operator args" "want $want"$'\n'"got  $got"
got=$(kubectl -n "$NS" get deployment rolomesh-operator -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].env[0].name} {.spec.template.spec.containers[0].livenessProbe.httpGet.path} {.spec.template.spec.containers[0].readinessProbe.httpGet.path} {.spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem} {.spec.template.spec.containers[0].securityContext.capabilities.drop}' 2>&1)
[[ "$got" == '2 POD_NAMESPACE /healthz /readyz true ["ALL"]' ]] && pass "operator pod: replicas, env, probes, security" ||
    fail "operator pod: replicas, env, probes, security" "got $got"
check "agent ServiceAccount in $NS" kubectl get serviceaccount rolomesh-agent -n "$NS"
check "agent ServiceAccount in default" kubectl get serviceaccount rolomesh-agent -n default

can_i() { # yes|no NAMESPACE:SERVICEACCOUNT NAMESPACE|- VERB RESOURCE [can-i flags...]   (- : cluster-scoped)
    local want=$1 who=$2 ns=$3 got where name; shift 3
    local nsflag=(-n "$ns") where=" in $ns"
    [[ "$ns" == - ]] && nsflag=() where=""
    name="${who##*:} $([[ $want == yes ]] && echo can || echo cannot) $*$where"
    got=$(kubectl auth can-i --as="system:serviceaccount:$who" "${nsflag[@]}" "$@" 2>"$WORK/can-i.err")
    if [[ "$got" == "$want" ]]; then pass "$name"; else fail "$name" "kubectl auth can-i said: $got $(<"$WORK/can-i.err")"; fi
}
OP="$NS:rolomesh-operator"
can_i yes "$OP" default list meshnetworks.rolomesh.io
can_i yes "$OP" default patch meshnetworks.rolomesh.io --subresource=status
can_i yes "$OP" default update meshnetworks.rolomesh.io --subresource=finalizers
can_i yes "$OP" default create meshmembers.rolomesh.io
can_i yes "$OP" default delete meshmembers.rolomesh.io
can_i yes "$OP" default get meshmembers.rolomesh.io --subresource=status
can_i yes "$OP" - watch nodes
can_i yes "$OP" default create secrets
can_i yes "$OP" default patch services
can_i yes "$OP" default delete daemonsets.apps
can_i yes "$OP" default create deployments.apps
can_i yes "$OP" default create events.events.k8s.io
can_i yes "$OP" default patch events
can_i yes "$OP" "$NS" create leases.coordination.k8s.io
can_i yes "$OP" "$NS" update leases.coordination.k8s.io/rolomesh-operator
can_i no "$OP" "$NS" update leases.coordination.k8s.io/other
can_i no "$OP" default create leases.coordination.k8s.io
can_i no "$OP" default delete meshnetworks.rolomesh.io
can_i no "$OP" default create meshnetworks.rolomesh.io
can_i no "$OP" default update meshmembers.rolomesh.io
can_i no "$OP" default patch meshmembers.rolomesh.io --subresource=status
can_i no "$OP" - patch nodes
can_i no "$OP" default create pods
can_i no "$OP" default get configmaps
can_i no "$OP" default create serviceaccounts
can_i no "$OP" default create rolebindings.rbac.authorization.k8s.io
AG="default:rolomesh-agent"
can_i yes "$AG" default get meshnetworks.rolomesh.io
can_i yes "$AG" default watch meshmembers.rolomesh.io
can_i yes "$AG" default patch meshmembers.rolomesh.io --subresource=status
can_i no "$AG" default patch meshmembers.rolomesh.io
can_i no "$AG" default create meshmembers.rolomesh.io
can_i no "$AG" default patch meshnetworks.rolomesh.io --subresource=status
can_i no "$AG" default get secrets
can_i no "$AG" - list nodes
can_i no "$AG" mesh get meshmembers.rolomesh.io
can_i yes "$NS:rolomesh-agent" "$NS" patch meshmembers.rolomesh.io --subresource=status

check "helm upgrade (replicas 3, text logs)" helm upgrade rolomesh "$CHART" -n "$NS" --reuse-values \
    --set operator.replicas=3 --set operator.logFormat=text
got=$(kubectl -n "$NS" get deployment rolomesh-operator -o jsonpath='{.spec.replicas} {.spec.template.spec.containers[0].args[10]}' 2>&1)
[[ "$got" == "3 text" ]] && pass "upgrade applied" || fail "upgrade applied" "got $got"

echo "== examples (dry run, strict, with the chart's CRDs)"
for f in examples/*.yaml; do
    [[ "$f" == examples/agent.yaml ]] && continue
    if out=$(kubectl apply --dry-run=server --validate=strict -f "$f" 2>&1) && ! grep -q '^Warning:' <<<"$out"; then
        pass "$f: $(tr '\n' ' ' <<<"$out")"
    else
        fail "$f" "$out"
    fi
done
# The CRDs' rules do bite: a network with both rolodex modes is refused.
out=$(sed 's/^  rolodex:$/  rolodex:\n    external: {endpoints: ["192.0.2.1:6264"]}/' examples/meshnetwork.yaml |
    kubectl apply --dry-run=server -f - 2>&1)
[[ "$out" == *"set exactly one of rolodex.managed and rolodex.external"* ]] && pass "a broken example is refused" ||
    fail "a broken example is refused" "$out"

check "helm uninstall" helm uninstall rolomesh -n "$NS" --wait --timeout 60s
sel=app.kubernetes.io/instance=rolomesh
if out=$(kubectl get deployment,service,serviceaccount,role,rolebinding,poddisruptionbudget -n "$NS" -l $sel -o name &&
    kubectl get serviceaccount,rolebinding -n default -l $sel -o name &&
    kubectl get clusterrole,clusterrolebinding -l $sel -o name) && [[ -z "$out" ]]; then
    pass "uninstall removed the chart's objects"
else
    fail "uninstall removed the chart's objects" "$out"
fi
check "CRDs stay after uninstall (Helm never deletes crds/)" kubectl get crd meshnetworks.rolomesh.io meshmembers.rolomesh.io

summary
