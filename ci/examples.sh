#!/usr/bin/env bash
# Builds the facade's examples (facade/examples/) and runs them for real:
# - echo_daemon answers 1000 verified `msgr ping`s, then stops on SIGTERM within a few
#   seconds with exit code 0 and no thread left but main;
# - tokio_daemon (the async API, feature `tokio`) does the same: 1000 verified pings,
#   then exit code 0 on SIGTERM;
# - mon_client talks to a throw-away ceph-mon (cephx) and prints the fsid of its ceph.conf;
# - msgr-core's loopback_pingpong (a measuring tool) runs each of its modes briefly.
# Usage: ci/examples.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh

need_rust
{ command -v ceph-mon && command -v ceph; } >/dev/null 2>&1 || apt_install ceph-mon ceph-common python3

log "examples: build"
cargo build --release -p msgr --features tokio --examples
cargo build --release --bin msgr
examples=target/release/examples
tmp=$(mktemp -d)
p2=$(free_port); p1=$(free_port)
cleanup() {
  [ -n "${SERVER_PID:-}" ] && kill -KILL "$SERVER_PID" 2>/dev/null || true
  MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh wipe "$tmp/mon" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() { log "examples: $*"; exit 1; }

log "examples: echo_daemon answers msgr ping --verify"
start_server "$tmp/echo.log" "$examples/echo_daemon" --bind 127.0.0.1:0
log "echo_daemon (pid $SERVER_PID) at $SERVER_ADDR"
target/release/msgr ping --connect "$SERVER_ADDR" --count 1000 --verify | tee "$tmp/ping.out"
verified_ok 1000 "$tmp/ping.out" "echo_daemon ping" || exit 1
# Its stack's workers (ms_async_op_threads, 3 by default) and dispatch thread are all
# it should run; its descriptors are the listener, epoll and eventfds, a few per worker.
threads=$(ls "/proc/$SERVER_PID/task" | wc -l)
fds=$(ls "/proc/$SERVER_PID/fd" | wc -l)
log "echo_daemon while serving: $threads threads, $fds fds"
{ [ "$threads" -ge 2 ] && [ "$threads" -le 16 ]; } || fail "echo_daemon runs $threads threads"
[ "$fds" -le 64 ] || fail "echo_daemon holds $fds descriptors"

log "examples: echo_daemon stops cleanly on SIGTERM"
# Exited: gone, or a zombie waiting for this shell to reap it (kill -0 still succeeds).
exited() { [ ! -e "/proc/$1/stat" ] || [ "$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)" = Z ]; }
# stop_server NAME: SIGTERM to the server, which must exit within 5 s; sets rc to its
# exit code.
stop_server() {
  kill -TERM "$SERVER_PID"
  for _ in $(seq 1 50); do exited "$SERVER_PID" && break; sleep 0.1; done
  exited "$SERVER_PID" || fail "$1 still running 5 s after SIGTERM"
  rc=0; wait "$SERVER_PID" || rc=$?
  SERVER_PID=
}
stop_server echo_daemon
cat "$tmp/echo.log"
[ "$rc" -eq 0 ] || fail "echo_daemon exited $rc after SIGTERM"
grep -q "^echo_daemon: echoed 1000 messages$" "$tmp/echo.log" || fail "echo_daemon did not echo 1000 messages"
grep -q "^threads left: 1," "$tmp/echo.log" || fail "echo_daemon left threads running after shutdown"
# Every descriptor the messenger opened is closed again.
grep -Eq "open fds: ([0-9]+) \(at start: \1\)$" "$tmp/echo.log" || fail "echo_daemon leaked descriptors"

log "examples: tokio_daemon (msgr::tokio) answers msgr ping --verify"
start_server "$tmp/tokio.log" "$examples/tokio_daemon" --bind 127.0.0.1:0
log "tokio_daemon (pid $SERVER_PID) at $SERVER_ADDR"
target/release/msgr ping --connect "$SERVER_ADDR" --count 1000 --verify | tee "$tmp/tping.out"
verified_ok 1000 "$tmp/tping.out" "tokio_daemon ping" || exit 1
log "examples: tokio_daemon stops cleanly on SIGTERM"
stop_server tokio_daemon
cat "$tmp/tokio.log"
[ "$rc" -eq 0 ] || fail "tokio_daemon exited $rc after SIGTERM"
grep -q "^tokio_daemon: listening on " "$tmp/tokio.log" || fail "tokio_daemon did not say where it listens"
grep -q "^tokio_daemon: echoed 1000 messages$" "$tmp/tokio.log" || fail "tokio_daemon did not echo 1000 messages"

log "examples: mon_client against a real ceph-mon (cephx)"
MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh start "$tmp/mon" --auth cephx
"$examples/mon_client" -c "$tmp/mon/ceph.conf" | tee "$tmp/monc.out"
want=$(sed -n 's/^fsid = //p' "$tmp/mon/ceph.conf")
got=$(sed -n 's/^fsid //p' "$tmp/monc.out")
[ -n "$want" ] && [ "$got" = "$want" ] || fail "mon_client printed fsid '$got', ceph.conf says '$want'"
grep -q "^osdmap version [0-9]" "$tmp/monc.out" || fail "mon_client printed no osdmap version"
grep -q "^mon.a rank 0 .*127.0.0.1:$p2" "$tmp/monc.out" || fail "mon_client's monmap lacks mon.a at port $p2"
# A monitor that is not there: a clear error and exit code 1.
rc=0; "$examples/mon_client" --mon-host "127.0.0.1:$(free_port)" -c "$tmp/mon/ceph.conf" \
  >/dev/null 2>"$tmp/monc.err" || rc=$?
[ "$rc" -eq 1 ] || fail "mon_client against no monitor exited $rc, expected 1"
grep -q "refused" "$tmp/monc.err" || { cat "$tmp/monc.err" >&2; fail "expected a 'refused' error"; }
log "examples: mon_client error without a monitor: $(cat "$tmp/monc.err")"

# The measuring example (msgr-core's loopback_pingpong, docs/BENCHMARKS.md): each mode
# runs, ends on time and reports; a bad mode is a clear error.
log "examples: loopback_pingpong (raw TCP at depth 1, blocking reads and epoll waits)"
cargo build --release -p msgr-core --example loopback_pingpong
for mode in block epoll; do
  out=$(timeout 30 "$examples/loopback_pingpong" "$mode" 4096 0.5) || fail "loopback_pingpong $mode failed"
  log "$out"
  echo "$out" | grep -Eq "^$mode: 4096 B, [1-9][0-9]* round trips" || fail "loopback_pingpong $mode printed '$out'"
done
rc=0; "$examples/loopback_pingpong" sideways >/dev/null 2>"$tmp/pp.err" || rc=$?
[ "$rc" -ne 0 ] && grep -q "block or epoll" "$tmp/pp.err" || fail "loopback_pingpong took a bad mode (exit $rc)"
log "examples ok"
