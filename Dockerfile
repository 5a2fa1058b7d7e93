# syntax=docker/dockerfile:1
# The rolomesh image: one static binary (/rolomesh) on an empty base. It serves every role: the operator runs it as
# user 65532 (the default here); the agent DaemonSet the operator creates sets runAsUser 0 and NET_ADMIN itself.
#
#   docker build -t rolomesh/rolomesh:0.1.0 .
#
# Without a container engine, tests/image-build.sh builds the same image (an OCI layout) with cargo and umoci.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-gcc compiles the C parts of dependencies (ring) for the musl target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools \
    && rm -rf /var/lib/apt/lists/* \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
ENV CC_x86_64_unknown_linux_musl=musl-gcc \
    CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl --bin rolomesh \
    && cp target/x86_64-unknown-linux-musl/release/rolomesh /rolomesh \
    && /rolomesh --version

FROM scratch
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="rolomesh" \
      org.opencontainers.image.description="Encrypted L3 mesh VPN for linking Kubernetes clusters and hosts: rolodex, agent and operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /rolomesh /rolomesh
USER 65532:65532
ENTRYPOINT ["/rolomesh"]
