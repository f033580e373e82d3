#!/usr/bin/env bash
# Builds one Go command from the Go module proxy into the shared cache, once per version:
#   hack/build-go-tool.sh NAME PACKAGE VERSION [extra go-build flags...]
# e.g. hack/build-go-tool.sh registry github.com/distribution/distribution/v3/cmd/registry v3.0.0
# The binary lands at $IMDS_OPERATOR_CACHE/bin/NAME-VERSION (default ~/.cache/imds-operator) with a
# stable symlink NAME beside it; the path of the binary is printed as the last line on stdout.
# Test infrastructure only (Go is never part of the product). `go install PACKAGE@VERSION` is used,
# so the command's own go.mod decides its dependencies (a module with replace directives in its
# go.mod cannot be built this way; write a wrapper module for it as build-control-plane.sh does).
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: $0 NAME PACKAGE VERSION [go build flags...]" >&2; exit 2; }
name="$1" package="$2" version="$3"
shift 3

cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
bin="$cache/bin"
target="$bin/$name-$version"
mkdir -p "$bin" "$cache/build"

if [ -x "$target" ]; then
  echo "[build-go-tool] $name $version cached" >&2
else
  start=$(date +%s)
  work="$cache/build/$name-$version"
  rm -rf "$work"
  mkdir -p "$work"
  CGO_ENABLED="${CGO_ENABLED:-0}" GOFLAGS="${GOFLAGS:--buildvcs=false}" GOBIN="$work" \
    go install -trimpath -ldflags "-s -w" "$@" "$package@$version"
  built="$work/$(basename "$package")"
  [ -x "$built" ] || { echo "[build-go-tool] $package@$version built no $(basename "$package")" >&2; exit 1; }
  mv "$built" "$target"
  elapsed=$(( $(date +%s) - start ))
  echo "[build-go-tool] $name $version built in ${elapsed}s" >&2
  echo "$name-$version ${elapsed}s" >>"$cache/build-times.txt"
fi
ln -sf "$name-$version" "$bin/$name"
echo "$target"
