#!/usr/bin/env bash
# ci/rxe-vm/selftest.sh - checks the soft-RoCE setup of the rxe VM and prints the
# perftest baseline that msgr's RDMA benchmarks are compared with.
# Run it inside the VM:   ci/rxe-vm/run.sh -- bash ci/rxe-vm/selftest.sh
#
# Checks: ibv_devices lists rxe0 and rxe1; ibv_rc_pingpong on rxe0 (GID index 1)
# with busy polling and with a completion channel (-e); ib_send_lat and ib_send_bw
# on rxe0 with 64 B and 64 KiB messages, at the port's MTU and, like msgr's RDMA wire
# (Ceph's), at MTU 1024 (64 KiB with 16 in flight, as msgr bench's depth 16). Each
# server/client pair talks over
# 127.0.0.1. Prints "PASS name" / "FAIL name" lines, the perftest result lines as
# "BASELINE ..." lines and a summary; exits 1 if any check failed.
# Environment: SELFTEST_ITERS (perftest -n, default 1000), SELFTEST_TIMEOUT
# (seconds per process, default 180).
set -u
ITERS=${SELFTEST_ITERS:-1000}
LIMIT=${SELFTEST_TIMEOUT:-180}
DEV=${RXE_VM_VERBS_DEV:-rxe0}
GID=${RXE_VM_GID_INDEX:-1}
PORT=18600
passed=0 failed=0
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

now() { date +%s.%N; }
# check NAME CMD...: runs CMD, records PASS/FAIL; its output is shown on failure
check() {
  local name=$1 t0 rc; shift
  t0=$(now)
  "$@" > "$WORK/check.out" 2>&1; rc=$?
  if [ $rc = 0 ]; then passed=$((passed + 1)); r=PASS; else failed=$((failed + 1)); r=FAIL; fi
  printf '%s %s (%.1fs)\n' "$r" "$name" "$(echo "$(now) $t0" | awk '{ print $1 - $2 }')"
  if [ $rc != 0 ]; then sed 's/^/    | /' "$WORK/check.out" | tail -n 40; fi
  return 0
}

# wait_listen PID PORT: until something listens on TCP PORT (or PID died)
wait_listen() {
  local i
  for i in $(seq 200); do
    ss -Hltn "sport = :$2" 2>/dev/null | grep -q . && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.05
  done
  return 1
}

# pair PORT SERVER-ARGS... -- CLIENT-ARGS...: server in the background on PORT,
# client once the server listens; both must succeed. Output in $WORK/{server,client}.
pair() {
  local port=$1 srv=() spid src crc; shift
  while [ "$1" != -- ]; do srv+=("$1"); shift; done; shift
  timeout "$LIMIT" "${srv[@]}" > "$WORK/server" 2>&1 &
  spid=$!
  if ! wait_listen "$spid" "$port"; then
    kill "$spid" 2>/dev/null; wait "$spid"
    echo "server did not start listening on port $port:"; cat "$WORK/server"; return 1
  fi
  timeout "$LIMIT" "$@" > "$WORK/client" 2>&1; crc=$?
  wait "$spid"; src=$?
  echo "--- server (exit $src): ${srv[*]}"; cat "$WORK/server"
  echo "--- client (exit $crc): $*"; cat "$WORK/client"
  [ "$crc" = 0 ] && [ "$src" = 0 ]
}

devices_listed() {
  ibv_devices || return 1
  ibv_devices | awk '{ print $1 }' | grep -qx rxe0 || { echo "rxe0 missing"; return 1; }
  ibv_devices | awk '{ print $1 }' | grep -qx rxe1 || { echo "rxe1 missing"; return 1; }
}

# pingpong [-e]: ibv_rc_pingpong on rxe0, 4 KiB messages, 200 iterations
pingpong() {
  PORT=$((PORT + 1))
  pair $PORT ibv_rc_pingpong -d "$DEV" -g "$GID" -p $PORT -n 200 "$@" -- \
    ibv_rc_pingpong -d "$DEV" -g "$GID" -p $PORT -n 200 "$@" 127.0.0.1 || return 1
  grep -h 'iters in' "$WORK/client" > "$WORK/pingpong.line"
}

# perf TOOL SIZE [ARG...]: perftest pair on rxe0; keeps the client's header + result line
perf() {
  local tool=$1 size=$2
  shift 2
  PORT=$((PORT + 1))
  local args=(-d "$DEV" -x "$GID" -F -s "$size" -n "$ITERS" -p $PORT "$@")
  pair $PORT "$tool" "${args[@]}" -- "$tool" "${args[@]}" 127.0.0.1 || return 1
  # the results are the line(s) after the " #bytes ..." header, before the closing rule
  awk '/^ *#bytes/ { hdr = $0; getline; print hdr; print; exit }' "$WORK/client" > "$WORK/perf.lines"
  [ -s "$WORK/perf.lines" ] || { echo "no result line in the client output"; return 1; }
}

baseline() { # NAME: prints the last perftest result as BASELINE lines
  sed "s/^/BASELINE $1 |/" "$WORK/perf.lines"
}

echo "kernel $(uname -r), rdma-core $(dpkg-query -W -f='${Version}' rdma-core 2>/dev/null)," \
  "perftest $(dpkg-query -W -f='${Version}' perftest 2>/dev/null), $(nproc) cpus, $ITERS iterations"
rdma link show

check "ibv_devices lists rxe0 and rxe1" devices_listed
check "ibv_rc_pingpong rxe0 gid $GID (busy poll)" pingpong
[ -s "$WORK/pingpong.line" ] && sed 's/^/BASELINE ibv_rc_pingpong 4096 | /' "$WORK/pingpong.line"
rm -f "$WORK/pingpong.line"
check "ibv_rc_pingpong -e rxe0 gid $GID (completion channel)" pingpong -e
[ -s "$WORK/pingpong.line" ] && sed 's/^/BASELINE ibv_rc_pingpong-e 4096 | /' "$WORK/pingpong.line"
for tool in ib_send_lat ib_send_bw; do
  for size in 64 65536; do
    rm -f "$WORK/perf.lines"
    check "$tool $size B rxe0" perf $tool $size
    [ -s "$WORK/perf.lines" ] && baseline "$tool $size"
  done
done
# Like msgr's RDMA wire: MTU 1024 (four times the packets of rxe's 4096).
rm -f "$WORK/perf.lines"
check "ib_send_lat 64 B rxe0 MTU 1024" perf ib_send_lat 64 -m 1024
[ -s "$WORK/perf.lines" ] && baseline "ib_send_lat 64 mtu1024"
rm -f "$WORK/perf.lines"
check "ib_send_bw 64 KiB x 16 rxe0 MTU 1024" perf ib_send_bw 65536 -m 1024 -t 16
[ -s "$WORK/perf.lines" ] && baseline "ib_send_bw 65536 mtu1024 t16"

echo "SELFTEST: $passed passed, $failed failed"
[ "$failed" = 0 ]
