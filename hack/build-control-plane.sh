#!/usr/bin/env bash
# Builds the local control plane used by the end-to-end tests and the demo:
# kube-apiserver, kubectl (from k8s.io/kubernetes), etcd (from go.etcd.io/etcd/server/v3) and helm,
# all from the Go module proxy. `hack/build-control-plane.sh node` builds the real-node binaries
# (kubelet, kube-controller-manager, kube-scheduler, same wrapper module; `make test-node` only). Binaries are cached under $IMDS_OPERATOR_CACHE (default
# ~/.cache/imds-operator) keyed by version, so only a fresh machine pays for the build.
#
# Prints the bin directory on stdout as its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
bin="$cache/bin"
mkdir -p "$bin" "$cache/build"
export CGO_ENABLED=0
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

log() { echo "[build-control-plane] $*" >&2; }

timed() {
  local name="$1"
  shift
  local start end
  start=$(date +%s)
  "$@"
  end=$(date +%s)
  log "$name built in $((end - start))s"
  echo "$name $((end - start))s" >>"$cache/build-times.txt"
}

# --- k8s.io/kubernetes commands ---------------------------------------------------------------
# kube_build DIR CMD...: a wrapper module in DIR that requires k8s.io/kubernetes (whose go.mod
# replaces its staging modules with ./staging, which `go install pkg@version` refuses) with each
# staging module pinned to its published v0.Y.Z, then each k8s.io/kubernetes/cmd/CMD built to
# $bin/CMD-$KUBE_VERSION.
kube_build() {
  local dir="$1"
  shift
  local minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  local staging_version="v0.${KUBE_VERSION#v1.}"
  rm -rf "$dir"
  mkdir -p "$dir"
  local modfile
  modfile=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  [ -f "$modfile" ] || { log "could not download k8s.io/kubernetes@$KUBE_VERSION"; return 1; }
  local go_directive godebug
  go_directive=$(awk '$1=="go"{print $2; exit}' "$modfile")
  godebug=$(awk '$1=="godebug"{print; exit}' "$modfile")
  {
    echo "module imds-operator.io/control-plane"
    echo
    echo "go $go_directive"
    echo
    [ -n "$godebug" ] && echo "$godebug" && echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    # Every staging module k8s.io/kubernetes replaces with ./staging/... gets its published v0.Y.Z.
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/src/.*#\1#p' "$modfile" | while read -r m; do
      echo "	$m => $m $staging_version"
    done
    echo ")"
  } >"$dir/go.mod"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for c in "$@"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$c"; done
    printf ')\n'
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy -e >/dev/null 2>&1 || true)
  (cd "$dir" && go get "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null)
  local pkg="k8s.io/component-base/version"
  local cpkg="k8s.io/client-go/pkg/version"
  local date
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  local ld="-s -w"
  for p in "$pkg" "$cpkg"; do
    ld="$ld -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  for c in "$@"; do
    (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$bin/$c-$KUBE_VERSION" "k8s.io/kubernetes/cmd/$c")
  done
}

# --- kube-apiserver + kubectl ------------------------------------------------------------------
build_kubernetes() { kube_build "$cache/build/kubernetes-$KUBE_VERSION" kube-apiserver kubectl; }

# --- kubelet + kube-controller-manager + kube-scheduler (the real node, make test-node) --------
node_cmds="kubelet kube-controller-manager kube-scheduler"
build_node() {
  # shellcheck disable=SC2086 # word splitting of the command list is intended
  kube_build "$cache/build/kubernetes-node-$KUBE_VERSION" $node_cmds
}

# --- etcd --------------------------------------------------------------------------------------
build_etcd() {
  local dir="$cache/build/etcd-$ETCD_VERSION"
  rm -rf "$dir"
  mkdir -p "$dir"
  (
    cd "$dir"
    cat >go.mod <<EOF
module imds-operator.io/etcd

go 1.24
EOF
    cat >tools.go <<'EOF'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
EOF
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    go mod tidy -e >/dev/null 2>&1 || true
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd-$ETCD_VERSION" go.etcd.io/etcd/server/v3
  )
}

# --- helm --------------------------------------------------------------------------------------
build_helm() {
  local dir="$cache/build/helm-$HELM_VERSION"
  mkdir -p "$dir"
  (
    cd "$dir"
    GOBIN="$dir" go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$dir/helm" "$bin/helm-$HELM_VERSION"
  )
}

want="${*:-kubernetes etcd helm}"
for item in $want; do
  case "$item" in
  kubernetes)
    if [ -x "$bin/kube-apiserver-$KUBE_VERSION" ] && [ -x "$bin/kubectl-$KUBE_VERSION" ]; then
      log "kube-apiserver/kubectl $KUBE_VERSION cached"
    else
      timed "kube-apiserver+kubectl-$KUBE_VERSION" build_kubernetes
    fi
    ;;
  node)
    missing=""
    for c in $node_cmds; do [ -x "$bin/$c-$KUBE_VERSION" ] || missing="$missing $c"; done
    if [ -z "$missing" ]; then log "$node_cmds $KUBE_VERSION cached"; else timed "kubelet+kube-controller-manager+kube-scheduler-$KUBE_VERSION" build_node; fi
    for c in $node_cmds; do ln -sf "$c-$KUBE_VERSION" "$bin/$c"; done
    ;;
  etcd)
    if [ -x "$bin/etcd-$ETCD_VERSION" ]; then log "etcd $ETCD_VERSION cached"; else timed "etcd-$ETCD_VERSION" build_etcd; fi
    ;;
  helm)
    if [ -x "$bin/helm-$HELM_VERSION" ]; then log "helm $HELM_VERSION cached"; else timed "helm-$HELM_VERSION" build_helm; fi
    ;;
  *)
    log "unknown component $item"
    exit 2
    ;;
  esac
done

# Stable names for the harness and for people.
ln -sf "kube-apiserver-$KUBE_VERSION" "$bin/kube-apiserver"
ln -sf "kubectl-$KUBE_VERSION" "$bin/kubectl"
ln -sf "etcd-$ETCD_VERSION" "$bin/etcd"
ln -sf "helm-$HELM_VERSION" "$bin/helm"
echo "$bin"
