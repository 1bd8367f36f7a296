#!/usr/bin/env bash
# A throw-away Ceph monitor (Debian's ceph-mon 16.2) on loopback, for interop tests.
# No systemd, no root-owned paths: everything lives under DIR.
#
#   ci/mon.sh start DIR [--auth none|cephx] [--mode crc|secure|"secure crc"] [--id ID]
#   ci/mon.sh stop DIR [--id ID]   # TERM, then KILL after 10 s
#   ci/mon.sh kill DIR [--id ID]   # KILL at once (tests of a mon dying mid-session)
#   ci/mon.sh wipe DIR             # stop and remove DIR
#
# Ports: MON_PORT_V2 (default 3300) and MON_PORT_V1 (default 6789); MON_IP (127.0.0.1).
# Several monitors in one cluster: MON_IDS="a b c" with MON_PORTS_V2 / MON_PORTS_V1 as
# lists of as many ports (at creation); --id picks one of them to start, stop or kill
# (default: all).
# MON_CONF_EXTRA: more `key = value` lines for [global] (e.g. ms_type = async+rdma).
# MON_WAIT=log: wait for the mon to log that it is the leader instead of asking it with
# the python `ceph` CLI (which takes seconds per call under emulation, and speaks
# whatever ms_type the conf says). MON_WAIT_SECS: how long to wait (default 60).
# `start` on a DIR whose mon exists but is stopped restarts it with its old data, so a
# test can kill and restart the same monitor. Prints `mon up: ADDRVEC CONF` when ready.
set -euo pipefail

cmd=${1:-}; dir=${2:-}
if [[ -z $cmd || -z $dir ]]; then sed -n '2,12p' "$0" >&2; exit 2; fi
shift 2
auth=none; mode=crc; only=
while [[ $# -gt 0 ]]; do
  case $1 in
    --auth) auth=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --id) only=$2; shift 2 ;;
    *) echo "mon.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case $auth in none|cephx) ;; *) echo "mon.sh: --auth must be none or cephx" >&2; exit 2 ;; esac

ip=${MON_IP:-127.0.0.1}
p2=${MON_PORT_V2:-3300}
p1=${MON_PORT_V1:-6789}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
# The cluster's monitor ids: fixed at creation (kept in DIR/mon-ids), else MON_IDS.
if [[ -s $dir/mon-ids ]]; then read -r -a ids <"$dir/mon-ids"; else read -r -a ids <<<"${MON_IDS:-a}"; fi
if [[ -n $only ]]; then
  [[ " ${ids[*]} " == *" $only "* ]] || { echo "mon.sh: no monitor '$only' (ids: ${ids[*]})" >&2; exit 2; }
  targets=("$only")
else
  targets=("${ids[@]}")
fi

# PID of monitor $1 if it runs.
running_pid() {
  local pidfile=$dir/run/mon.$1.pid
  [[ -s $pidfile ]] || return 1
  local pid; pid=$(<"$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  grep -qa ceph-mon "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

make_cluster() {
  local fsid addrs required i id
  fsid=$(cat /proc/sys/kernel/random/uuid)
  local -a v2s v1s mon_addrs
  read -r -a v2s <<<"${MON_PORTS_V2:-$p2}"
  read -r -a v1s <<<"${MON_PORTS_V1:-$p1}"
  if [[ ${#v2s[@]} -ne ${#ids[@]} || ${#v1s[@]} -ne ${#ids[@]} ]]; then
    echo "mon.sh: MON_IDS (${ids[*]}) needs as many MON_PORTS_V2 and MON_PORTS_V1" >&2; exit 2
  fi
  for i in "${!ids[@]}"; do mon_addrs+=("[v2:$ip:${v2s[$i]},v1:$ip:${v1s[$i]}]"); done
  addrs=$(IFS=,; echo "${mon_addrs[*]}")
  if [[ $auth == cephx ]]; then required=cephx; else required=none; fi
  mkdir -p "$dir/run" "$dir/log" "$dir/data"
  {
    echo "[global]"
    echo "fsid = $fsid"
    echo "mon host = $addrs"
    echo "mon initial members = $(IFS=,; echo "${ids[*]}")"
    echo "public addr = $ip"
    echo "auth cluster required = $required"
    echo "auth service required = $required"
    echo "auth client required = $required"
    [[ $auth == none ]] && echo "auth supported = none"
    echo "keyring = $dir/keyring"
    for opt in ms_client_mode ms_cluster_mode ms_service_mode ms_mon_client_mode ms_mon_cluster_mode ms_mon_service_mode; do
      echo "$opt = $mode"
    done
    echo "run dir = $dir/run"
    echo "admin socket = $dir/run/\$name.asok"
    echo "pid file = $dir/run/\$name.pid"
    echo "log file = $dir/log/\$name.log"
    echo "mon data = $dir/data/\$cluster-\$id"
    echo "mon allow pool size one = true"
    echo "mon data avail warn = 2"
    echo "mon data avail crit = 1"
    echo "auth allow insecure global id reclaim = false"
    if [[ -n ${MON_CONF_EXTRA:-} ]]; then printf '%s\n' "$MON_CONF_EXTRA"; fi
  } >"$conf"
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool "$dir/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
    --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
  chmod 600 "$dir/keyring"
  local -a add=()
  for i in "${!ids[@]}"; do add+=(--addv "${ids[$i]}" "${mon_addrs[$i]}"); done
  monmaptool --create --clobber --fsid "$fsid" "${add[@]}" "$dir/monmap" >/dev/null
  for id in "${ids[@]}"; do
    ceph-mon -c "$conf" --mkfs -i "$id" --monmap "$dir/monmap" --keyring "$dir/keyring" >/dev/null 2>&1 || {
      echo "mon.sh: ceph-mon --mkfs of mon.$id failed" >&2; exit 1; }
  done
  echo "${ids[*]}" >"$dir/mon-ids"
}

mon_up_line() {
  echo "mon up: $(grep '^mon host' "$conf" | cut -d= -f2- | xargs) $conf"
}

start() {
  command -v ceph-mon >/dev/null || { echo "mon.sh: ceph-mon is not installed (apt-get install ceph-mon ceph-common)" >&2; exit 3; }
  [[ -f $conf && -d $dir/data/ceph-${ids[0]} ]] || make_cluster
  local id started=0
  for id in "${targets[@]}"; do
    running_pid "$id" >/dev/null && continue
    ceph-mon -c "$conf" -i "$id"
    started=1
  done
  [[ $started == 1 ]] || { mon_up_line; return; }
  local i
  for ((i = 0; i < ${MON_WAIT_SECS:-60} * 5; i++)); do
    if [[ ${MON_WAIT:-cli} == log ]]; then
      if grep -q "mon\..*@[0-9]*(leader)" "$dir"/log/mon.*.log 2>/dev/null; then
        mon_up_line
        return
      fi
    elif ceph -c "$conf" --connect-timeout 5 mon stat >/dev/null 2>&1; then
      mon_up_line
      return
    fi
    sleep 0.2
  done
  echo "mon.sh: monitor did not answer within ${MON_WAIT_SECS:-60} s; see $dir/log/mon.*.log" >&2
  exit 1
}

stop() {
  local sig=$1 id pid i
  for id in "${targets[@]}"; do
    pid=$(running_pid "$id") || continue
    kill "-$sig" "$pid"
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}

case $cmd in
  start) start ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  wipe) stop TERM; rm -rf "$dir" ;;
  *) echo "mon.sh: unknown command $cmd" >&2; exit 2 ;;
esac
