#!/usr/bin/env bash
# The DPDK suite (run as root): builds the messenger tests and msgr with the dpdk feature,
# then, with and without hugepages:
#   1. two async+dpdk messengers on a net_ring loopback (no kernel on the path);
#   2. async+dpdk <-> async+posix over net_tap, both directions, in a network namespace
#      made for the run;
#   3. two async+dpdk processes joined by net_memif (shared memory, no kernel on the
#      data path), 10,000 mixed-size messages each way, no mbuf leaked in either;
# then the kernel-free benchmark: `msgr bench server` and `msgr bench client` as two
# async+dpdk processes over memif, msgr and the raw echo on the same stacks (client and
# server side), and the server's system calls per message counted with strace; then, in
# a namespace: `msgr ping` over async+dpdk both ways, `msgr mon get-version` over
# async+dpdk against a real ceph-mon on the kernel side of the TAP, and the benchmark
# over the TAP with DPDK on either end, and msgr + raw kernel TCP over a veth pair as the
# reference (JSON in target/bench/). Every namespace, TAP and DPDK runtime directory it
# creates is removed at exit.
# Usage: ci/dpdk-tests.sh      Environment: T_DPDK_MSGS (messages each way, default
# 10000), BENCH_SECS (seconds per benchmark row, default 2), BENCH_SIZES (default 64,4k,64k)
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
apt_install dpdk dpdk-dev libdpdk-dev pkg-config clang libclang-dev iproute2 ceph-mon ceph-common strace
[ "$(id -u)" = 0 ] || { log "the DPDK suite needs root (TAP devices, namespaces, hugepages)"; exit 1; }
[ -c /dev/net/tun ] || { mkdir -p /dev/net; mknod /dev/net/tun c 10 200; }

# Hugepages when the machine gives them; the --no-huge configuration runs either way.
modes=nohuge
want=256
[ "$(cat /proc/sys/vm/nr_hugepages)" -ge "$want" ] || echo "$want" >/proc/sys/vm/nr_hugepages 2>/dev/null || true
if [ "$(cat /proc/sys/vm/nr_hugepages)" -ge 128 ]; then
  mkdir -p /dev/hugepages
  grep -qs " /dev/hugepages hugetlbfs " /proc/mounts || mount -t hugetlbfs -o pagesize=2M nodev /dev/hugepages
  modes="nohuge huge"
else
  log "no hugepages could be reserved: only the --no-huge configuration runs"
fi

suite=$(test_bins --release --features dpdk --test dpdk_messenger)
[ -n "$suite" ] || { log "the dpdk_messenger suite did not build"; exit 1; }
cargo build --release --features dpdk --bin msgr
bin=$PWD/target/release/msgr

ns=msgr-dpdk-$$
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  MON_IP=198.18.8.1 bash ci/mon.sh stop "$tmp/mon" >/dev/null 2>&1 || true
  ip netns del "$ns" 2>/dev/null || true
  ip netns del "$ns-b" 2>/dev/null || true
  # EAL runtime directories of the memif processes (left behind by a killed process).
  rm -rf /var/run/dpdk/msgr-memif-* /var/run/dpdk/msgr-bench-*-$$ 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns"
ip netns exec "$ns" ip link set lo up
in_ns() { ip netns exec "$ns" "$@"; }

log "start-up errors name the option to change"
MSGR_DPDK_TESTS=1 "$suite" --exact startup_errors_say_what_to_change --nocapture
for mode in $modes; do
  log "net_ring: two async+dpdk messengers, no kernel ($mode)"
  MSGR_DPDK_MEM=$mode MSGR_DPDK_TESTS=1 "$suite" --exact ring_two_dpdk_messengers --nocapture
  log "net_tap: async+dpdk <-> async+posix, both directions ($mode)"
  MSGR_DPDK_MEM=$mode MSGR_DPDK_TESTS=1 in_ns "$suite" --exact tap_dpdk_and_posix_both_directions --nocapture
  log "net_memif: two async+dpdk processes ($mode)"
  MSGR_DPDK_MEM=$mode MSGR_DPDK_TESTS=1 timeout 600 "$suite" --exact memif_two_dpdk_processes --nocapture
done

