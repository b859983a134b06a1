#!/usr/bin/env bash
# keel's one test command: installs the test tools when missing, then fmt, clippy and the tests.
# Extra arguments go to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
# Works without a terminal or stdin (CI runs it with CI=true and no stdin).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() {
    printf '\n==> %s\n' "$*"
}

# Debian packages the tests use: curl, and promtool (from the `prometheus` package) to check
# the metrics exposition format.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        step "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q </dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    else
        echo "warning: ${missing[*]} missing and cannot be installed here (needs root and apt-get);" \
            "tests that need them may fail or be skipped" >&2
    fi
fi

# kubernetes-validate (PyPI) checks deploy/kubernetes/ against the Kubernetes API schemas in
# tests/manifests.rs; installed when missing, skipped by that test if it cannot be.
if command -v python3 >/dev/null 2>&1 && ! python3 -m kubernetes_validate --version >/dev/null 2>&1; then
    step "installing kubernetes-validate (pip)"
    PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        kubernetes-validate </dev/null ||
        echo "warning: pip install kubernetes-validate failed; the manifest schema test will be skipped" >&2
fi

# TLS is rustls with ring only: neither aws-lc nor OpenSSL may enter the dependency tree
# (normal, dev and build dependencies alike). `cargo tree -i X` fails with "package ID
# specification `X` did not match any packages" when X is absent, which is the good case; any
# other failure of cargo tree is a real error and stops the script.
step "dependency tree: no aws-lc-sys, no openssl-sys"
for crate in aws-lc-sys aws-lc-rs openssl-sys openssl; do
    if out=$(cargo tree -e normal,dev,build --target all -i "$crate" 2>&1); then
        echo "error: $crate is in the dependency tree; keel's TLS must stay on rustls + ring:" >&2
        echo "$out" >&2
        exit 1
    elif grep -q "did not match any packages" <<<"$out"; then
        echo "ok: no $crate"
    else
        echo "error: cargo tree -i $crate failed:" >&2
        echo "$out" >&2
        exit 1
    fi
done

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test --all-targets --no-fail-fast $*"
cargo test --all-targets --no-fail-fast "$@"
