#!/usr/bin/env bash
# Atomic read-modify-write instructions (lock-prefixed, or xchg with memory) per message
# of a pipelined `msgr bench`, counted under callgrind: the server's (client native),
# then the client's (server native). Each costs about 20 cycles on this machine's cores
# whatever the instruction count says; the count is repeatable where timings are not.
#
# The instructions each executed instruction address is, come from `objdump -d` of the
# binary and the libraries it ran in; callgrind's per-instruction counts say how often
# each ran (ci/callgrind_atomics.py). The top sites (by function) are listed.
#
# Usage: ci/callgrind-atomics.sh [MSGR_BINARY] [SIZE] [DEPTH] [JOBS] [COUNT]
#        (defaults: target/release/msgr 64 128 1 100000)
# Environment: PORT (default 6872).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

pipeline_args 100000 "$@"
port=${PORT:-6872}
command -v objdump >/dev/null || apt_install binutils
msgs=$((count * jobs))

CG_OPTS=--dump-instr=yes callgrind_pipeline "$port"
echo "callgrind, $size x depth $depth x $jobs job(s), $msgs messages:"
python3 ci/callgrind_atomics.py "$CG_DUMP" "$msgs" server
callgrind_cleanup
trap - EXIT

# The client under callgrind, against a native server (its own work dominates).
work=$(mktemp -d)
trap 'kill "${SERVER_PID:-}" 2>/dev/null; rm -rf "$work"' EXIT
start_server "$work/srv.log" "$bin" bench server --bind "127.0.0.1:$((port + 1))"
valgrind -q --tool=callgrind --dump-instr=yes --callgrind-out-file="$work/cli.out" "$bin" bench client \
  --connect "127.0.0.1:$((port + 1))" --size "$size" --depth "$depth" --jobs "$jobs" --count "$count" \
  --warmup 0 --baseline none >"$work/cli.log" 2>&1 || { cat "$work/cli.log"; exit 1; }
python3 ci/callgrind_atomics.py "$work/cli.out" "$msgs" client
