# keel image built in one step, for machines that can pull base images:
#
#     docker build -f docker/Dockerfile.builder -t keel:latest .     # from the repository root
#
# The runtime stage is the same as docker/Dockerfile (a test keeps the two in step): the only
# difference is where the static binary comes from. Machines without a registry use
# docker/build.sh, which compiles on the host and builds docker/Dockerfile.

# ---- builder: a static x86_64 glibc binary (crt-static), no OpenSSL involved ----------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
ENV RUSTFLAGS="-C target-feature=+crt-static"
RUN cargo build --release --locked --target x86_64-unknown-linux-gnu \
 && strip target/x86_64-unknown-linux-gnu/release/keel \
 && mkdir /out \
 && cp target/x86_64-unknown-linux-gnu/release/keel /out/keel
COPY docker/keel.toml /out/keel.toml

# ---- runtime: identical to docker/Dockerfile from here on --------------------------------------
FROM scratch

COPY --from=builder /out/keel /keel
COPY --from=builder /out/keel.toml /etc/keel/keel.toml

# Any numeric user works; no /etc/passwd in an empty image. 65532 is the usual "nonroot".
USER 65532:65532

# The default config's inbound listener, admin and metrics (docker/keel.toml). EXPOSE only
# documents them; publish what you need with -p or the orchestrator.
EXPOSE 15006 9900 9901

ENTRYPOINT ["/keel"]
CMD ["run", "--config", "/etc/keel/keel.toml"]
