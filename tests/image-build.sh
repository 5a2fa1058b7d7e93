#!/usr/bin/env bash
# Builds the rolomesh container image without a container engine, as an OCI image layout, and checks it.
#
#   1. a static binary: cargo build --release for x86_64-unknown-linux-musl (musl-gcc compiles ring's C code); if
#      the musl target cannot be installed, a static glibc binary (x86_64-unknown-linux-gnu, +crt-static);
#   2. an image FROM scratch with umoci: one layer holding /rolomesh, entrypoint ["/rolomesh"], user 65532:65532,
#      OCI labels; the same image the Dockerfile describes;
#   3. checks: the image config (entrypoint, user, platform, labels), the layer's contents, and the binary taken
#      out of the image runs (`rolomesh --version`, as user 65532 in an otherwise empty root when we are root).
#
# Output: ${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}/image (OCI layout, tag = the workspace version), outside the
# clone; build output in ${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}/image-target. Load it elsewhere with any OCI tool
# (e.g. `skopeo copy oci:DIR:0.1.0 docker-daemon:rolomesh/rolomesh:0.1.0`).
# Needs cargo/rustup, umoci, jq, musl-tools (Debian packages listed in .ci/apt-packages.txt; installed when root).
# The last line is "N passed, M failed"; exit status 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS

CACHE=${ROLOMESH_CACHE:-$HOME/.cache/rolomesh}
OUT="$CACHE/image"
export CARGO_TARGET_DIR="$CACHE/image-target"
REPO=rolomesh/rolomesh

PASSED=0 FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "ok    $1"; }
fail() { # name [details]
    FAILED=$((FAILED + 1)); echo "FAIL  $1"
    [[ -n "${2:-}" ]] && sed 's/^/      | /' <<<"$2" | head -n 40
    return 0
}
summary() {
    echo "image-build: $((SECONDS - START)) s"
    echo "$PASSED passed, $FAILED failed"
    [[ $FAILED -eq 0 ]]
}
die() { fail "$1" "${2:-}"; summary; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/rolomesh-image-build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- tools -------------------------------------------------------------------------------------------------------
missing=0
for t in umoci jq musl-gcc; do command -v "$t" >/dev/null || missing=1; done
if ((missing)) && [[ $EUID -eq 0 ]]; then
    .ci/install-apt-packages.sh >"$WORK/apt.log" 2>&1 || die "apt packages" "$(tail -n 20 "$WORK/apt.log")"
fi
for t in cargo umoci jq readelf tar; do
    command -v "$t" >/dev/null || die "tool $t" "$t not found; install the Debian packages in .ci/apt-packages.txt"
done

VERSION=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)
APP_VERSION=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/rolomesh/Chart.yaml)
[[ -n "$VERSION" && "$VERSION" == "$APP_VERSION" ]] &&
    pass "workspace version $VERSION = chart appVersion (the chart's default image tag)" ||
    fail "workspace version = chart appVersion" "Cargo.toml: '$VERSION', charts/rolomesh/Chart.yaml appVersion: '$APP_VERSION'"
TAG=${VERSION:-dev}

# ---- 1. static binary --------------------------------------------------------------------------------------------
MUSL=x86_64-unknown-linux-musl GNU=x86_64-unknown-linux-gnu
target=$GNU
if command -v rustup >/dev/null; then
    if rustup target list --installed | grep -qx $MUSL || rustup target add $MUSL >"$WORK/rustup.log" 2>&1; then
        target=$MUSL
    else
        echo "note: cannot install the $MUSL target ($(tail -n 1 "$WORK/rustup.log")); building a static glibc binary"
    fi
fi
build_env=(CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols)
if [[ $target == "$MUSL" ]]; then
    command -v musl-gcc >/dev/null || die "tool musl-gcc" "musl-gcc not found (Debian package musl-tools)"
    build_env+=(CC_x86_64_unknown_linux_musl=musl-gcc)
