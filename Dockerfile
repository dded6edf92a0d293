# syntax=docker/dockerfile:1
#
# bankauth's container image: built with the project's Rust toolchain, run on
# distroless (glibc, CA certificates, no shell, no package manager) as a
# numeric non-root user. The Helm chart in helm/bankauth runs this image.
#
#   docker build -t registry.example.com/platform/bankauth:0.1.0 .
#
# Not built in CI: the CI machine reaches package registries only, not a
# container registry, so it cannot pull the base images below.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# What `cargo build` reads: the manifest and lock file, build.rs and the
# proto it compiles (with protox, so no protoc), the sources, and benches/
# because Cargo.toml declares a bench target there. --no-default-features
# leaves out the built-in sandbox provider and the `demo` subcommand (the
# feature "sandbox"): the image carries no fake identity provider.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto ./proto
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --bin bankauth \
    && install -D -m 0755 target/release/bankauth /out/bankauth

# The cc variant carries glibc and libgcc, which the binary links, and the
# CA certificates bankauth verifies providers' and Redis' TLS against.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bankauth /usr/local/bin/bankauth
# distroless' "nonroot" user; the chart's securityContext runs as the same ids.
USER 65532:65532
EXPOSE 50051 9090
# The chart renders /etc/bankauth/config/bankauth.toml from its values.
ENTRYPOINT ["/usr/local/bin/bankauth"]
CMD ["serve", "--config", "/etc/bankauth/config/bankauth.toml"]
# Outside Kubernetes (docker run, compose): the binary asks its own
# grpc.health.v1 service, in plaintext: with server.tls, set
# server.health_listen_addr (the chart uses 50052) and override this check
# to ask that port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/bankauth", "health", "--addr", "127.0.0.1:50051", "--service", "liveness"]
