#!/usr/bin/env bash
# Round trip of MMonGetVersion("osdmap") against one real monitor, in one run:
# `msgr mon get-version osdmap` versus librados (python3-rados,
# Rados.wait_for_latest_osdmap, which sends the same MMonGetVersion).
# Usage: ci/mon-rtt.sh [MSGR_BINARY] [COUNT]
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
bin=${1:-target/release/msgr}; n=${2:-2000}
tmp=$(mktemp -d); p2=$(free_port); p1=$(free_port)
trap 'MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh wipe "$tmp/mon" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
MON_PORT_V2=$p2 MON_PORT_V1=$p1 bash ci/mon.sh start "$tmp/mon" --auth none --mode crc >/dev/null
echo "msgr:     $("$bin" mon -c "$tmp/mon/ceph.conf" get-version osdmap --repeat "$n" | tail -1)"
/usr/bin/python3 - "$tmp/mon/ceph.conf" "$n" <<'PY'
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
