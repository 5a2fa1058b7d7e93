#!/usr/bin/env bash
# Fuzz smoke test: runs every cargo-fuzz target in fuzz/ for SECONDS each (default 10).
#
#   tests/fuzz-smoke.sh [SECONDS]
#
# Needs a nightly toolchain (rustup); installs cargo-fuzz if it is missing. Without either it prints why it
# skipped and exits 0. Exits non-zero if a build fails or any target crashes, hangs (> FUZZ_TIMEOUT s per
# input, default 10) or runs out of memory; the reproducer is printed in hex and kept on disk.
#
# Build output, the growing corpus and crash artifacts live outside the clone, under
# ${CARGO_TARGET_DIR:-$HOME/.cache/rolomesh}: fuzz-target/, fuzz-corpus/<target>/, fuzz-artifacts/<target>/.
# fuzz/seeds/<target>/ (checked in, if present) is read as an extra seed corpus.
#
# Environment: FUZZ_SANITIZER (default none: the fuzzed code is safe Rust, and AddressSanitizer costs a
# 6-9x slowdown; set "address" to use it), FUZZ_TARGETS (space-separated subset), FUZZ_TIMEOUT.
#
# Reproduce a crash:  cargo +nightly fuzz run --target-dir <fuzz-target> -s none -a <target> <artifact>
# Minimize it:        cargo +nightly fuzz tmin --target-dir <fuzz-target> -s none -a <target> <artifact>
set -euo pipefail

secs="${1:-10}"
if ! [[ "$secs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]   (seconds per fuzz target, default 10)" >&2
    exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fuzz_dir="$root/fuzz"
base="${CARGO_TARGET_DIR:-$HOME/.cache/rolomesh}"
target_dir="$base/fuzz-target"
sanitizer="${FUZZ_SANITIZER:-none}"
timeout="${FUZZ_TIMEOUT:-10}"

skip() {
    echo "fuzz-smoke: SKIPPED: $*"
    exit 0
}

command -v cargo >/dev/null 2>&1 || skip "cargo is not installed"
if ! cargo +nightly --version >/dev/null 2>&1; then
    skip "no nightly toolchain (install one with: rustup toolchain install nightly)"
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked || skip "cargo-fuzz is missing and could not be installed"
fi

fuzz() {
    cargo +nightly fuzz "$@"
}

if [[ -n "${FUZZ_TARGETS:-}" ]]; then
    read -r -a targets <<<"$FUZZ_TARGETS"
else
    mapfile -t targets < <(fuzz list --fuzz-dir "$fuzz_dir")
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "fuzz-smoke: no fuzz targets found in $fuzz_dir" >&2; exit 1; }

started=$SECONDS
echo "== building ${#targets[@]} fuzz targets (sanitizer: $sanitizer, target dir: $target_dir)"
fuzz build --fuzz-dir "$fuzz_dir" --target-dir "$target_dir" -s "$sanitizer" -a
echo "   built in $((SECONDS - started)) s"

logs="$(mktemp -d)"
trap 'rm -rf "$logs"' EXIT
failed=()
for t in "${targets[@]}"; do
    corpus="$base/fuzz-corpus/$t"
    artifacts="$base/fuzz-artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    dirs=("$corpus")
    [[ -d "$fuzz_dir/seeds/$t" ]] && dirs+=("$fuzz_dir/seeds/$t")
    log="$logs/$t.log"
    echo "== $t (${secs} s)"
    # -len_control=20: the stateful targets need longer inputs (more steps) early on.
    if fuzz run --fuzz-dir "$fuzz_dir" --target-dir "$target_dir" -s "$sanitizer" -a "$t" "${dirs[@]}" -- \
        -max_total_time="$secs" -timeout="$timeout" -len_control=20 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1; then
        done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)"
        rate="$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log" | tail -n 1)"
        echo "   ok: ${done_line:-finished} (avg exec/s: ${rate:-?})"
    else
        failed+=("$t")
        echo "   FAILED: $t"
        { grep -E -A2 "panicked at|^ERROR: libFuzzer|^==[0-9]+==ERROR" "$log" || true; } |
            head -n 20 | sed 's/^/   | /'
        artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)"
        if [[ -n "$artifact" && -f "$artifact" ]]; then
            echo "   reproducer: $artifact ($(wc -c <"$artifact") bytes)"
            echo "   hex: $({ od -An -v -tx1 "$artifact" | tr -d ' \n' | head -c 4096; } 2>/dev/null || true)"
            echo "   rerun: cargo +nightly fuzz run --fuzz-dir $fuzz_dir --target-dir $target_dir -s $sanitizer -a $t $artifact"
        else
            tail -n 40 "$log" | sed 's/^/   | /'
        fi
    fi
done

echo "== fuzz smoke: ${#targets[@]} targets x ${secs} s in $((SECONDS - started)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz-smoke: all targets passed"
