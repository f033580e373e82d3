# Sourced by hack/test.sh (see README.md here): the tools of the observability tests
# (tests/observability_files.rs, tests/e2e/observability.rs), cached under ~/.cache/imds-operator:
#   IMDS_OPERATOR_PROMTOOL  promtool, built from the Go module proxy (`promtool test rules`)
#   IMDS_OPERATOR_KSTATUS   hack/tools/kstatus-check, built with go build (sigs.k8s.io/cli-utils kstatus)
#   IMDS_OPERATOR_LUA       a Lua 5.4 (or 5.3) interpreter from Debian (the Argo CD health check)
# Source it by hand to run those tests outside hack/test.sh:
#   source hack/setup.d/30-observability.sh && cargo test --test observability_files

imds_obs_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
imds_obs_cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
# Prometheus' module versions are v0.<3 digits>.<patch> for Prometheus 3.<major>.<patch>.
imds_obs_prometheus_version="v0.316.0"

imds_obs_start=$(date +%s)
IMDS_OPERATOR_PROMTOOL=$(bash "$imds_obs_root/hack/build-go-tool.sh" promtool \
  github.com/prometheus/prometheus/cmd/promtool "$imds_obs_prometheus_version" | tail -n 1)
export IMDS_OPERATOR_PROMTOOL
echo "[observability] promtool: $IMDS_OPERATOR_PROMTOOL ($(( $(date +%s) - imds_obs_start ))s)" >&2

# The kstatus checker: its own module (go.mod/go.sum pinned), cached by the hash of its sources.
imds_obs_start=$(date +%s)
imds_obs_src="$imds_obs_root/hack/tools/kstatus-check"
imds_obs_hash=$(cat "$imds_obs_src/go.mod" "$imds_obs_src/go.sum" "$imds_obs_src/main.go" | sha256sum | cut -c1-12)
IMDS_OPERATOR_KSTATUS="$imds_obs_cache/bin/kstatus-check-$imds_obs_hash"
if [ ! -x "$IMDS_OPERATOR_KSTATUS" ]; then
  mkdir -p "$imds_obs_cache/bin"
  (cd "$imds_obs_src" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -buildvcs=false \
    -o "$IMDS_OPERATOR_KSTATUS.tmp" . && mv "$IMDS_OPERATOR_KSTATUS.tmp" "$IMDS_OPERATOR_KSTATUS")
  echo "kstatus-check-$imds_obs_hash $(( $(date +%s) - imds_obs_start ))s" >>"$imds_obs_cache/build-times.txt"
fi
export IMDS_OPERATOR_KSTATUS
echo "[observability] kstatus-check: $IMDS_OPERATOR_KSTATUS ($(( $(date +%s) - imds_obs_start ))s)" >&2

imds_obs_start=$(date +%s)
IMDS_OPERATOR_LUA=$(command -v lua5.4 || command -v lua5.3 || true)
if [ -z "$IMDS_OPERATOR_LUA" ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.4 >/dev/null
  else
    sudo apt-get update -qq >&2
    sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lua5.4 >/dev/null
  fi
  IMDS_OPERATOR_LUA=$(command -v lua5.4)
fi
export IMDS_OPERATOR_LUA
echo "[observability] lua: $IMDS_OPERATOR_LUA ($(( $(date +%s) - imds_obs_start ))s)" >&2
unset imds_obs_root imds_obs_cache imds_obs_prometheus_version imds_obs_start imds_obs_src imds_obs_hash
