#!/usr/bin/env bash
# Rolodex scale: one rolodex process and 1,000-10,000 simulated members speaking the real protocol over UDP on
# 127.0.0.1 (`rolomesh bench rolodex`). Builds the release binary, writes bench/results/rolodex-scale.md
# (tables) and .json. Extra arguments go to the benchmark, e.g. --members 1000,2500 --heartbeat 2, or
# --rolodex-bin PATH to measure another build of the rolodex with the same load generator.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/rolomesh/target}"
cargo build --release -p rolomesh
mkdir -p bench/results
"$CARGO_TARGET_DIR/release/rolomesh" bench rolodex --json bench/results/rolodex-scale.json "$@" \
    | tee bench/results/rolodex-scale.md
