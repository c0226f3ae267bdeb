# syntax=docker/dockerfile:1
# homeport container image: a release build on Debian bookworm, copied into distroless cc (glibc
# and libgcc only, no shell, no package manager), running as the distroless `nonroot` user
# (uid/gid 65532), which the Helm chart's securityContext expects.
#
#   docker build -t ghcr.io/homeport/homeport:0.1.0 .
#
# The binary links only libc, libm and libgcc_s (no OpenSSL: TLS-free PostgreSQL and Redis
# clients, pure-Rust JWT crypto), all present in cc-debian12.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the crate registry and the target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && install -m 0755 target/release/homeport /usr/local/bin/homeport

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /usr/local/bin/homeport /usr/local/bin/homeport
USER 65532:65532
# 7400: HTTP data API. 7401: PostgreSQL wire protocol. 7402: ops (/healthz, /readyz, /metrics).
# The chart keeps 7400 and 7401 on loopback and puts only 7402 on the pod IP.
EXPOSE 7400 7401 7402
ENTRYPOINT ["homeport"]
CMD ["serve", "--config", "/etc/homeport/homeport.toml"]
