#!/usr/bin/env bash
# Regenerates the CRD YAML from the Rust types: crds/ and the chart's copy.
# With --check, fails (exit 1) when the committed files are stale instead of writing them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

crd_name="imds-operator.io_instancemetadatapolicies.yaml"
targets=("crds/$crd_name" "charts/imds-operator/crds/$crd_name")
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
cargo run --quiet --bin imds-operator -- crd >"$tmp"

if [ "${1:-}" = "--check" ]; then
  stale=0
  for t in "${targets[@]}"; do
    if ! cmp -s "$tmp" "$t"; then
      echo "stale: $t differs from 'imds-operator crd' (run hack/generate.sh)" >&2
      diff -u "$t" "$tmp" | head -40 >&2 || true
      stale=1
    fi
  done
  exit "$stale"
fi

for t in "${targets[@]}"; do
  mkdir -p "$(dirname "$t")"
  cp "$tmp" "$t"
  echo "wrote $t"
done
