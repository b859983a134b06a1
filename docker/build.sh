#!/usr/bin/env bash
# Builds the keel image without pulling anything: keel is compiled on this machine as a static
# binary (glibc, crt-static), then docker/Dockerfile (FROM scratch) packs it with the default
# config. Machines with a registry can use docker/Dockerfile.builder instead; same layout.
#
#     docker/build.sh [TAG]          # default tag: keel:local (or $KEEL_IMAGE)
#
# Needs the x86_64-unknown-linux-gnu Rust target (the default one on x86_64 Linux) and a Docker
# daemon. The static build goes to target/static so it does not disturb normal builds.
# Prints the image size on the last line: "keel image TAG: N bytes".
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

tag=${1:-${KEEL_IMAGE:-keel:local}}
target=x86_64-unknown-linux-gnu
target_dir=${KEEL_STATIC_TARGET_DIR:-target/static}

# crt-static links glibc statically; since glibc 2.34 its `files` and `dns` name-service
# backends live inside libc, so names such as compose services still resolve in an empty image
# (the deploy test checks that). CARGO_ENCODED_RUSTFLAGS would take precedence: drop it.
unset CARGO_ENCODED_RUSTFLAGS
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --quiet --target "$target" --target-dir "$target_dir" --bin keel

binary="$target_dir/$target/release/keel"

context=$(mktemp -d "${TMPDIR:-/tmp}/keel-image.XXXXXX")
trap 'rm -rf "$context"' EXIT
cp "$binary" "$context/keel"
if command -v strip >/dev/null 2>&1; then
    strip "$context/keel"
fi
cp docker/keel.toml "$context/keel.toml"
chmod 0755 "$context/keel"
chmod 0644 "$context/keel.toml"

# The legacy builder is enough for a one-stage scratch image (and works without buildx).
DOCKER_BUILDKIT=${DOCKER_BUILDKIT:-0} docker build --quiet -t "$tag" -f docker/Dockerfile "$context" >/dev/null

size=$(docker image inspect -f '{{.Size}}' "$tag")
echo "keel image $tag: $size bytes"
