#!/usr/bin/env bash
# `msgr bench` on loopback in a network namespace of its own, with the TCP congestion
# control named: to tell what msgr costs from what the kernel's congestion control costs.
#
#   bash ci/bench-cc.sh CC [BIN] -- [msgr bench arguments...]
#   e.g. bash ci/bench-cc.sh reno target/release/msgr -- --size 4k --depth 512 --jobs 2
#
# Why: BBR (the default on some hosts) paces in the kernel on a device without the fq
# qdisc, and loopback has none: a high-resolution timer per burst, its interrupt and the
# softirq that sends the rest. On a 2-vCPU VM that doubled the kernel's time per 4 KiB
# message against reno, for msgr and raw TCP alike (docs/BENCHMARKS.md, twentieth
# session). The namespace is created here and deleted on exit; only its own loopback
# and its own congestion control change, nothing of the host's. Needs root and iproute2.
# CC must be one the host allows namespaces to choose
# (/proc/sys/net/ipv4/tcp_allowed_congestion_control).
set -euo pipefail
cd "$(dirname "$0")/.."
CC=${1:?usage: ci/bench-cc.sh CC [BIN] -- [msgr bench arguments...]}
shift
[[ $CC =~ ^[a-z0-9_]+$ ]] || { echo "ci/bench-cc.sh: $CC is not a congestion control's name" >&2; exit 2; }
BIN=target/release/msgr
if [ $# -gt 0 ] && [ "$1" != "--" ]; then BIN=$1; shift; fi
[ "${1:-}" = "--" ] && shift
[ -x "$BIN" ] || { echo "ci/bench-cc.sh: no msgr binary at $BIN (cargo build --release)" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "ci/bench-cc.sh: needs root (ip netns)" >&2; exit 2; }
command -v ip >/dev/null || { echo "ci/bench-cc.sh: ip not found (apt install iproute2)" >&2; exit 2; }
ns=msgr-cc-$$
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip netns exec "$ns" ip link set lo up
if ! printf '%s\n' "$CC" | ip netns exec "$ns" tee /proc/sys/net/ipv4/tcp_congestion_control >/dev/null 2>&1; then
  echo "ci/bench-cc.sh: congestion control $CC cannot be chosen in a namespace here;" \
    "allowed: $(cat /proc/sys/net/ipv4/tcp_allowed_congestion_control)" >&2
  exit 2
fi
ip netns exec "$ns" "$BIN" bench "$@"
