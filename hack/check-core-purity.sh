#!/usr/bin/env bash
# The pure core (crates/imds-core) must not be able to do IO: no async runtime, no network or
# HTTP stack, no AWS SDK, no Kubernetes client. Its dependency tree is the proof; this fails
# when a crate that does IO enters it (directly or through another dependency).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
forbidden='^(tokio|tokio-.*|mio|hyper|hyper-.*|reqwest|h2|tower|tower-.*|axum|rustls|aws-.*|kube|kube-client|kube-runtime|kube-lease-manager|socket2|futures-.*|async-.*)$'
deps=$(cargo tree --locked -p imds-core -e normal --prefix none | sed 's/ .*//' | sort -u)
bad=$(grep -E "$forbidden" <<<"$deps" || true)
if [[ -n "$bad" ]]; then
    echo "imds-core depends on crates that do IO: $(tr '\n' ' ' <<<"$bad")" >&2
    exit 1
fi
# And no module of the core names them (a path dependency could sneak in through a re-export).
if grep -rnE '^[^/]*\b(tokio|aws_sdk_[a-z0-9]+|kube_client|kube_runtime|kube::(Client|Api|api|runtime))\b' crates/imds-core/src; then
    echo "imds-core source names an IO crate" >&2
    exit 1
fi
echo "imds-core is pure: $(wc -l <<<"$deps") crates, none does IO"
