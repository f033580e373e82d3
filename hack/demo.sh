#!/usr/bin/env bash
# `make demo`: installs what it needs (control-plane binaries, moto), builds the operator and
# runs examples/demo.rs. Pass --keep to leave everything running until Ctrl-C.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin_dir=$(bash hack/build-control-plane.sh | tail -n 1)
export IMDS_OPERATOR_BIN_DIR="$bin_dir"
IMDS_OPERATOR_MOTO_SERVER=$(bash hack/setup-moto.sh | tail -n 1)
export IMDS_OPERATOR_MOTO_SERVER
cargo build --quiet --bin imds-operator
cargo run --quiet --example demo -- "$@"
