#!/usr/bin/env bash
# Creates (once, cached) a Python virtualenv with moto's standalone server, the local stand-in
# for the EC2 and CloudWatch APIs used by the end-to-end tests and the demo.
# The venv lives under $IMDS_OPERATOR_CACHE (default ~/.cache/imds-operator), keyed by
# MOTO_VERSION from versions.env, and is reused while it works.
#
# moto (5.2) does not speak the Smithy RPC v2 CBOR protocol that current AWS SDKs (the Rust one
# included) use for CloudWatch, only CloudWatch's Query and JSON 1.0 protocols. So next to moto's
# own `moto_server` this installs `moto_server_imds`: the same server and command line, with a WSGI
# shim that translates RPC v2 CBOR requests to JSON 1.0 and the answers back, using botocore's
# service model to type timestamps, blobs and doubles. Use it instead of `moto_server`.
#
# Prints the path of that moto_server_imds executable on stdout as its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache="${IMDS_OPERATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/imds-operator}"
venv="$cache/venv-moto-$MOTO_VERSION"
server="$venv/bin/moto_server_imds"
# The shim's own dependency, pinned like moto.
CBOR2_VERSION=6.3.0

log() { echo "[setup-moto] $*" >&2; }

works() {
  [ -x "$venv/bin/moto_server" ] && [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" - "$MOTO_VERSION" "$CBOR2_VERSION" >/dev/null 2>&1 <<'EOF'
# Cheap (no heavy imports): the installed distributions that moto[server] and the shim need.
import sys
from importlib.metadata import version
for dist in ("boto3", "botocore", "flask", "flask-cors", "werkzeug"):
    version(dist)
sys.exit(0 if (version("moto"), version("cbor2")) == tuple(sys.argv[1:3]) else 1)
EOF
}

# Writes moto_server_imds (rewritten on every run, so changes to it need no new venv).
write_shim() {
  local tmp_shim="$server.tmp.$$"
  {
    echo "#!$venv/bin/python"
    cat <<'EOF'
"""moto_server with a Smithy RPC v2 CBOR -> AWS JSON 1.0 shim (written by hack/setup-moto.sh)."""
import base64
import datetime
import gzip
import io
import json
import re
import sys

import cbor2
import moto.server as moto_server

PATH = re.compile(r"/service/([^/]+)/operation/([^/]+)")
# RPC v2 service name -> botocore service, for typing responses.
SERVICES = {"GraniteServiceVersion20100801": "cloudwatch"}
UTC = datetime.timezone.utc
_models = {}


def operation_model(service, operation):
    name = SERVICES.get(service)
    if name is None:
        return None
    if name not in _models:
        import botocore.loaders
        import botocore.model

        data = botocore.loaders.Loader().load_service_model(name, "service-2")
        _models[name] = botocore.model.ServiceModel(data, service_name=name)
    try:
        return _models[name].operation_model(operation)
    except Exception:
        return None


def to_json(value):
    """CBOR-decoded request -> JSON 1.0 (timestamps as epoch seconds, blobs as base64)."""
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(value).decode()
    return value


def to_timestamp(value):
    if isinstance(value, (int, float)):
        return datetime.datetime.fromtimestamp(value, tz=UTC)
    if isinstance(value, str):
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return value


def to_cbor(value, shape):
    """JSON 1.0 response -> values typed by the botocore shape, for CBOR."""
    if shape is None or value is None:
        return value
    kind = shape.type_name
    if kind == "structure" and isinstance(value, dict):
        return {k: to_cbor(v, shape.members.get(k)) for k, v in value.items()}
    if kind == "list" and isinstance(value, list):
        return [to_cbor(v, shape.member) for v in value]
    if kind == "map" and isinstance(value, dict):
        return {k: to_cbor(v, shape.value) for k, v in value.items()}
    if kind == "timestamp":
        # Smithy RPC v2 CBOR: tag 1 around a float (aws-smithy-cbor rejects an integer, which
        # cbor2 writes for a datetime without microseconds).
        when = to_timestamp(value)
        if isinstance(when, datetime.datetime):
            return cbor2.CBORTag(1, when.timestamp())
        return when
    if kind == "blob" and isinstance(value, str):
        return base64.b64decode(value)
    if kind in ("double", "float") and isinstance(value, (int, float)):
        return float(value)
    if kind in ("integer", "long") and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_body(environ):
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    body = stream.read(int(length)) if length else stream.read()
    if environ.get("HTTP_CONTENT_ENCODING", "").lower() == "gzip":
        body = gzip.decompress(body)
    return body


class App(moto_server.DomainDispatcherApplication):
    def __call__(self, environ, start_response):
        match = PATH.fullmatch(environ.get("PATH_INFO", ""))
        if not match or environ.get("HTTP_SMITHY_PROTOCOL", "").lower() != "rpc-v2-cbor":
            return super().__call__(environ, start_response)
        service, operation = match.groups()
        body = read_body(environ)
        request = cbor2.loads(body) if body else {}
        payload = json.dumps(to_json(request)).encode()
        inner = dict(environ)
        for key in ("HTTP_CONTENT_ENCODING", "HTTP_SMITHY_PROTOCOL", "HTTP_ACCEPT"):
            inner.pop(key, None)
        inner.update(
            {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": "/",
                "RAW_URI": "/",
                "REQUEST_URI": "/",
                "QUERY_STRING": "",
                "CONTENT_TYPE": "application/x-amz-json-1.0",
                "CONTENT_LENGTH": str(len(payload)),
                "HTTP_X_AMZ_TARGET": f"{service}.{operation}",
                "wsgi.input": io.BytesIO(payload),
            }
        )
        captured = {}

        def capture(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        chunks = super().__call__(inner, capture)
        try:
            raw = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        status = captured["status"]
        try:
            answer = json.loads(raw) if raw.strip() else {}
        except ValueError:
            answer = {"__type": "InternalFailure", "message": raw.decode(errors="replace")}
        if status.startswith("2"):
            model = operation_model(service, operation)
            answer = to_cbor(answer, model.output_shape if model else None)
            if answer is None:
                answer = {}
        out = cbor2.dumps(answer, datetime_as_timestamp=True, timezone=UTC)
        headers = [
            (k, v)
            for k, v in captured["headers"]
            if k.lower() not in ("content-type", "content-length", "content-encoding")
        ]
        headers += [
            ("Content-Type", "application/cbor"),
            ("Content-Length", str(len(out))),
            ("smithy-protocol", "rpc-v2-cbor"),
        ]
        start_response(status, headers)
        return [out]


moto_server.DomainDispatcherApplication = App

if __name__ == "__main__":
    sys.argv[0] = sys.argv[0].removesuffix(".exe")
    sys.exit(moto_server.main())
EOF
  } >"$tmp_shim"
  chmod +x "$tmp_shim"
  if cmp -s "$tmp_shim" "$server"; then rm -f "$tmp_shim"; else mv -f "$tmp_shim" "$server"; fi
}

if works; then
  write_shim
  log "moto $MOTO_VERSION cached in $venv"
  echo "$server"
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

# Build next to the final location and move into place, so that a concurrent or interrupted run
# never leaves a half-made venv behind under the final name.
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.venv-moto-$MOTO_VERSION.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "creating venv for moto $MOTO_VERSION with $("$python" --version 2>&1)"
start=$(date +%s)
"$python" -m venv "$tmp/venv"
# The venv is built in a temporary path, so install into it with its python and then fix up the
# scripts' shebangs once it is moved.
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
"$tmp/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  "moto[server]==$MOTO_VERSION" "cbor2==$CBOR2_VERSION" >&2

rm -rf "$venv"
mv "$tmp/venv" "$venv"
# Scripts were written with the temporary interpreter path in their shebang.
grep -rlI --null "^#!$tmp/venv/bin/" "$venv/bin" 2>/dev/null |
  xargs -0 -r sed -i "1s|^#!$tmp/venv/bin/|#!$venv/bin/|"
# Same for activate scripts (not used by us, but keep the venv usable by people).
grep -rlI --null "$tmp/venv" "$venv/bin" 2>/dev/null | xargs -0 -r sed -i "s|$tmp/venv|$venv|g"
end=$(date +%s)
echo "moto-$MOTO_VERSION $((end - start))s" >>"$cache/build-times.txt"

works || { log "moto venv at $venv does not work after install"; exit 1; }
write_shim
log "moto $MOTO_VERSION installed in $venv in $((end - start))s"
echo "$server"
