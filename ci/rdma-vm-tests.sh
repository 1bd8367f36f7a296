#!/usr/bin/env bash
# Builds the RDMA stack's tests and the msgr binary (feature rdma) on the host and runs
# them inside the soft-RoCE VM (ci/rxe-vm/run.sh: rxe0 on lo, GID index 1) in one boot:
# device tests, the messenger suite, the CLI over async+rdma, the perftest baseline and
# the msgr-vs-posix benchmark, two containers over async+rdma (ci/rdma-vm-guest.sh).
# Usage: ci/rdma-vm-tests.sh   (BENCH_SECS per row, default 2, and BENCH_SIZES, default
# 64,4k,64k, reach the benchmark in the guest)
# The guest runs on TSC (RXE_VM_KERNEL_ARGS): under TCG it would otherwise pick HPET, on
# which every clock_gettime is a system call — as no RDMA host's clock is — and the
# syscall counts would measure the VM's clock rather than msgr. Set RXE_VM_KERNEL_ARGS=
# (empty) to run on the VM's own choice.
set -euo pipefail
cd "$(dirname "$0")/.."
. ci/lib.sh
apt_install libibverbs-dev librdmacm-dev libclang-dev pkg-config strace ceph-mon ceph-common python3 \
  python3-rados podman crun busybox-static binutils
export RXE_VM_KERNEL_ARGS=${RXE_VM_KERNEL_ARGS-"tsc=reliable clocksource=tsc"}
device_bins=$(test_bins -p msgr-stack-rdma --tests)
[ -n "$device_bins" ] || { log "no RDMA device test binaries built"; exit 1; }
suite=$(test_bins --release --features rdma --test rdma_messenger)
[ -n "$suite" ] || { log "the rdma_messenger suite did not build"; exit 1; }
cp "$suite" target/release/rdma-messenger-test
cargo build --release --features rdma --bin msgr
# The container image's root file system, from Debian packages (apt reaches the archive
# here, not in the VM); the VM builds the image from it and runs two containers.
bash docker/build-image.sh rootfs target/container-rootfs target/release/msgr
ci/rxe-vm/run.sh -q --share "$PWD" -e "BENCH_SECS=${BENCH_SECS:-2}" \
  -e "BENCH_SIZES=${BENCH_SIZES:-64,4k,64k}" -- bash ci/rdma-vm-guest.sh $device_bins
