#!/bin/bash
# Runs inside the rxe VM, chrooted into the host's (read-only) root, started by
# guest-init.sh: creates the rxe devices, then execs the command stored by run.sh
# in the control dir (/run/rxe-vm) with its output on the second serial port.
#   rxe0 on lo      (127.0.0.1)            GID index 1 = ::ffff:127.0.0.1  verbs
#   rxe1 on dummy0  (10.77.1.1/24, no NIC) GID index 1 = ::ffff:10.77.1.1  verbs + rdma_cm
# Every fork+exec costs the emulated guest 0.1-0.5 s: hence builtins and batches.
CTL=/run/rxe-vm
WORKDIR=$1
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8 TMPDIR=/tmp TERM=dumb

note() { local up _; read -r up _ < /proc/uptime; echo "rxe-vm[$up]: $*"; }
setup_failed() { echo "$*" > "$CTL/failure"; note "rxe-vm-failure: $*"; exit 255; }

# the dummy module normally creates dummy0 itself (numdummies=1)
add_dummy=
[ -e /sys/class/net/dummy0 ] || add_dummy="link add dummy0 type dummy"
ip -b - <<IP || setup_failed "ip -b: lo up, dummy0 up with 10.77.1.1/24 (ip's message is on the console)"
link set lo up
$add_dummy
addr add 10.77.1.1/24 dev dummy0
link set dummy0 up
IP
rdma -b - <<RDMA || setup_failed "rdma link add rxe0 (netdev lo), rxe1 (netdev dummy0) (rdma's message is on the console)"
link add rxe0 type rxe netdev lo
link add rxe1 type rxe netdev dummy0
RDMA

# ib_core fills the GID tables asynchronously: wait for the RoCEv2 IPv4 GIDs
want_gid() { # DEV HEXADDR: true once GID index 1 of DEV is ::ffff:HEXADDR
  local g=
  read -r g 2>/dev/null < "/sys/class/infiniband/$1/ports/1/gids/1"
  [ "$g" = "0000:0000:0000:0000:0000:ffff:$2" ]
}
for ((i = 0; i < 100; i++)); do
  want_gid rxe0 7f00:0001 && want_gid rxe1 0a4d:0101 && break
  sleep 0.05
done
want_gid rxe0 7f00:0001 || setup_failed "rxe0 has no GID ::ffff:127.0.0.1 at index 1"
want_gid rxe1 0a4d:0101 || setup_failed "rxe1 has no GID ::ffff:10.77.1.1 at index 1"
note "rxe ready"

export RXE_VM=1 RXE_VM_VERBS_DEV=rxe0 RXE_VM_GID_INDEX=1 RXE_VM_CM_DEV=rxe1 RXE_VM_CM_ADDR=10.77.1.1
# shellcheck disable=SC1091
. "$CTL/env"
cd "$WORKDIR" 2>/dev/null || cd / || exit 1
mapfile -d '' -t argv < "$CTL/argv"

# byte-exact output: no \n -> \r\n translation, no echo on the command's serial port
stty -F /dev/ttyS1 raw -echo 2>/dev/null
exec < /dev/null > /dev/ttyS1 2>&1
exec "${argv[@]}"
