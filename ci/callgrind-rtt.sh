#!/usr/bin/env bash
# User-space instructions per msgr round trip, counted by callgrind: repeatable on a
# noisy machine where timings are not.
#
# A `msgr bench server` and two `msgr bench client --count N` runs (N1, then N2
# messages at depth 1) all run under callgrind. The server's counters are dumped before
# and after each client run; per round trip = (second run − first run) / (N2 − N1) on
# each side, so start-up, connection set-up and teardown cancel out.
#
# The second line splits out the data crc's kernel (`proto::crc::long_crc`, for 512
# bytes or more): valgrind does not emulate AVX-512, so there it runs msgr's three-chain
# kernel (the one for x86 CPUs without AVX-512 VPCLMULQDQ, about 770 instructions per
# 4 KiB), where this host's CPU runs crc-fast's AVX-512 kernel (about 470).
#
# Usage: ci/callgrind-rtt.sh [MSGR_BINARY] [SIZE]   (default target/release/msgr, 4k)
# Environment: N1 (default 1000), N2 (default 6000), PORT (default 6870).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

bin=${1:-target/release/msgr}
size=${2:-4k}
n1=${N1:-1000}
n2=${N2:-6000}
port=${PORT:-6870}
callgrind_server "$bin" "$port"

client_run() {
  local n=$1 out="$CG_WORK/cli.$1"
  valgrind -q --tool=callgrind --callgrind-out-file="$out" "$bin" bench client \
    --connect "127.0.0.1:$port" --size "$size" --depth 1 --count "$n" --warmup 0 --baseline none \
    >"$CG_WORK/cli.$n.log" 2>&1 || { cat "$CG_WORK/cli.$n.log"; exit 1; }
  echo "$out"
}

crc=msgr_core::proto::crc::long_crc
# "total crc" of one output file.
counts() { echo "$(callgrind_total "$1") $(callgrind_inclusive "$1" "$crc")"; }

callgrind_server_dump >/dev/null
c1=$(counts "$(client_run "$n1")")
s1=$(counts "$(callgrind_server_dump)")
c2=$(counts "$(client_run "$n2")")
s2=$(counts "$(callgrind_server_dump)")

python3 - "$size" "$n1" "$n2" $c1 $c2 $s1 $s2 <<'EOF'
import sys
size = sys.argv[1]
n1, n2, c1, c1crc, c2, c2crc, s1, s1crc, s2, s2crc = map(int, sys.argv[2:])
n = n2 - n1
client, server = (c2 - c1) / n, (s2 - s1) / n
# Rounded to whole instructions (a handshake's crcs fall in one run and not the other).
crc = round((c2crc - c1crc + s2crc - s1crc) / n)
total = round(client + server)
print(f"callgrind, {size} round trip at depth 1 ({n} round trips = run of {n2} minus run of {n1}):")
print(f"  client {client:,.0f} + server {server:,.0f} = {total:,} user-space instructions per round trip")
print(f"  of which the data crc's folding kernel {crc:,} (the three-chain kernel under valgrind), the rest {total - crc:,}")
EOF
