# Sourced by hack/test.sh (see README.md here): the tools of the image, registry and release
# tests (tests/e2e/image.rs, tests/e2e/registry.rs, the release test in tests/e2e/registry.rs),
# installed or built once and cached under ~/.cache/imds-operator:
#   umoci, skopeo, runc     Debian packages (skopeo brings containers-common's seccomp profile)
#   IMDS_OPERATOR_REGISTRY  CNCF distribution's registry, from the Go module proxy
#   IMDS_OPERATOR_COSIGN    cosign, from the Go module proxy
#   IMDS_OPERATOR_ACTIONLINT  actionlint, from the Go module proxy
#   IMDS_OPERATOR_SBOM      cargo-sbom, from crates.io (cargo install --locked; ~2 CPU-minutes,
#                           where cargo-cyclonedx, which links all of cargo, took ~12)
# and then builds the image (hack/image.sh: the static release binary, cached in cargo's target
# directory, and the OCI layout, rebuilt each time in seconds):
#   IMDS_OPERATOR_IMAGE_DIR the OCI image layout (dist/test-image of this checkout)
#   IMDS_OPERATOR_IMAGE_BIN the static release binary in it
# Source it by hand (as root) to run those tests outside hack/test.sh:
#   source hack/setup.d/20-image.sh && cargo test --test e2e -- image registry
# Build times of the Go tools land in ~/.cache/imds-operator/build-times.txt.

imds_img_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
imds_img_cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
imds_img_registry_version="v3.1.2"
imds_img_cosign_version="v2.6.5"
imds_img_actionlint_version="v1.7.12"
imds_img_sbom_version="0.10.0"

# Debian packages, only those missing (CI runs as root on a fresh machine).
imds_img_missing=()
command -v umoci >/dev/null || imds_img_missing+=(umoci)
command -v skopeo >/dev/null || imds_img_missing+=(skopeo)
command -v runc >/dev/null || imds_img_missing+=(runc)
command -v readelf >/dev/null || imds_img_missing+=(binutils)
[ -r /usr/share/containers/seccomp.json ] || imds_img_missing+=(golang-github-containers-common)
[ -r /etc/ssl/certs/ca-certificates.crt ] || imds_img_missing+=(ca-certificates)
if [ ${#imds_img_missing[@]} -gt 0 ]; then
  echo "[image] apt-get install ${imds_img_missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${imds_img_missing[@]}" >/dev/null
fi

imds_img_start=$(date +%s)
IMDS_OPERATOR_REGISTRY=$(bash "$imds_img_root/hack/build-go-tool.sh" registry \
  github.com/distribution/distribution/v3/cmd/registry "$imds_img_registry_version" | tail -n 1)
IMDS_OPERATOR_ACTIONLINT=$(bash "$imds_img_root/hack/build-go-tool.sh" actionlint \
  github.com/rhysd/actionlint/cmd/actionlint "$imds_img_actionlint_version" | tail -n 1)
IMDS_OPERATOR_COSIGN=$(bash "$imds_img_root/hack/build-go-tool.sh" cosign \
  github.com/sigstore/cosign/v2/cmd/cosign "$imds_img_cosign_version" | tail -n 1)
export IMDS_OPERATOR_REGISTRY IMDS_OPERATOR_ACTIONLINT IMDS_OPERATOR_COSIGN
echo "[image] registry, actionlint, cosign ready ($(( $(date +%s) - imds_img_start ))s)" >&2

# cargo-sbom: its own root and target directory, so the project's target stays untouched.
imds_img_start=$(date +%s)
IMDS_OPERATOR_SBOM="$imds_img_cache/cargo-sbom-$imds_img_sbom_version/bin/cargo-sbom"
if [ ! -x "$IMDS_OPERATOR_SBOM" ]; then
  CARGO_TARGET_DIR="$imds_img_cache/build/cargo-sbom-target" cargo install --quiet --locked \
    cargo-sbom --version "$imds_img_sbom_version" \
    --root "$imds_img_cache/cargo-sbom-$imds_img_sbom_version"
  rm -rf "$imds_img_cache/build/cargo-sbom-target"
  echo "cargo-sbom-$imds_img_sbom_version $(( $(date +%s) - imds_img_start ))s" >>"$imds_img_cache/build-times.txt"
fi
export IMDS_OPERATOR_SBOM

# The image: the release binary (cached by cargo) and the layout.
imds_img_start=$(date +%s)
IMDS_OPERATOR_IMAGE_DIR="$imds_img_root/dist/test-image"
IMAGE_OUT="$IMDS_OPERATOR_IMAGE_DIR" bash "$imds_img_root/hack/image.sh" >/dev/null
IMDS_OPERATOR_IMAGE_BIN="$(cd "$imds_img_root" && realpath "${CARGO_TARGET_DIR:-target}")/$(uname -m)-unknown-linux-gnu/release/imds-operator"
export IMDS_OPERATOR_IMAGE_DIR IMDS_OPERATOR_IMAGE_BIN
echo "[image] image ready ($(( $(date +%s) - imds_img_start ))s): $IMDS_OPERATOR_IMAGE_DIR" >&2