mkdir -p target/bench
log "bench over memif: two async+dpdk processes, msgr and the raw echo on the same stacks"
# The server's raw echo and the client's raw jobs both run on their process's DPDK
# stack (the kernel owns neither address), so msgr and raw rows cross the same
# smoltcp + memif path. One worker each, pinned to a core each (ms_dpdk_coremask):
# left to the scheduler, the two busy-polling workers may share a CPU and take turns.
msock=$tmp/memif.sock
memif_dpdk() { # memif_dpdk IP COREMASK: the stack options of one memif process (one word each)
  echo --ms-type async+dpdk -o ms_async_op_threads=1 -o "ms_dpdk_coremask=$2" -o "ms_dpdk_host_ipv4_addr=$1" \
    -o ms_dpdk_netmask_ipv4_addr=255.255.255.0
}
memif_eal() { # memif_eal ROLE PREFIX: its EAL arguments (memif needs a --file-prefix each)
  echo "--no-pci --no-huge -m 512 --file-prefix $2 --log-level=*:error --vdev=net_memif0,role=$1,socket=$msock"
}
# Bounded: the server exits by itself after --duration even if this script dies.
# shellcheck disable=SC2046
start_server "$tmp/mserve.log" "$bin" $(memif_dpdk 10.88.0.1 0x1) \
  -o "ms_dpdk_extra_eal_args=$(memif_eal server msgr-bench-s-$$)" bench server --bind 10.88.0.1:0 --duration 900
pids+=("$SERVER_PID")
cpu2() { [ "$(nproc)" -gt 1 ] && echo 0x2 || echo 0x1; }
memif_client() { # memif_client ARGS...: `msgr bench client` over memif against the server
  # shellcheck disable=SC2046
  timeout 300 "$bin" $(memif_dpdk 10.88.0.2 "$(cpu2)") -o "ms_dpdk_extra_eal_args=$(memif_eal client msgr-bench-c-$$)" \
    bench client --connect "$SERVER_ADDR" "$@"
}
for depth in 1 16; do
  memif_client --size "${BENCH_SIZES_MEMIF:-64,4k}" --depth "$depth" --duration "${BENCH_SECS:-2}" --warmup 0.3 \
    --json "target/bench/memif-d$depth.json" | sed "s/^/BENCH async+dpdk <-> async+dpdk (memif) | /" \
    || { log "msgr bench over memif (depth $depth) failed"; exit 1; }
done
log "server system calls per message over memif (strace -c -f on the server, 4 KiB depth 1)"
strace -c -f -p "$SERVER_PID" -o "$tmp/strace.out" 2>/dev/null &
strace_pid=$!
sleep 0.5
memif_client --size 4k --depth 1 --duration 3 --warmup 0 --baseline none --json "$tmp/sc.json" >/dev/null \
  || { kill -INT "$strace_pid" 2>/dev/null; log "msgr bench over memif under strace failed"; exit 1; }
kill -INT "$strace_pid"; wait "$strace_pid" 2>/dev/null || true
python3 - "$tmp/strace.out" "$tmp/sc.json" <<'PY'
import json, sys
calls = next((int(l.split()[3]) for l in open(sys.argv[1]) if l.split() and l.split()[-1] == "total"), 0)
# The messages of the traced run (the server's counters also hold the earlier rows').
msgs = sum(r["msgs"] for r in json.load(open(sys.argv[2]))["rows"] if r["transport"] == "msgr")
print(f"BENCH memif server syscalls: {calls} system calls while it answered {msgs} messages "
      f"(the traced window: 0.5 s idle, the client's connect and 3 s at 4 KiB depth 1): "
      f"{calls / max(msgs, 1):.4f} per message")
PY
grep -v "^-\|^%" "$tmp/strace.out" | sort -k4 -n -r | head -5 | sed "s/^/BENCH memif server syscalls | /"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

# The CLI over a persistent multi-queue TAP whose kernel side is 198.18.8.1.
in_ns ip tuntap add dev dtapc mode tap multi_queue
in_ns ip addr add 198.18.8.1/24 dev dtapc
in_ns ip link set dtapc up
eal="--no-pci --no-huge --no-shconf -m 512 --log-level=*:error --vdev=net_tap0,iface=dtapc"
dpdk=(--ms-type async+dpdk -o ms_dpdk_host_ipv4_addr=198.18.8.2 -o ms_dpdk_gateway_ipv4_addr=198.18.8.1
  -o "ms_dpdk_extra_eal_args=$eal")

# bench_rows LABEL JSON-STEM CLIENT-ARGS...: `msgr bench client` at depth 1 and 16 (the
# client runs in the namespace); rows are printed with LABEL, JSON goes to target/bench/.
bench_rows() {
  local label=$1 stem=$2 depth; shift 2
  for depth in 1 16; do
    in_ns timeout 300 "$bin" bench client "$@" --size "${BENCH_SIZES:-64,4k,64k}" --depth "$depth" \
      --duration "${BENCH_SECS:-2}" --warmup 0.3 --json "target/bench/$stem-d$depth.json" \
      | sed "s/^/BENCH $label | /" || { log "msgr bench ($label, depth $depth) failed"; exit 1; }
  done
}

