#!/usr/bin/env bash
# Issue 12, rung 5 (`make test-node`): the chart on real kubelets. Not part of `make test` or CI
# (minutes of Go builds on a fresh machine, root, cgroups and network namespaces); see
# docs/real-node.md. Sets up, all cached under ~/.cache/imds-operator:
#   the control plane (kube-apiserver, etcd, kubectl, helm) and the node binaries (kubelet,
#   kube-controller-manager, kube-scheduler: hack/build-control-plane.sh node), moto, the
#   Debian packages the node needs (only those missing), the operator image (hack/image.sh into
#   dist/test-image; its static release build goes to $IMDS_OPERATOR_IMAGE_TARGET_DIR when set,
#   else cargo's target dir; IMAGE_BINARY=<static binary> reuses one),
# then runs tests/e2e/node.rs with IMDS_E2E_NODE=1.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

[ "$(id -u)" = 0 ] || { echo "[test-node] needs root (kubelet, containerd, cgroups, network namespaces)" >&2; exit 1; }
start=$(date +%s)
echo "==> control plane and node binaries (cached after the first run)"
bin_dir=$(bash hack/build-control-plane.sh kubernetes etcd helm node | tail -n 1)
export IMDS_OPERATOR_BIN_DIR="$bin_dir"
echo "==> moto (cached after the first run)"
moto_server=$(bash hack/setup-moto.sh | tail -n 1)
export IMDS_OPERATOR_MOTO_SERVER="$moto_server"

missing=()
command -v containerd >/dev/null || missing+=(containerd)
command -v runc >/dev/null || missing+=(runc)
[ -x /usr/lib/cni/loopback ] || missing+=(containernetworking-plugins)
command -v umoci >/dev/null || missing+=(umoci)
command -v skopeo >/dev/null || missing+=(skopeo)
command -v ip >/dev/null || missing+=(iproute2)
command -v cc >/dev/null || missing+=(gcc)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -e /usr/lib/aarch64-linux-gnu/libc.a ] || missing+=(libc6-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

echo "==> the operator image"
export IMDS_OPERATOR_IMAGE_DIR="$PWD/dist/test-image"
CARGO_TARGET_DIR="${IMDS_OPERATOR_IMAGE_TARGET_DIR:-${CARGO_TARGET_DIR:-target}}" \
  IMAGE_OUT="$IMDS_OPERATOR_IMAGE_DIR" bash hack/image.sh >/dev/null
setup=$(date +%s)
echo "==> setup took $((setup - start))s"

IMDS_E2E_NODE=1 cargo test --locked --test e2e -- --exact node::chart_runs_on_real_kubelets_with_leader_failover --nocapture
echo "==> test-node took $(( $(date +%s) - start ))s (setup $((setup - start))s)"
