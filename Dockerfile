# syntax=docker/dockerfile:1.7
#
# One image, one binary: /usr/local/bin/mesh. Build (BuildKit is required for
# the cache mounts):
#   docker build -t mesh:0.1.0 .
# The cargo registry and target/ live in BuildKit cache mounts, so a rebuild
# after a source change reuses the compiled dependencies without a stub-crate
# layer that would have to mirror the workspace layout.

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Protos compile with protox (pure Rust): no protoc and no extra packages.
COPY . .
RUN --mount=type=cache,id=mesh-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=mesh-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=mesh-target,target=/src/target \
    cargo build --release --locked --bin mesh \
    && install -D -m 0555 target/release/mesh /out/mesh

# glibc + libgcc + CA certificates, no shell, uid/gid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mesh" \
      org.opencontainers.image.description="Retail ERP backend: gRPC service mesh, one binary with many targets (mesh serve <service>)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /out/mesh /usr/local/bin/mesh
USER 65532:65532
# edge (HTTP/REST + gRPC), admin (/metrics, /healthz, /readyz), gRPC services.
EXPOSE 8080 9090 50051-50062
ENTRYPOINT ["/usr/local/bin/mesh"]
CMD ["serve", "all"]
