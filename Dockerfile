# syntax=docker/dockerfile:1

# imds-operator container image.
#
#   docker build -t ghcr.io/imds-operator/imds-operator:0.1.0 .
#
# Stage 1 builds the release binary; stage 2 is distroless "cc" (glibc + libgcc, no shell, no
# package manager) running as the unprivileged "nonroot" user. TLS is rustls (ring / aws-lc,
# statically linked), so the image needs no OpenSSL; the distroless base ships the CA bundle in
# /etc/ssl/certs for the AWS endpoints (the API server's CA comes from the service account).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out of
# the cached target directory because cache mounts are not part of the image layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin imds-operator \
 && install -D -m 0755 target/release/imds-operator /out/imds-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="imds-operator" \
      org.opencontainers.image.description="Keeps the EC2 Instance Metadata Service options of Kubernetes nodes as declared by InstanceMetadataPolicy objects" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/imds-operator /usr/local/bin/imds-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/imds-operator"]
CMD ["run"]
