#!/usr/bin/env bash
# `make release`: the release artifacts of this commit, in dist/ (gitignored):
#   imds-operator-<chart version>.tgz       the Helm chart (helm package)
#   image/                                  the container image, an OCI layout (hack/image.sh),
#                                           tagged <version>; image.digest holds its digest
#   imds-operator-<version>.cdx.json        SBOM (CycloneDX 1.5 JSON, from Cargo.lock by
#                                           cargo-sbom, narrowed to the crates the image's
#                                           target links: hack/sbom-for-target.py)
#   imds-operator-<version>.image.sig       cosign signature over the image digest (the
#   imds-operator-<version>.image.payload.json   simple-signing payload it signs), made with a
#   cosign.pub                              local key pair, no transparency log
#   signed-image/                           the image with its signature and the SBOM
#                                           attestation (cosign save: an OCI layout)
#   release.json, SHA256SUMS                what is where; checksums
# Signing needs a registry: a local one (CNCF distribution) runs on 127.0.0.1 for the duration.
# Verify:
#   cosign verify-blob --key dist/cosign.pub --insecure-ignore-tlog \
#     --signature dist/imds-operator-<v>.image.sig dist/imds-operator-<v>.image.payload.json
#   cosign verify --key dist/cosign.pub --insecure-ignore-tlog --local-image dist/signed-image
# The public release (multi-arch, pushed to ghcr.io, keyless signing, provenance) is
# .github/workflows/release.yml, which is not run here.
#
# Environment: DIST (default dist), IMAGE_BINARY (skip the cargo build, see hack/image.sh),
# COSIGN_KEY (default: a key pair generated once in ~/.cache/imds-operator/release-key, empty
# password), COSIGN_PASSWORD; the tools from hack/setup.d/20-image.sh (sourced when unset).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)

if [ -z "${IMDS_OPERATOR_COSIGN:-}" ] || [ -z "${IMDS_OPERATOR_REGISTRY:-}" ] || [ -z "${IMDS_OPERATOR_SBOM:-}" ]; then
  echo "[release] setting up the tools (hack/setup.d/20-image.sh)" >&2
  # shellcheck source=setup.d/20-image.sh
  source hack/setup.d/20-image.sh
fi
# helm: the one hack/build-control-plane.sh built (IMDS_OPERATOR_BIN_DIR in make test), else PATH.
if [ -n "${IMDS_OPERATOR_BIN_DIR:-}" ] && [ -x "$IMDS_OPERATOR_BIN_DIR/helm" ]; then
  helm="$IMDS_OPERATOR_BIN_DIR/helm"
else
  helm="$(command -v helm || echo "${IMDS_OPERATOR_CACHE:-$HOME/.cache/imds-operator}/bin/helm")"
fi
[ -x "$helm" ] || { echo "[release] helm not found (hack/build-control-plane.sh builds it)" >&2; exit 1; }
cosign="$IMDS_OPERATOR_COSIGN"
cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
dist="${DIST:-dist}"
mkdir -p "$dist"
dist=$(cd "$dist" && pwd)
version=$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
chart_version=$(sed -n 's/^version: //p' charts/imds-operator/Chart.yaml)
log() { echo "[release] $*" >&2; }
# cosign talks to the local registry only: any other destination goes to a dead local proxy.
offline() { HTTPS_PROXY=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 NO_PROXY=127.0.0.1 "$@"; }

work=$(mktemp -d)
registry_pid=""
cleanup() {
  if [ -n "$registry_pid" ]; then
    kill "$registry_pid" 2>/dev/null || true
    wait "$registry_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap 'rc=$?; cleanup; exit $rc' EXIT

# 1. The chart.
rm -f "$dist"/imds-operator-*.tgz
"$helm" package charts/imds-operator --destination "$dist" >&2
chart="imds-operator-$chart_version.tgz"

# 2. The image.
digest=$(IMAGE_OUT="$dist/image" bash hack/image.sh | tail -n 1)
log "image $digest"

# 3. The SBOM: cargo-sbom lists the operator package's normal dependencies for every platform;
# cargo's resolution for the image's target says which of them the binary links.
triple="$(uname -m)-unknown-linux-gnu"
sbom="imds-operator-$version.cdx.json"
"$IMDS_OPERATOR_SBOM" sbom --cargo-package imds-operator --output-format cyclone_dx_json_1_5 >"$work/sbom-all.json"
cargo tree --locked -p imds-operator -e normal --target "$triple" --prefix none --format '{p}' \
  | python3 hack/sbom-for-target.py "$work/sbom-all.json" "$dist/$sbom"

# 4. The signature: a key pair (once), the image in a local registry, signed there, saved.
key="${COSIGN_KEY:-$cache/release-key/cosign.key}"
export COSIGN_PASSWORD="${COSIGN_PASSWORD:-}"
if [ ! -f "$key" ]; then
  mkdir -p "$(dirname "$key")"
  (cd "$(dirname "$key")" && offline "$cosign" generate-key-pair >&2)
fi
pub="${key%.key}.pub"
cp "$pub" "$dist/cosign.pub"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
OTEL_TRACES_EXPORTER=none OTEL_METRICS_EXPORTER=none OTEL_LOGS_EXPORTER=none OTEL_SDK_DISABLED=true \
  "$IMDS_OPERATOR_REGISTRY" serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 100); do
  curl -fsS --noproxy '*' "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
  kill -0 "$registry_pid" 2>/dev/null || { cat "$work/registry.log" >&2; exit 1; }
  sleep 0.1
done
ref="127.0.0.1:$port/imds-operator/imds-operator"
skopeo copy --quiet --preserve-digests --dest-tls-verify=false "oci:$dist/image:$version" "docker://$ref:$version"
sig="imds-operator-$version.image.sig"
payload="imds-operator-$version.image.payload.json"
offline "$cosign" sign --yes --key "$key" --tlog-upload=false --allow-http-registry \
  --output-signature "$dist/$sig" --output-payload "$dist/$payload" "$ref@$digest" >&2
offline "$cosign" attest --yes --key "$key" --tlog-upload=false --allow-http-registry \
  --type cyclonedx --predicate "$dist/$sbom" "$ref@$digest" >&2
offline "$cosign" verify --key "$pub" --insecure-ignore-tlog --allow-http-registry "$ref@$digest" >/dev/null
rm -rf "$dist/signed-image"
offline "$cosign" save --dir "$dist/signed-image" "$ref@$digest" >&2

python3 - "$dist/release.json" <<EOF
import json, sys
json.dump({
    "version": "$version", "chartVersion": "$chart_version", "imageDigest": "$digest",
    "chart": "$chart", "imageLayout": "image", "sbom": "$sbom", "signature": "$sig",
    "payload": "$payload", "publicKey": "cosign.pub", "signedImage": "signed-image",
}, open(sys.argv[1], "w"), indent=2)
EOF
(cd "$dist" && sha256sum "$chart" "$sbom" "$sig" "$payload" cosign.pub image.digest release.json >SHA256SUMS)
log "dist: $chart, image ($digest), $sbom, $sig (cosign.pub)"
echo "$dist"
