#!/usr/bin/env bash
# Runs inside the soft-RoCE VM (called by ci/rdma-vm-guest.sh): builds the msgr-rdma
# image with podman from a root file system made on the host by
# `docker/build-image.sh rootfs DIR` (Debian packages only), then runs two containers
# of it that talk over async+rdma: `msgr serve` in one, `msgr ping --verify` in the
# other, each with /dev/infiniband passed in and memlock unlimited.
# Usage (in the VM): bash ci/rdma-containers.sh ROOTFS-DIR
#
# The guest's root is the host's, read-only: podman keeps its storage on the guest's
# /tmp and /run (tmpfs). The guest's init mounts no cgroup file system: this mounts
# cgroup2 (crun needs one; a host with cgroup v1 controllers mounted fails with "cgroups
# in hybrid mode not supported"). Both containers share the VM's network namespace: an
# rxe device belongs to the netdevs of the namespace it was created in.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
rootfs=${1:?usage: ci/rdma-containers.sh ROOTFS-DIR}
dev=${RXE_VM_CM_DEV:-rxe1}
ip=${RXE_VM_CM_ADDR:-10.77.1.1}

grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts || mount -t cgroup2 cgroup2 /sys/fs/cgroup
store=/tmp/podman
mkdir -p "$store/tmp"
# vfs: no overlay mounts inside a tmpfs needed; the image is 21 MB.
podman=(podman --root "$store/root" --runroot /run/podman --storage-driver vfs --tmpdir "$store/tmp"
  --cgroup-manager cgroupfs --events-backend file)
log "$(${podman[@]} --version), $(crun --version | head -1), cgroup: $(stat -fc %T /sys/fs/cgroup)"
PODMAN="${podman[*]}" bash docker/build-image.sh image "$rootfs"
"${podman[@]}" images --format '{{.Repository}}:{{.Tag}} {{.Size}} (labels: {{.Labels}})' | sed 's/^/image: /'

# What RDMA needs in a container: the uverbs devices, unlimited locked memory (memory
# registration pins pages), the host's network namespace (see above). Small RDMA pools:
# each worker posts len x buffer size at its first connection, in a 1-2 GiB VM.
run=("${podman[@]}" run --network host --device /dev/infiniband --ulimit memlock=-1:-1 --ulimit nofile=4096:4096)
opts=(--ms-type async+rdma -o "ms_async_rdma_device_name=$dev" -o ms_async_rdma_gid_idx=1
  -o ms_async_rdma_receive_queue_len=64 -o ms_async_rdma_receive_buffers=256 -o ms_async_rdma_send_buffers=64)
port=$(free_port)
hw=/sys/class/infiniband/$dev/ports/1/hw_counters
pkts() { echo $(( $(cat "$hw/sent_pkts") + $(cat "$hw/rcvd_pkts") )); }
pkts0=$(pkts)
trap '"${podman[@]}" rm -f -t 0 msgr-server >/dev/null 2>&1 || true' EXIT
timeout 300 "${run[@]}" -d --name msgr-server localhost/msgr-rdma:latest "${opts[@]}" serve --bind "$ip:$port" --policy lossless >/dev/null
# Bounded in time, not in tries: each podman call takes a second or more under TCG.
deadline=$((SECONDS + 180))
while ((SECONDS < deadline)); do
  "${podman[@]}" logs msgr-server 2>&1 | grep -q "listening" && break
  [ "$("${podman[@]}" inspect -f '{{.State.Running}}' msgr-server)" = true ] || break
  sleep 0.2
done
"${podman[@]}" logs msgr-server 2>&1 | sed 's/^/server container: /'
addr=$("${podman[@]}" logs msgr-server 2>&1 | sed -n 's/.* listening on \([^ ]*\) .*/\1/p' | head -n1)
[ -n "$addr" ] || { log "the server container did not start listening"; exit 1; }
out=$(timeout 600 "${run[@]}" --rm --name msgr-client localhost/msgr-rdma:latest "${opts[@]}" \
  ping --connect "$addr" --policy lossless --verify --count 2000 --window 8 --size 4096 --timeout 120 2>&1) || {
  echo "$out" | sed 's/^/client container: /'; log "the client container failed"; exit 1; }
echo "$out" | tee "$store/ping.out" | sed 's/^/client container: /'
verified_ok 2000 "$store/ping.out" "two containers over async+rdma" || exit 1
"${podman[@]}" stop -t 10 msgr-server >/dev/null
# The traffic went through the RDMA device (RoCEv2 packets counted by rxe), not a socket.
log "containers over async+rdma: 2000 verified 4 KiB pings between two containers; $dev sent+received $(( $(pkts) - pkts0 )) RoCE packets meanwhile"
