#!/usr/bin/env bash
# The project's one test command (README "Testing"): sets up what the tests need on a fresh
# machine (control-plane binaries, moto virtualenv), then runs every tier:
#   1. unit tests (the pure core crate crates/imds-core and the shell), 2. EC2 adaptor integration tests (moto + a local EC2 double),
#   3. end-to-end tests (the operator binary against etcd + kube-apiserver + moto), helm tests.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$(date +%s)
echo "==> building control-plane binaries (cached after the first run)"
bin_dir=$(bash hack/build-control-plane.sh | tail -n 1)
export IMDS_OPERATOR_BIN_DIR="$bin_dir"
echo "==> setting up moto (cached after the first run)"
moto_server=$(bash hack/setup-moto.sh | tail -n 1)
export IMDS_OPERATOR_MOTO_SERVER="$moto_server"
# Further test tooling (image tools, registry, promtool, Lua, ...): each hack/setup.d/*.sh is
# sourced in order; it installs or builds what its tests need (cached) and exports the paths.
for setup_script in hack/setup.d/*.sh; do
  [ -e "$setup_script" ] || continue
  echo "==> $setup_script"
  # shellcheck source=/dev/null
  source "$setup_script"
done
setup=$(date +%s)
echo "==> setup took $((setup - start))s"

echo "==> cargo build (operator binary used by the end-to-end tests)"
cargo build --locked --bin imds-operator
echo "==> cargo test (unit, integration, end-to-end)"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --locked --workspace --no-fail-fast -- --test-threads="${IMDS_OPERATOR_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
echo "==> tests took $(( $(date +%s) - setup ))s (setup $((setup - start))s)"
# One closing line for every test binary together.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
