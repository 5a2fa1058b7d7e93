#!/usr/bin/env bash
# Regenerates the CRD YAML (crds/rolomesh.yaml and the chart's copy) from the Rust types.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p charts/rolomesh/crds
cargo run -q -- crdgen > crds/rolomesh.yaml
cp crds/rolomesh.yaml charts/rolomesh/crds/rolomesh.yaml
