#!/usr/bin/env bash
# Builds the imds-operator container image without a daemon (`make image`), as an OCI image
# layout: one layer on an empty base ("FROM scratch") with
#   /usr/local/bin/imds-operator        the release binary, glibc statically linked (no loader,
#                                       no shared libraries), the entrypoint
#   /etc/ssl/certs/ca-certificates.crt  the CA bundle (AWS endpoints; the API server's CA comes
#                                       from the service account)
#   /etc/passwd, /etc/group             root and nonroot (65532), as distroless has them
#   /etc/nsswitch.conf                  hosts: files dns (glibc's name lookups, static too)
#   /tmp, /home/nonroot                 empty
# user 65532:65532, no shell, OCI labels (source, version, revision, created, ...).
# The Dockerfile describes the same image for users with Docker.
#
# Reproducible: every timestamp (file mtimes, the config's `created`, the history) is
# SOURCE_DATE_EPOCH, by default the commit's time; the layer is written by a fixed tar writer
# (sorted names, numeric owners, no atime/ctime), so the same commit and the same binary give
# the same image digest (tests/e2e/image.rs builds twice and compares).
#
#   hack/image.sh                        # -> dist/image (OCI layout, tag = crate version)
# Environment:
#   IMAGE_OUT       layout directory to (re)write (default dist/image)
#   IMAGE_TAG       tag inside the layout (default the crate version)
#   IMAGE_BINARY    use this binary instead of building it (must be statically linked)
#   IMAGE_SOURCE    org.opencontainers.image.source (default https://github.com/imds-operator/imds-operator)
#   SOURCE_DATE_EPOCH  fixed timestamp (default: `git log -1 --format=%ct`)
# The last line on stdout is the manifest digest (sha256:...); `<IMAGE_OUT>.digest` holds it too.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

need() { command -v "$1" >/dev/null || { echo "[image] $1 is required (apt-get install -y $2)" >&2; exit 1; }; }
need umoci umoci
need python3 python3
need strip binutils
need readelf binutils
[ -r /etc/ssl/certs/ca-certificates.crt ] || { echo "[image] /etc/ssl/certs/ca-certificates.crt missing (apt-get install -y ca-certificates)" >&2; exit 1; }

version=$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  echo "[image] warning: the work tree has uncommitted changes; revision label $revision does not describe them" >&2
fi
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
out="${IMAGE_OUT:-dist/image}"
tag="${IMAGE_TAG:-$version}"
source_url="${IMAGE_SOURCE:-https://github.com/imds-operator/imds-operator}"

case "$(uname -m)" in
  x86_64) triple=x86_64-unknown-linux-gnu arch=amd64 ;;
  aarch64) triple=aarch64-unknown-linux-gnu arch=arm64 ;;
  *) echo "[image] unsupported machine $(uname -m)" >&2; exit 1 ;;
esac

if [ -n "${IMAGE_BINARY:-}" ]; then
  binary="$IMAGE_BINARY"
else
  # glibc linked statically (the musl target is not installed here); --target keeps build
  # scripts and proc macros dynamic, and gives the static build its own directory.
  start=$(date +%s)
  RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" --bin imds-operator >&2
  echo "[image] release binary ready in $(( $(date +%s) - start ))s" >&2
  target_dir="${CARGO_TARGET_DIR:-target}"
  binary="$target_dir/$triple/release/imds-operator"
fi
[ -x "$binary" ] || { echo "[image] no binary at $binary" >&2; exit 1; }
# Static: no program interpreter (ld.so) and no NEEDED shared libraries.
if readelf -lW "$binary" | grep -q 'Requesting program interpreter' || readelf -dW "$binary" | grep -q NEEDED; then
  echo "[image] $binary is dynamically linked; the image has no shared libraries" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Symbols stripped (the 49 MB release binary becomes 33 MB; 13 MB compressed); deterministic.
