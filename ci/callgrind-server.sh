#!/usr/bin/env bash
# User-space instructions per message of a `msgr bench server` under a pipelined load,
# counted by callgrind: the server runs under valgrind, the client natively (so that
# the pipeline stays deep). Repeatable where the timed server CPU is not.
#
# A first client run of 2,000 messages per job warms the server up; its counters are
# then zeroed, a second run of COUNT messages per job is made, and the server's total
# is divided by the messages it echoed.
#
# Usage: ci/callgrind-server.sh [MSGR_BINARY] [SIZE] [DEPTH] [JOBS] [COUNT]
#        (defaults: target/release/msgr 64 128 1 200000)
# Environment: PORT (default 6871); CLIENT_ARGS, more client arguments (e.g. "--reply-size 0").
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

pipeline_args 200000 "$@"
callgrind_pipeline "${PORT:-6871}"
total=$(callgrind_total "$CG_DUMP")
python3 - "$size" "$depth" "$jobs" "$count" "$total" <<'EOF'
import sys
size, depth, jobs, count, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
msgs = count * jobs
print(f"callgrind server, {size} x depth {depth} x {jobs} job(s), {msgs} messages echoed after warm-up:")
print(f"  {total / msgs:,.0f} user-space instructions per message")
EOF
