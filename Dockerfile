# syntax=docker/dockerfile:1

# imds-operator container image, for users with Docker (BuildKit):
#
#   docker build -t ghcr.io/imds-operator/imds-operator:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) \
#     --build-arg SOURCE_DATE_EPOCH=$(git log -1 --format=%ct) .
#
# It describes the same image as `make image` (hack/image.sh, daemonless, which CI builds and
# runs): one layer on an empty base with the release binary (glibc linked statically, so no
# loader and no shared libraries), the CA bundle for the AWS endpoints (the API server's CA
# comes from the service account), /etc/passwd and /etc/group with root and nonroot (65532), /etc/nsswitch.conf, an
# empty /tmp and /home/nonroot; user 65532:65532, no shell, no package manager. TLS is rustls, so
# there is no OpenSSL. tests/e2e/image.rs checks that USER, ENTRYPOINT and CMD below match.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cached target directory because cache mounts are not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    triple="$(uname -m)-unknown-linux-gnu" \
 && RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target "$triple" --bin imds-operator \
 && install -D -m 0755 "target/$triple/release/imds-operator" /out/usr/local/bin/imds-operator

# The rest of the root filesystem, the same files as hack/image.sh writes.
FROM debian:bookworm-slim AS rootfs
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && mkdir -p /out/etc/ssl/certs /out/tmp /out/home/nonroot \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/ \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >/out/etc/passwd \
 && printf 'root:x:0:\nnonroot:x:65532:\n' >/out/etc/group \
 && printf 'passwd: files\ngroup: files\nhosts: files dns\n' >/out/etc/nsswitch.conf \
 && chmod 1777 /out/tmp && chmod 0700 /out/home/nonroot && chown 65532:65532 /out/home/nonroot

FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=https://github.com/imds-operator/imds-operator
LABEL org.opencontainers.image.title="imds-operator" \
      org.opencontainers.image.description="Keeps the EC2 Instance Metadata Service options of Kubernetes nodes as declared by InstanceMetadataPolicy objects" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=rootfs /out/ /
COPY --from=build /out/ /
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/imds-operator"]
CMD ["run"]
