#!/usr/bin/env bash
# Builds the local control plane used by the end-to-end tests and the demo:
# kube-apiserver, kubectl (from k8s.io/kubernetes), etcd (from go.etcd.io/etcd/server/v3) and helm,
# all from the Go module proxy. Binaries are cached under $IMDS_OPERATOR_CACHE (default
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

# --- kube-apiserver + kubectl ------------------------------------------------------------------
build_kubernetes() {
  local dir="$cache/build/kubernetes-$KUBE_VERSION"
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
  cat >"$dir/tools.go" <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
EOF
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
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$bin/kube-apiserver-$KUBE_VERSION" k8s.io/kubernetes/cmd/kube-apiserver)
  (cd "$dir" && go build -trimpath -ldflags "$ld" -o "$bin/kubectl-$KUBE_VERSION" k8s.io/kubernetes/cmd/kubectl)
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
