#!/usr/bin/env bash
# The main job: builds msgr and runs `msgr bench` on the embedded default stack
# (async+posix on loopback, a `msgr bench server` child as the server) with the raw
# TCP baseline in the same run, then the serve/ping pair across two processes.
# Installs what it needs. BENCH_ARGS adds or overrides msgr bench options.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
need_rust
apt_install gcc libc6-dev pkg-config python3
cargo build --release --bin msgr
# shellcheck disable=SC2086
target/release/msgr bench --size 64,4k,64k,1m --duration "${DURATION:-3}" ${BENCH_ARGS:-}
bash ci/ping-pair.sh target/release/msgr "${COUNT:-10000}"
