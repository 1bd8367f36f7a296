#!/usr/bin/env bash
# A throw-away Ceph monitor (Debian's ceph-mon 16.2) on loopback, for interop tests.
# No systemd, no root-owned paths: everything lives under DIR.
#
#   ci/mon.sh start DIR [--auth none|cephx] [--mode crc|secure|"secure crc"]
#   ci/mon.sh stop DIR      # TERM, then KILL after 10 s
#   ci/mon.sh kill DIR      # KILL at once (tests of a mon dying mid-session)
#   ci/mon.sh wipe DIR      # stop and remove DIR
#
# Ports: MON_PORT_V2 (default 3300) and MON_PORT_V1 (default 6789); MON_IP (127.0.0.1).
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
auth=none; mode=crc
while [[ $# -gt 0 ]]; do
  case $1 in
    --auth) auth=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
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
pidfile=$dir/run/mon.a.pid

running_pid() {
  [[ -s $pidfile ]] || return 1
  local pid; pid=$(<"$pidfile")
  kill -0 "$pid" 2>/dev/null || return 1
  grep -qa ceph-mon "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

make_cluster() {
  local fsid addrs required
  fsid=$(cat /proc/sys/kernel/random/uuid)
  addrs="[v2:$ip:$p2,v1:$ip:$p1]"
  if [[ $auth == cephx ]]; then required=cephx; else required=none; fi
  mkdir -p "$dir/run" "$dir/log" "$dir/data"
  {
    echo "[global]"
    echo "fsid = $fsid"
    echo "mon host = $addrs"
    echo "mon initial members = a"
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
  monmaptool --create --clobber --fsid "$fsid" --addv a "$addrs" "$dir/monmap" >/dev/null
  ceph-mon -c "$conf" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/keyring" >/dev/null 2>&1 || {
    echo "mon.sh: ceph-mon --mkfs failed" >&2; exit 1; }
}

start() {
  if pid=$(running_pid); then echo "mon up: $(grep '^mon host' "$conf" | cut -d= -f2- | xargs) $conf"; return; fi
  command -v ceph-mon >/dev/null || { echo "mon.sh: ceph-mon is not installed (apt-get install ceph-mon ceph-common)" >&2; exit 3; }
  [[ -f $conf && -d $dir/data/ceph-a ]] || make_cluster
  ceph-mon -c "$conf" -i a
  local i
  for ((i = 0; i < ${MON_WAIT_SECS:-60} * 5; i++)); do
    if [[ ${MON_WAIT:-cli} == log ]]; then
      if grep -q "mon.a@0(leader)" "$dir/log/mon.a.log" 2>/dev/null; then
        echo "mon up: $(grep '^mon host' "$conf" | cut -d= -f2- | xargs) $conf"
        return
      fi
    elif ceph -c "$conf" --connect-timeout 5 mon stat >/dev/null 2>&1; then
      echo "mon up: $(grep '^mon host' "$conf" | cut -d= -f2- | xargs) $conf"
      return
    fi
    sleep 0.2
  done
  echo "mon.sh: monitor did not answer within ${MON_WAIT_SECS:-60} s; see $dir/log/mon.a.log" >&2
  exit 1
}

stop() {
  local sig=$1 pid i
  pid=$(running_pid) || return 0
  kill "-$sig" "$pid"
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

case $cmd in
  start) start ;;
  stop) stop TERM ;;
  kill) stop KILL ;;
  wipe) stop TERM; rm -rf "$dir" ;;
  *) echo "mon.sh: unknown command $cmd" >&2; exit 2 ;;
esac