log "bench: msgr bench server over async+dpdk, client on the kernel side of the TAP"
# The raw row is kernel TCP -> TAP -> the server's raw echo on its own DPDK stack
# (smoltcp): the same path as msgr's, without msgr.
start_server "$tmp/dserve.log" ip netns exec "$ns" "$bin" bench server "${dpdk[@]}" --bind 198.18.8.2:0
pids+=("$SERVER_PID")
bench_rows "async+posix client -> async+dpdk server (net_tap)" dpdk-tap-server --connect "$SERVER_ADDR"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

log "bench: msgr bench server on the kernel side, client over async+dpdk"
# The raw client runs on the client's DPDK stack (a kernel socket here would not cross the
# TAP: the server's IP is local), to the server's kernel raw echo: DPDK -> TAP -> kernel.
start_server "$tmp/pserve.log" ip netns exec "$ns" "$bin" bench server --bind 198.18.8.1:0
pids+=("$SERVER_PID")
bench_rows "async+dpdk client -> async+posix server (net_tap)" dpdk-tap-client "${dpdk[@]}" --connect "$SERVER_ADDR"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true

log "lossless async+dpdk client -> async+posix server with injected socket failures"
start_server "$tmp/lserve.log" ip netns exec "$ns" "$bin" -o ms_inject_socket_failures=200 serve --bind 198.18.8.1:0 --policy lossless
pids+=("$SERVER_PID")
in_ns timeout 600 "$bin" "${dpdk[@]}" -o ms_inject_socket_failures=200 -o ms_initial_backoff=0.01 -o ms_max_backoff=0.2 \
  ping --connect "$SERVER_ADDR" --policy lossless --verify --count 20000 --window 4 --size 64 --timeout 60 \
  | tee "$tmp/lping.out"
sleep 2.5
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
verified_ok 20000 "$tmp/lping.out" "lossless DPDK run under injected faults" || exit 1
fault_total "async+dpdk 20000 pings" "$tmp/lping.out" "$tmp/lserve.log"
[ "$FAULT_TOTAL" -gt 0 ] || { log "no fault was injected over DPDK"; exit 1; }

log "msgr mon over async+dpdk against a real ceph-mon on the kernel side of the TAP"
MON_IP=198.18.8.1 in_ns bash ci/mon.sh start "$tmp/mon" >"$tmp/mon.log" 2>&1 || { cat "$tmp/mon.log"; exit 1; }
conf=$(sed -n 's/^mon up: [^ ]* \(.*\)$/\1/p' "$tmp/mon.log" | tail -n1)
[ -n "$conf" ] || { cat "$tmp/mon.log"; log "mon.sh did not report its ceph.conf"; exit 1; }
out=$(in_ns timeout 120 "$bin" mon -c "$conf" "${dpdk[@]}" get-version osdmap)
echo "msgr mon get-version osdmap over async+dpdk: $out"
epoch=$(in_ns timeout 60 ceph -c "$conf" osd stat -f json | python3 -c 'import sys, json; print(json.load(sys.stdin)["epoch"])')
case $out in "osdmap version $epoch "*) ;; *) log "expected osdmap version $epoch (from the ceph CLI), got: $out"; exit 1 ;; esac
MON_IP=198.18.8.1 bash ci/mon.sh stop "$tmp/mon" >/dev/null 2>&1 || true

log "reference: kernel TCP over a veth pair between two namespaces: msgr bench async+posix and raw TCP"
ip netns add "$ns-b"
ip link add vma netns "$ns" type veth peer name vmb netns "$ns-b"
in_ns ip addr add 198.18.10.1/24 dev vma
in_ns ip link set vma up
ip netns exec "$ns-b" ip addr add 198.18.10.2/24 dev vmb
ip netns exec "$ns-b" ip link set vmb up
ip netns exec "$ns-b" ip link set lo up
start_server "$tmp/vserve.log" ip netns exec "$ns-b" "$bin" bench server --bind 198.18.10.2:0
pids+=("$SERVER_PID")
bench_rows "async+posix over veth, with raw kernel TCP" veth --connect "$SERVER_ADDR"
kill "$SERVER_PID"; wait "$SERVER_PID" 2>/dev/null || true
log "DPDK suite passed"
