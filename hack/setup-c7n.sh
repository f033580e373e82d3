#!/usr/bin/env bash
# Creates (once, cached) a Python virtualenv with Cloud Custodian (`c7n`), the peer that the fleet
# benchmark (benches/fleet.rs, docs/benchmarks.md) runs beside the operator: a serial script that
# sets IMDSv2 on every instance with its `set-metadata-access` action.
# The venv lives under $IMDS_OPERATOR_CACHE (default ~/.cache/imds-operator), keyed by
# C7N_VERSION below, and is reused while it works. Like hack/setup-moto.sh.
#
# Prints the path of the venv's `custodian` executable on stdout as its last line.
set -euo pipefail

# Pinned here (hack/versions.env pins the test infrastructure; this is the benchmark's peer).
C7N_VERSION="${C7N_VERSION:-0.9.53}"

cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
venv="$cache/venv-c7n-$C7N_VERSION"
custodian="$venv/bin/custodian"

log() { echo "[setup-c7n] $*" >&2; }

works() {
  [ -x "$custodian" ] && [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" - "$C7N_VERSION" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
sys.exit(0 if version("c7n") == sys.argv[1] else 1)
PY
}

if works; then
  log "c7n $C7N_VERSION cached in $venv"
  echo "$custodian"
  exit 0
fi

python="${PYTHON:-}"
if [ -z "$python" ]; then
  for candidate in python3 python; do
    if command -v "$candidate" >/dev/null 2>&1; then
      python="$candidate"
      break
    fi
  done
fi
[ -n "$python" ] || { log "no python3 found (set PYTHON)"; exit 1; }

# Build next to the final location and move into place (an interrupted run leaves nothing
# half-made under the final name).
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.venv-c7n-$C7N_VERSION.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "creating venv for c7n $C7N_VERSION with $("$python" --version 2>&1)"
start=$(date +%s)
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check "c7n==$C7N_VERSION" >&2

rm -rf "$venv"
mv "$tmp/venv" "$venv"
# Scripts were written with the temporary interpreter path in their shebang.
grep -rlI --null "^#!$tmp/venv/bin/" "$venv/bin" 2>/dev/null |
  xargs -0 -r sed -i "1s|^#!$tmp/venv/bin/|#!$venv/bin/|"
grep -rlI --null "$tmp/venv" "$venv/bin" 2>/dev/null | xargs -0 -r sed -i "s|$tmp/venv|$venv|g"
end=$(date +%s)
echo "c7n-$C7N_VERSION $((end - start))s" >>"$cache/build-times.txt"

works || { log "c7n venv at $venv does not work after install"; exit 1; }
log "c7n $C7N_VERSION installed in $venv in $((end - start))s"
echo "$custodian"
