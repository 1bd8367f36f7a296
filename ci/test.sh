#!/usr/bin/env bash
# Runs every test: formatting, lints, unit/integration/doc tests, and the two-process
# CLI check. Installs what it needs on a fresh Debian 12 machine (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

need_rust
apt_install gcc libc6-dev pkg-config python3 ca-certificates ceph-mon ceph-common tcpdump \
  libibverbs-dev librdmacm-dev libclang-dev clang dpdk dpdk-dev libdpdk-dev iproute2 ceph-osd

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy (default features, then with the rdma and dpdk stacks and msgr::tokio)"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features rdma,dpdk,msgr/tokio -- -D warnings
log "the msgr crate with no stack feature still builds (every ms_type is then NotBuilt)"
cargo check -p msgr --no-default-features
log "cargo doc (every stack, warnings are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --features rdma,dpdk,msgr/tokio

log "tests"
log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast 2>&1 | tee "$log_dir/unit.log"
else
  cargo test --workspace --no-fail-fast 2>&1 | tee "$log_dir/unit.log"
fi
log "doc tests"
cargo test --workspace --doc 2>&1 | tee "$log_dir/doc.log"
log "tests of the async API (msgr::tokio, feature tokio)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p msgr --features tokio --no-fail-fast 2>&1 | tee "$log_dir/tokio.log"
else
  cargo test -p msgr --features tokio --no-fail-fast 2>&1 | tee "$log_dir/tokio.log"
fi
cargo test -p msgr --features tokio --doc 2>&1 | tee -a "$log_dir/tokio.log"

log "two processes on loopback: msgr serve + msgr ping"
cargo build --release --bin msgr
bash ci/ping-pair.sh target/release/msgr
bash ci/fault-runs.sh target/release/msgr
log "msgr bench: a short verified run with the raw baseline, JSON checked"
target/release/msgr bench --duration 2 --warmup 0.2 --size 64,64k --verify --json "$log_dir/bench.json"
python3 - "$log_dir/bench.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
need = ["transport", "ms_type", "size", "depth", "msgs", "msgs_per_sec", "mb_per_sec", "rtt_us_min",
        "rtt_us_p50", "rtt_us_p90", "rtt_us_p99", "rtt_us_p999", "rtt_us_max",
        "cpu_ns_per_msg_client", "cpu_ns_per_msg_server", "copied_per_byte_client_rx", "copied_per_byte_client_tx",
        "copied_per_byte_server_rx", "copied_per_byte_server_tx", "errors"]
rows = doc["rows"]
assert {r["transport"] for r in rows} == {"msgr", "raw"}, rows
for r in rows:
    missing = [k for k in need if k not in r]
    assert not missing, missing
    assert r["msgs"] > 0 and r["errors"] == 0, r
    if r["transport"] == "msgr":
        # Copies are counted on both ends: numbers, not the null of "unknown".
        assert all(isinstance(r[k], (int, float)) for k in need if k.startswith("copied_")), r
print("bench json ok:", len(rows), "rows")
PY
log "examples: facade/examples built and run (echo_daemon answering msgr ping, mon_client against ceph-mon)"
bash ci/examples.sh
log "wire check: msgr mon traffic to a real ceph-mon, decoded independently"
bash ci/wire-check.sh target/release/msgr
log "RDMA: device tests, messenger suite, CLI and benchmarks inside the soft-RoCE VM"
bash ci/rdma-vm-tests.sh
log "fuzz: frame decoder, server handshake, client handshake, cephx replies, ${FUZZ_SECS:-60} s each"
bash ci/fuzz.sh
log "DPDK: net_ring, net_tap (both directions, with and without hugepages), CLI, ceph-mon, benchmarks"
bash ci/dpdk-tests.sh
# One closing line for the whole run: nextest's summary or cargo test's result lines,
# plus the doc tests (their last per-crate line may well be "0 passed").
passed=$(cat "$log_dir/unit.log" "$log_dir/doc.log" "$log_dir/tokio.log" | sed -n \
  -e 's/.* \([0-9][0-9]*\) tests run: \([0-9][0-9]*\) passed.*/\2/p' \
  -e 's/^test result: ok\. \([0-9][0-9]*\) passed.*/\1/p' | awk '{s+=$1} END {print s+0}')
log "all tests passed"
echo "$passed passed, 0 failed"
