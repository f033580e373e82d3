#!/usr/bin/env bash
# `make bench`: the benchmarks, which print figures and are not part of `make test`. Sets up what
# the fleet benchmark needs on a fresh machine (control-plane binaries, Cloud Custodian's
# virtualenv for the peer; both cached), then runs the planning benchmark (benches/plan.rs), the
# answer-reading benchmark (benches/answers.rs) and the fleet benchmark (benches/fleet.rs, the
# release operator binary against the local control plane and the EC2 double). docs/benchmarks.md
# explains the figures and the IMDS_BENCH* variables.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$(date +%s)
if [ -z "${IMDS_OPERATOR_BIN_DIR:-}" ]; then
  echo "==> control-plane binaries (cached after the first run)"
  IMDS_OPERATOR_BIN_DIR=$(bash hack/build-control-plane.sh | tail -n 1)
  export IMDS_OPERATOR_BIN_DIR
fi
selected=",$(echo "${IMDS_BENCH:-PEER}" | tr '[:lower:]' '[:upper:]' | tr -d ' '),"
if [ -z "${IMDS_BENCH_C7N:-}" ] && [[ "$selected" == *",PEER,"* ]]; then
  echo "==> Cloud Custodian for the peer (cached after the first run)"
  if c7n=$(bash hack/setup-c7n.sh | tail -n 1); then
    export IMDS_BENCH_C7N="$c7n"
  else
    echo "    c7n could not be installed; the peer's lines will say why" >&2
  fi
fi
echo "==> planning benchmark"
cargo bench --locked --bench plan
echo "==> reading DescribeInstances answers"
cargo bench --locked --bench answers
echo "==> fleet benchmark"
cargo bench --locked --bench fleet
echo "==> benchmarks took $(( $(date +%s) - start ))s"
