#!/usr/bin/env bash
# Round trip of MMonGetVersion("osdmap") against one real monitor, in one run:
# `msgr mon get-version osdmap` versus librados (python3-rados,
# Rados.wait_for_latest_osdmap, which sends the same MMonGetVersion).
# Usage: ci/mon-rtt.sh [MSGR_BINARY] [COUNT] [CONF [MSGR-MON-OPTIONS...]]
# Without CONF it starts a throw-away posix monitor on loopback; with CONF it measures the
# monitor that CONF names (both clients read it: ms_type and all), msgr with the extra
# options given (e.g. --ms-type async+rdma -o ...).
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
bin=${1:-target/release/msgr}; n=${2:-2000}
conf=${3:-}
msgr_opts=("${@:4}")
tmp=$(mktemp -d)
if [[ -z $conf ]]; then
  p2=$(free_port); p1=$(free_port)
  trap 'MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh wipe "$tmp/mon" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
  MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh start "$tmp/mon" --auth none --mode crc >/dev/null
  conf=$tmp/mon/ceph.conf
else
  trap 'rm -rf "$tmp"' EXIT
fi
echo "msgr:     $("$bin" mon -c "$conf" "${msgr_opts[@]}" get-version osdmap --repeat "$n" | tail -1)"
/usr/bin/python3 - "$conf" "$n" <<'PY'
import sys, time, rados
conf, n = sys.argv[1], int(sys.argv[2])
c = rados.Rados(conffile=conf)
c.connect()
c.wait_for_latest_osdmap()
v = []
for _ in range(n):
    t0 = time.perf_counter(); c.wait_for_latest_osdmap(); v.append((time.perf_counter() - t0) * 1e6)
v.sort()
print(f"librados: round trip us over {n} requests: min {v[0]:.1f} avg {sum(v)/n:.1f} p50 {v[n//2]:.1f} max {v[-1]:.1f}")
c.shutdown()
PY
