#!/usr/bin/env bash
# Captures `msgr mon` talking to a real monitor (auth none, crc) with tcpdump and checks
# the bytes with an independent decoder (ci/msgr2_check.py): every crc must verify and
# the frame sequence must be librados' (see msgr/tests/data/handshake-crc.txt, stream A).
# Usage: ci/wire-check.sh [MSGR_BINARY]
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
bin=${1:-target/release/msgr}
tmp=$(mktemp -d)
p2=$(free_port); p1=$(free_port)
cleanup() {
  [ -n "${dump_pid:-}" ] && kill "$dump_pid" 2>/dev/null || true
  MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh wipe "$tmp/mon" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh start "$tmp/mon" --auth none --mode crc
tcpdump -i lo -U -s 0 -w "$tmp/cap.pcap" "tcp port $p2" 2>"$tmp/tcpdump.err" &
dump_pid=$!
sleep 1
"$bin" mon -c "$tmp/mon/ceph.conf" get-version osdmap
"$bin" mon -c "$tmp/mon/ceph.conf" command '{"prefix":"mon dump"}' >/dev/null 2>&1
"$bin" mon -c "$tmp/mon/ceph.conf" ping >/dev/null
sleep 1
kill "$dump_pid"; wait "$dump_pid" 2>/dev/null || true; dump_pid=
cp "$tmp/cap.pcap" "${KEEP_PCAP:-/dev/null}" 2>/dev/null || true
python3 ci/msgr2_check.py "$tmp/cap.pcap" "$p2" \
  --expect-client BANNER,HELLO,AUTH_REQUEST,AUTH_SIGNATURE,CLIENT_IDENT,MESSAGE \
  --expect-server BANNER,HELLO,AUTH_DONE,AUTH_SIGNATURE,SERVER_IDENT,MESSAGE