strip --strip-all -o "$work/imds-operator" "$binary"
binary="$work/imds-operator"
# The layer, written by Python's tarfile with everything fixed.
python3 - "$work/layer.tar" "$binary" "$epoch" <<'PY'
import io, sys, tarfile
out, binary, epoch = sys.argv[1], sys.argv[2], int(sys.argv[3])
passwd = b"root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
group = b"root:x:0:\nnonroot:x:65532:\n"
# Name lookups: /etc/hosts (the kubelet mounts one into every pod), then DNS.
nsswitch = b"passwd: files\ngroup: files\nhosts: files dns\n"
entries = [  # (path, mode, uid, content or None for a directory, file to read)
    ("etc", 0o755, 0, None, None),
    ("etc/group", 0o644, 0, group, None),
    ("etc/nsswitch.conf", 0o644, 0, nsswitch, None),
    ("etc/passwd", 0o644, 0, passwd, None),
    ("etc/ssl", 0o755, 0, None, None),
    ("etc/ssl/certs", 0o755, 0, None, None),
    ("etc/ssl/certs/ca-certificates.crt", 0o644, 0, None, "/etc/ssl/certs/ca-certificates.crt"),
    ("home", 0o755, 0, None, None),
    ("home/nonroot", 0o700, 65532, None, None),
    ("tmp", 0o1777, 0, None, None),
    ("usr", 0o755, 0, None, None),
    ("usr/local", 0o755, 0, None, None),
    ("usr/local/bin", 0o755, 0, None, None),
    ("usr/local/bin/imds-operator", 0o755, 0, None, binary),
]
with tarfile.open(out, "w", format=tarfile.GNU_FORMAT) as tar:
    for path, mode, uid, content, source in sorted(entries):
        info = tarfile.TarInfo(path)
        info.mode, info.uid, info.gid, info.mtime = mode, uid, uid, epoch
        info.uname = info.gname = ""
        if content is None and source is None:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
            continue
        data = content if content is not None else open(source, "rb").read()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
PY

labels=(
  "org.opencontainers.image.title=imds-operator"
  "org.opencontainers.image.description=Keeps the EC2 Instance Metadata Service options of Kubernetes nodes as declared by InstanceMetadataPolicy objects"
  "org.opencontainers.image.licenses=Apache-2.0"
  "org.opencontainers.image.source=$source_url"
  "org.opencontainers.image.version=$version"
  "org.opencontainers.image.revision=$revision"
  "org.opencontainers.image.created=$created"
)
label_args=() annotation_args=()
for l in "${labels[@]}"; do
  label_args+=(--config.label "$l")
  annotation_args+=(--manifest.annotation "$l")
done

rm -rf "$out"
mkdir -p "$(dirname "$out")"
umoci init --layout "$out"
umoci new --image "$out:$tag"
umoci raw add-layer --image "$out:$tag" \
  --history.created "$created" --history.created_by "hack/image.sh: the imds-operator binary, CA certificates, passwd/group" \
  "$work/layer.tar"
umoci config --image "$out:$tag" --no-history \
  --created "$created" --author "imds-operator" \
  --os linux --architecture "$arch" \
  --config.user 65532:65532 \
  --config.workingdir / \
  --config.env "PATH=/usr/local/bin" \
  --config.env "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
  --config.entrypoint /usr/local/bin/imds-operator \
  --config.cmd run \
  "${label_args[@]}" "${annotation_args[@]}"
umoci gc --layout "$out"

digest=$(python3 - "$out" "$tag" <<'PY'
import json, sys
index = json.load(open(sys.argv[1] + "/index.json"))
for m in index["manifests"]:
    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == sys.argv[2]:
        print(m["digest"])
        break
else:
    sys.exit("tag %s not in %s/index.json" % (sys.argv[2], sys.argv[1]))
PY
)
echo "$digest" >"$out.digest"
size=$(du -sb "$out/blobs" | cut -f1)
echo "[image] oci:$out:$tag $digest ($size bytes of blobs, created $created, revision $revision)" >&2
echo "$digest"
