# syntax=docker/dockerfile:1
# The consumer-operator image: the release binary on distroless/cc, run as the non-root user 65532.
#
#   docker build -t consumer-operator:dev .
#   docker buildx build --platform linux/amd64,linux/arm64 -t <registry>/consumer-operator:<tag> .
#
# The binary is what `cargo build --release --locked --bin consumer-operator` makes on a Debian 13
# (glibc 2.41) machine; nothing else goes into the image. The TLS stack is rustls with ring, so
# no OpenSSL is needed at build or run time.

ARG RUST_VERSION=1.95

# Trixie (the default of rust:1.95), to link against the glibc of the distroless Debian 13 runtime.
FROM rust:${RUST_VERSION}-trixie AS builder
WORKDIR /src

# Only what the build reads, so that editing tests, docs or deploy/ does not rebuild.
COPY Cargo.toml Cargo.lock ./
COPY src ./src

# The cache mounts keep the registry and target/ between builds; the binary is copied out of the
# cached target/ within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin consumer-operator \
 && install -D -m 0755 target/release/consumer-operator /out/consumer-operator

# distroless/cc: glibc, libgcc and CA certificates, no shell, no package manager.
FROM gcr.io/distroless/cc-debian13:nonroot
LABEL org.opencontainers.image.title="consumer-operator" \
      org.opencontainers.image.description="Onboards STOA API consumers into Keycloak" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/consumer-operator /usr/local/bin/consumer-operator
# 65532 is distroless' "nonroot"; numeric, so that runAsNonRoot can verify it.
USER 65532:65532
# Metrics (/metrics) and health (/healthz, /readyz).
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/consumer-operator"]
CMD ["run"]
