#!/usr/bin/env bash
# Builds (once) and caches the binaries of a local Kubernetes control plane for tests:
#   kube-apiserver, kube-controller-manager, kubectl  (k8s.io/kubernetes, pinned below)
#   etcd                                              (go.etcd.io/etcd/server/v3)
#   helm                                              (helm.sh/helm/v3)
#   kubeconform                                       (github.com/yannh/kubeconform)
# from Go modules, with the local Go toolchain. Nothing is written inside the clone: sources come from the Go module
# cache (GOMODCACHE), objects go to GOCACHE, and binaries to
#   ${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}/k8s-<k8s version>/bin
# One stamp file per tool and version marks a finished build; when everything is stamped the script exits at once.
# Progress goes to stdout; the LAST line of stdout is always the bin dir, so callers can do
#   BIN=$(tests/k8s/install-tools.sh | tail -1)
# A cold build takes a long time (Kubernetes alone is tens of minutes on 2 cores); a cached run takes milliseconds.
#
# Environment: ROLOMESH_CACHE (cache root), ROLOMESH_BUILD_PARALLEL (go build -p, default 2),
# ROLOMESH_K8S_TOOLS (space-separated subset to build, default all). Versions can be overridden with
# ROLOMESH_K8S_VERSION, ROLOMESH_ETCD_VERSION, ROLOMESH_HELM_VERSION, ROLOMESH_KUBECONFORM_VERSION.
set -euo pipefail

K8S_VERSION=${ROLOMESH_K8S_VERSION:-v1.34.4}            # highest v1.34 patch served when pinned
ETCD_VERSION=${ROLOMESH_ETCD_VERSION:-v3.6.16}          # highest v3.6 patch served when pinned
HELM_VERSION=${ROLOMESH_HELM_VERSION:-v3.19.5}          # highest v3.19 patch served when pinned
KUBECONFORM_VERSION=${ROLOMESH_KUBECONFORM_VERSION:-v0.7.0}

# Bump when the build recipe (flags, ldflags) changes, so cached binaries are rebuilt.
RECIPE=2

ALL_TOOLS="kube-apiserver kube-controller-manager kubectl etcd helm kubeconform"
TOOLS=${ROLOMESH_K8S_TOOLS:-$ALL_TOOLS}
CACHE_ROOT=${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}
ROOT="$CACHE_ROOT/k8s-$K8S_VERSION"
BIN="$ROOT/bin"
STAMPS="$ROOT/stamps"
SRC="$ROOT/src"
PARALLEL=${ROLOMESH_BUILD_PARALLEL:-2}

tool_version() {
    case "$1" in
        kube-apiserver | kube-controller-manager | kubectl) echo "$K8S_VERSION" ;;
        etcd) echo "$ETCD_VERSION" ;;
        helm) echo "$HELM_VERSION" ;;
        kubeconform) echo "$KUBECONFORM_VERSION" ;;
        *) echo "install-tools: unknown tool '$1'" >&2; exit 2 ;;
    esac
}
stamp_file() { echo "$STAMPS/$1-$(tool_version "$1")-r$RECIPE"; }
is_done() { [[ -x "$BIN/$1" && -f "$(stamp_file "$1")" ]]; }

# Fast path: no go, no lock, no network.
all_done=1
for t in $TOOLS; do is_done "$t" || { all_done=0; break; }; done
if ((all_done)); then
    echo "$BIN"
    exit 0
fi

command -v go >/dev/null || { echo "install-tools: 'go' is not on PATH" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:+$GOFLAGS }-buildvcs=false"
mkdir -p "$BIN" "$STAMPS" "$SRC"

# One builder at a time per cache dir (parallel test runs may call this concurrently).
exec 9>"$ROOT/.lock"
if ! flock -n 9; then
    echo "install-tools: another build holds $ROOT/.lock; waiting"
    flock 9
fi

echo "install-tools: $(go version); cache $ROOT; GOMODCACHE=$(go env GOMODCACHE) GOCACHE=$(go env GOCACHE)"