else
    # Only the final target gets the flag (build scripts and proc macros stay dynamic, as they must).
    build_env+=(CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static")
fi
echo "== cargo build --release --target $target (in $CARGO_TARGET_DIR)"
build_start=$SECONDS
if env "${build_env[@]}" cargo build --release --locked --target "$target" --bin rolomesh >"$WORK/build.log" 2>&1; then
    pass "cargo build --target $target ($((SECONDS - build_start)) s)"
else
    die "cargo build --target $target" "$(grep -E '^(error|warning: unused)' -A5 "$WORK/build.log" | head -n 30; tail -n 5 "$WORK/build.log")"
fi
BINARY="$CARGO_TARGET_DIR/$target/release/rolomesh"
if readelf -lW "$BINARY" | grep -q 'program interpreter' || readelf -dW "$BINARY" | grep -q '(NEEDED)'; then
    fail "binary is static" "$(readelf -lW "$BINARY" | grep interpreter; readelf -dW "$BINARY" | grep NEEDED)"
else
    pass "binary is static: no interpreter, no shared libraries ($(du -h "$BINARY" | cut -f1))"
fi

# ---- 2. image ----------------------------------------------------------------------------------------------------
# The layer is written by GNU tar, not `umoci insert`: umoci 0.4.7 (Debian 12) leaves out the end of the tar stream
# (padding and end-of-archive blocks; umoci issue 436), which runtimes tolerate but scanners and tar do not.
echo "== umoci: $OUT:$TAG"
rev=$(git rev-parse HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD 2>/dev/null || rev="$rev-dirty"
# Timestamps from SOURCE_DATE_EPOCH or the commit, so the same binary gives the same image digest.
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$WORK/layer"
install -m 0755 "$BINARY" "$WORK/layer/rolomesh"
build_image() {
    set -e
    tar -C "$WORK/layer" --format=ustar --numeric-owner --owner=0 --group=0 --mtime="@$epoch" \
        -cf "$WORK/layer.tar" rolomesh
    rm -rf "$OUT"
    mkdir -p "$(dirname "$OUT")"
    umoci init --layout "$OUT"
    umoci new --image "$OUT:$TAG"
    umoci raw add-layer --image "$OUT:$TAG" --history.created "$created" \
        --history.created_by "COPY rolomesh /rolomesh # tests/image-build.sh" "$WORK/layer.tar"
    umoci config --image "$OUT:$TAG" --os linux --architecture amd64 \
        --config.entrypoint /rolomesh --config.user 65532:65532 --created "$created" \
        --config.label org.opencontainers.image.title=rolomesh \
        --config.label "org.opencontainers.image.description=Encrypted L3 mesh VPN for linking Kubernetes clusters and hosts: rolodex, agent and operator" \
        --config.label "org.opencontainers.image.version=$VERSION" \
        --config.label org.opencontainers.image.licenses=Apache-2.0 \
        --config.label "org.opencontainers.image.revision=$rev" \
        --config.label "org.opencontainers.image.created=$created" \
        --history.created "$created" \
        --history.created_by "ENTRYPOINT [\"/rolomesh\"] USER 65532:65532 # tests/image-build.sh"
    umoci tag --image "$OUT:$TAG" latest
    umoci gc --layout "$OUT"
}
if out=$(build_image 2>&1); then pass "OCI layout written"; else die "umoci" "$out"; fi

# ---- 3. checks ---------------------------------------------------------------------------------------------------
blob() { echo "$OUT/blobs/${1%%:*}/${1#*:}"; }
manifest_digest=$(jq -r --arg t "$TAG" '.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] == $t) | .digest' "$OUT/index.json")
manifest=$(blob "$manifest_digest")
config=$(blob "$(jq -r .config.digest "$manifest")")
mapfile -t layers < <(jq -r '.layers[].digest' "$manifest")

check_jq() { # name file jq-filter expected
    local got
    got=$(jq -c "$3" "$2" 2>&1)
    [[ "$got" == "$4" ]] && pass "$1: $got" || fail "$1" "jq '$3': want $4, got $got"
}
check_jq "config entrypoint" "$config" .config.Entrypoint '["/rolomesh"]'
check_jq "config has no cmd" "$config" '.config.Cmd' 'null'
check_jq "config user" "$config" .config.User '"65532:65532"'
check_jq "config platform" "$config" '[.os, .architecture]' '["linux","amd64"]'
check_jq "config version label" "$config" '.config.Labels["org.opencontainers.image.version"]' "\"$VERSION\""
check_jq "manifest media type (index)" "$OUT/index.json" '[.manifests[].mediaType] | unique' '["application/vnd.oci.image.manifest.v1+json"]'
check_jq "layer media type" "$manifest" '[.layers[].mediaType]' '["application/vnd.oci.image.layer.v1.tar+gzip"]'

# Every blob is what its name says, and the config's diff_id is the uncompressed layer's digest.
bad_blobs=""
for f in "$OUT"/blobs/sha256/*; do
    [[ "$(sha256sum <"$f" | cut -d' ' -f1)" == "$(basename "$f")" ]] || bad_blobs+=" $(basename "$f")"
done
[[ -z "$bad_blobs" ]] && pass "blob digests ($(ls "$OUT/blobs/sha256" | wc -l) blobs)" || fail "blob digests" "mismatch:$bad_blobs"
check_jq "config diff_id = sha256 of the uncompressed layer" "$config" '.rootfs.diff_ids' \
    "[\"sha256:$(zcat "$(blob "${layers[0]}")" | sha256sum | cut -d' ' -f1)\"]"
check_jq "tags" "$OUT/index.json" '[.manifests[].annotations["org.opencontainers.image.ref.name"]] | sort' "[\"$TAG\",\"latest\"]"

if ((${#layers[@]} == 1)); then
    listing=$(tar -tvzf "$(blob "${layers[0]}")" 2>&1)
    # One file, executable, owned by root (the operator runs it as 65532; it writes nothing).
    if [[ $(grep -c . <<<"$listing") == 1 ]] && grep -Eq '^-rwxr-xr-x 0/0 .* (\./)?rolomesh$' <<<"$listing"; then
        pass "one layer, holding only /rolomesh: $listing"
    else
        fail "layer contents" "$listing"
    fi
else
    fail "one layer" "layers: ${layers[*]}"
fi

# Take the binary out of the image (not from the build) and run it.
mkdir -p "$WORK/rootfs"
if tar -xzf "$(blob "${layers[0]}")" -C "$WORK/rootfs" 2>"$WORK/tar.err"; then
    want="rolomesh $VERSION"
    got=$("$WORK/rootfs/rolomesh" --version 2>&1)
    [[ "$got" == "$want" ]] && pass "rolomesh --version from the image: $got" || fail "rolomesh --version" "want '$want', got '$got'"
    got=$("$WORK/rootfs/rolomesh" --help 2>&1)
    [[ "$got" == *rolodex* && "$got" == *agent* ]] && pass "rolomesh --help lists rolodex and agent" ||
        fail "rolomesh --help" "$got"
    if [[ $EUID -eq 0 ]] && command -v chroot >/dev/null; then
        # What the operator pod gets: nothing but /rolomesh, user 65532.
        got=$(chroot --userspec=65532:65532 "$WORK/rootfs" /rolomesh --version 2>&1)
        [[ "$got" == "$want" ]] && pass "runs as 65532 in an empty root (chroot): $got" ||
            fail "runs as 65532 in an empty root" "$got"
    else
        echo "skip  chroot run (needs root)"
    fi
    if [[ "$("$WORK/rootfs/rolomesh" --help 2>&1)" == *operator* ]]; then
        echo "note  'rolomesh operator' is present"
    else
        echo "note  'rolomesh operator' is not in this build yet (the chart runs it)"
    fi
else
    fail "extract layer" "$(<"$WORK/tar.err")"
fi

size=$(du -sh "$OUT" | cut -f1)
echo "image: $OUT:$TAG (also :latest), $size, layer ${layers[0]:-?}"
summary
