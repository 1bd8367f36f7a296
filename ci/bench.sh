#!/usr/bin/env bash
# The main job: builds msgr and measures MPing round trips between two processes on
# loopback over the embedded default stack (async+posix). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
need_rust
apt_install gcc libc6-dev pkg-config python3
cargo build --release --bin msgr
bash ci/ping-pair.sh target/release/msgr "${COUNT:-10000}"