k8s_minor=${K8S_VERSION#v1.}; k8s_minor=${k8s_minor%%.*}
k8s_patch=${K8S_VERSION##*.}
staging_version="v0.$k8s_minor.$k8s_patch"

stamp() { # tool
    { echo "version=$(tool_version "$1")"; echo "go=$(go env GOVERSION)"; echo "built=$(date -u +%FT%TZ)"; } \
        >"$(stamp_file "$1")"
}

timed() { # label cmd... ; prints the duration
    local label=$1 start=$SECONDS; shift
    "$@"
    echo "install-tools: $label done in $((SECONDS - start))s"
}

# go build into a temp name, then rename, so a killed build never leaves a half-written binary behind.
build_to() { # dir-of-module out-name package [ldflags]
    local moddir=$1 name=$2 pkg=$3 ldflags=${4:-}
    echo "install-tools: building $name ($pkg) ..."
    (cd "$moddir" && go build -p "$PARALLEL" -trimpath -ldflags "-s -w $ldflags" -o "$BIN/.$name.tmp" "$pkg")
    mv -f "$BIN/.$name.tmp" "$BIN/$name"
    stamp "$name"
}

# ---- Kubernetes ------------------------------------------------------------------------------------------------
prepare_k8s_module() {
    local dir="$SRC/kubernetes-$K8S_VERSION"
    if [[ -f "$dir/.ready" ]]; then echo "$dir"; return; fi
    mkdir -p "$dir"
    echo "install-tools: downloading k8s.io/kubernetes@$K8S_VERSION" >&2
    local kdir
    kdir=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
    [[ -f "$kdir/go.mod" ]] || { echo "install-tools: could not download k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
    # The staging modules are the ones k8s.io/kubernetes replaces with ./staging/src/...; Go ignores replaces in a
    # dependency, so our own module replaces each with its published version v0.<minor>.<patch>.
    local staging
    staging=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$kdir/go.mod" | sort -u)
    [[ -n "$staging" ]] || { echo "install-tools: no staging modules found in $kdir/go.mod" >&2; exit 1; }
    local godirective godebug
    godirective=$(awk '$1 == "go" {print $2; exit}' "$kdir/go.mod")
    godebug=$(awk '$1 == "godebug" {print; exit}' "$kdir/go.mod")
    {
        echo "// Generated by rolomesh tests/k8s/install-tools.sh; builds Kubernetes $K8S_VERSION binaries."
        echo "module rolomesh.local/k8s-tools"
        echo
        echo "go ${godirective:-1.24.0}"
        [[ -n "$godebug" ]] && echo "$godebug"
        echo
        echo "tool ("
        echo "	k8s.io/kubernetes/cmd/kube-apiserver"
        echo "	k8s.io/kubernetes/cmd/kube-controller-manager"
        echo "	k8s.io/kubernetes/cmd/kubectl"
        echo ")"
        echo
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo
        echo "replace ("
        for m in $staging; do echo "	$m => $m $staging_version"; done
        echo ")"
    } >"$dir/go.mod"
    echo "install-tools: $(wc -w <<<"$staging") staging modules -> $staging_version; go mod tidy" >&2
    (cd "$dir" && go mod tidy >&2)
    touch "$dir/.ready"
    echo "$dir"
}

k8s_ldflags() {
    local f="" p
    for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        f+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean -X $p.gitCommit="
    done
    echo "$f"
}

# ---- etcd ------------------------------------------------------------------------------------------------------
prepare_etcd_module() {
    local dir="$SRC/etcd-$ETCD_VERSION"
    if [[ -f "$dir/.ready" ]]; then echo "$dir"; return; fi
    mkdir -p "$dir"
    # go.etcd.io/etcd/server/v3 has replace directives, so `go install ...@version` refuses it; a tiny module of our
    # own that requires it builds fine (its requirements name the published api/client/pkg modules).
    cat >"$dir/go.mod" <<EOF
// Generated by rolomesh tests/k8s/install-tools.sh; builds etcd $ETCD_VERSION.
module rolomesh.local/etcd-tools

go 1.24.0

tool go.etcd.io/etcd/server/v3

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
    echo "install-tools: etcd module: go mod tidy" >&2
    (cd "$dir" && go mod tidy >&2)
    touch "$dir/.ready"
    echo "$dir"
}

# ---- go install style tools --------------------------------------------------------------------------------------
go_install() { # name package@version [ldflags]
    local name=$1 pkg=$2 ldflags=${3:-}
    local tmp="$ROOT/.gobin-$name"
    rm -rf "$tmp"; mkdir -p "$tmp"
    echo "install-tools: go install $pkg ..."
    GOBIN="$tmp" go install -p "$PARALLEL" -trimpath -ldflags "-s -w $ldflags" "$pkg"
    mv -f "$tmp/$name" "$BIN/$name"
    rm -rf "$tmp"
    stamp "$name"
}

total_start=$SECONDS
for t in $TOOLS; do
    if is_done "$t"; then echo "install-tools: $t $(tool_version "$t") cached"; continue; fi
    case "$t" in
        kube-apiserver | kube-controller-manager | kubectl)
            moddir=$(prepare_k8s_module)
            timed "$t" build_to "$moddir" "$t" "k8s.io/kubernetes/cmd/$t" "$(k8s_ldflags)" ;;
        etcd)
            moddir=$(prepare_etcd_module)
            timed etcd build_to "$moddir" etcd go.etcd.io/etcd/server/v3 \
                "-X go.etcd.io/etcd/api/v3/version.GitSHA=rolomesh" ;;
        helm)
            hl="-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
            for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
                hl+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$k8s_minor"
            done
            timed helm go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" "$hl" ;;
        kubeconform)
            timed kubeconform go_install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION" \
                "-X main.version=$KUBECONFORM_VERSION" ;;
    esac
done
echo "install-tools: all tools ready in $((SECONDS - total_start))s"
echo "$BIN"
