#!/usr/bin/env bash
# A throw-away memstore ceph-osd 16.2 beside a monitor made by ci/mon.sh (same DIR), for
# interop tests. No mgr is needed: `ceph tell osd.N version` and msgr's `tell` work
# without one. Everything lives under DIR.
#
#   ci/osd.sh start DIR [ID]   # create (first time) and start osd.ID (default 0)
#   ci/osd.sh stop DIR [ID]    # TERM, then KILL after 15 s
#
# With cephx (the mon's conf says `auth cluster required = cephx`) the OSD gets its own
# key: `osd new` with a generated secret, written to DIR/osd/ceph-ID/keyring.
# Env: MEMSTORE_BYTES (default 1 GiB), OSD_START_TIMEOUT (default 120 s).
# Prints `osd.ID up pid=PID` when the monitor reports it up.
set -euo pipefail
cmd=${1:-}; dir=${2:-}; id=${3:-0}
if [[ -z $cmd || -z $dir ]]; then sed -n '2,12p' "$0" >&2; exit 2; fi
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
[[ -f $conf ]] || { echo "osd.sh: no $conf: run ci/mon.sh start $dir first" >&2; exit 1; }
ceph_cli() { timeout 60 ceph -c "$conf" --connect-timeout 10 "$@"; }
timeout_s=${OSD_START_TIMEOUT:-120}

osd_pid() {
  local f=$dir/run/osd.$id.pid p
  [[ -f $f ]] || return 1
  p=$(cat "$f" 2>/dev/null) || return 1
  [[ -n $p ]] && kill -0 "$p" 2>/dev/null && grep -q ceph-osd "/proc/$p/cmdline" 2>/dev/null && echo "$p"
}

ensure_conf() {
  grep -q '^\[osd\]' "$conf" && return 0
  cat >>"$conf" <<EOF
[osd]
osd_objectstore = memstore
memstore_device_bytes = ${MEMSTORE_BYTES:-1073741824}
keyring = $dir/osd/\$cluster-\$id/keyring
osd_max_object_name_len = 256
osd_max_object_namespace_len = 64
osd_op_num_shards = 1
osd_op_num_threads_per_shard = 1
osd_data = $dir/osd/\$cluster-\$id
EOF
}

cephx() {
  # mon.sh writes "auth cluster required = cephx"; Ceph also reads the underscore form.
  grep -Eq '^auth[ _]cluster[ _]required *= *cephx' "$conf"
}

start() {
  local p
  if p=$(osd_pid); then echo "osd.$id up pid=$p"; return 0; fi
  ensure_conf
  local data=$dir/osd/ceph-$id
  if [[ ! -f $data/whoami ]]; then
    rm -rf "$data"; mkdir -p "$data"
    local uuid; uuid=$(cat /proc/sys/kernel/random/uuid)
    if cephx; then
      local key; key=$(ceph-authtool --gen-print-key)
      printf '{"cephx_secret": "%s"}\n' "$key" >"$data/secrets.json"
      ceph_cli osd new "$uuid" "$id" -i "$data/secrets.json" >/dev/null
      rm -f "$data/secrets.json"
      ceph-authtool --create-keyring "$data/keyring" --name "osd.$id" --add-key "$key" >/dev/null
    else
      ceph_cli osd new "$uuid" "$id" >/dev/null
      : >"$data/keyring"
    fi
    ceph-osd -c "$conf" -i "$id" --mkfs --osd-uuid "$uuid" >"$dir/log/osd.$id.mkfs.out" 2>&1 || {
      echo "osd.sh: mkfs of osd.$id failed:" >&2; tail -5 "$dir/log/osd.$id.mkfs.out" >&2; exit 1; }
  fi
  ceph-osd -c "$conf" -i "$id" 2>>"$dir/log/osd.$id.stderr"
  local i
  for ((i = 0; i < timeout_s * 2; i++)); do
    if ceph_cli osd dump 2>/dev/null | grep -q "^osd.$id up"; then
      echo "osd.$id up pid=$(osd_pid || echo '?')"
      return 0
    fi
    sleep 0.5
  done
  echo "osd.sh: osd.$id not up after ${timeout_s}s; see $dir/log/osd.$id.log" >&2
  exit 1
}

stop() {
  local p i
  p=$(osd_pid) || { echo "osd.$id not running"; return 0; }
  kill -TERM "$p"
  for ((i = 0; i < 150; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$p" 2>/dev/null && kill -KILL "$p"
  echo "osd.$id stopped"
}

case $cmd in
  start) start ;;
  stop) stop ;;
  *) echo "osd.sh: unknown command $cmd" >&2; exit 2 ;;
esac
