#!/usr/bin/env bash
# Runs every test: formatting, lints, unit/integration/doc tests, and the two-process
# CLI check. Installs what it needs on a fresh Debian 12 machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

need_rust
apt_install gcc libc6-dev pkg-config python3 ca-certificates

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
log "doc tests"
cargo test --workspace --doc

log "two processes on loopback: msgr serve + msgr ping"
cargo build --release --bin msgr
bash ci/ping-pair.sh target/release/msgr
log "all tests passed"
