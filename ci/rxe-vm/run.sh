#!/usr/bin/env bash
# ci/rxe-vm/run.sh - run one command inside a throw-away qemu VM whose kernel has
# soft-RoCE (rdma_rxe), for machines whose own kernel has no RDMA.
#
#   ci/rxe-vm/run.sh [--mem MB] [--smp N] [--timeout S] [--share DIR] [--log FILE]
#                    [-e VAR=VAL]... [-q] [--] COMMAND [ARG]...
#
# What the command sees:
#   * the host's root filesystem, read-only (9p), so host binaries (rdma-core,
#     perftest, cargo-built test binaries) run unchanged; the --share directory
#     (default: the current directory) read-write at the same path; fresh tmpfs on
#     /tmp, /run and /dev/shm. It starts in the current directory.
#   * rxe0 on lo (127.0.0.1, RoCEv2 GID index 1) - plain verbs;
#     rxe1 on dummy0 (10.77.1.1/24, GID index 1) - verbs and rdma_cm.
#     The VM has no NIC at all (-nic none): nothing leaves it.
#   * environment: PATH/HOME/LANG, the host's RUST_*, CARGO_* and MSGR_* variables,
#     -e VAR=VAL, and RXE_VM=1 RXE_VM_VERBS_DEV=rxe0 RXE_VM_GID_INDEX=1
#     RXE_VM_CM_DEV=rxe1 RXE_VM_CM_ADDR=10.77.1.1.
#
# Output: the command's stdout+stderr on our stdout (a second serial port, raw).
# The guest console (kernel + boot messages) goes to --log (default
# $RXE_LAB/last-console.log) and to stderr unless -q.
#
# Exit status: the command's own, or for failures of the VM itself:
#   250 timeout (--timeout, default 1800 s)
#   251 the guest stopped without reporting a status (panic, crash, out of memory)
#   252 host-side preparation failed (bad option, apt, kernel download, initramfs)
#   253 qemu could not be started
#   254 guest init failed (kernel modules, 9p mounts)
#   255 rxe device setup failed in the guest
# A message on stderr says which, and what to look at.
#
# rdma_cm does not work on 127.0.0.1 (rdma_resolve_route: No such device): tests using
# it must take rxe1/10.77.1.1. The guest's root is the host's, read-only: write under
# the share, /tmp, /run or /dev/shm (tmpfs, lost at power-off).
#
# Cargo runner (from the workspace root; cargo runs each test binary in its package
# directory, so share the whole workspace explicitly):
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="ci/rxe-vm/run.sh -q --"
#   CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/ci/rxe-vm/run.sh -q --share $PWD --"
# Each binary boots its own VM (~10 s); for many binaries build with
# `cargo test --no-run` and run them all in one VM with a loop.
#
# Environment: RXE_LAB (cache dir, default /var/tmp/msgr-rxe-lab), RXE_KPKG (kernel
# package to use, e.g. linux-image-6.1.0-56-amd64; default: what linux-image-amd64
# depends on, recorded on first use), RXE_VM_BZIMAGE=1 (boot the compressed bzImage
# instead of the unpacked vmlinux, ~7 s slower), RXE_VM_KERNEL_ARGS (appended to the
# guest kernel's command line, e.g. "tsc=reliable clocksource=tsc": under TCG the guest
# otherwise settles on HPET, and every clock_gettime is then a system call). KVM is not
# used: TCG only (the nested KVM of the CI machines cannot boot a stock kernel).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)
LAB=${RXE_LAB:-/var/tmp/msgr-rxe-lab}
MEM=1024 SMP=2 TIMEOUT=1800 SHARE=$PWD LOGFILE= QUIET=0
EXTRA_ENV=()

say() { [ "$QUIET" = 1 ] || printf '[rxe-vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { # die CODE MESSAGE...
  local code=$1; shift
  printf '[rxe-vm] ERROR (exit %s): %s\n' "$code" "$*" >&2
  exit "$code"
}
usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case $1 in
    --mem|--smp|--timeout|--share|--log|-e)
      [ $# -ge 2 ] || die 252 "option $1 needs a value"
      case $1 in
        --mem) MEM=$2;; --smp) SMP=$2;; --timeout) TIMEOUT=$2;;
        --share) SHARE=$2;; --log) LOGFILE=$2;;
        -e) [[ $2 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die 252 "-e wants VAR=VALUE, got '$2'"
            EXTRA_ENV+=("$2");;
      esac
      shift 2;;
    -q) QUIET=1; shift;;
    -h|--help) usage; exit 0;;
    --) shift; break;;
    -*) die 252 "unknown option $1 (see --help)";;
    *) break;;
  esac
done
[ $# -gt 0 ] || die 252 "no command given (usage: run.sh [options] -- COMMAND...)"
for n in "$MEM" "$SMP" "$TIMEOUT"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die 252 "--mem/--smp/--timeout want a positive integer, got '$n'"
done
[ -d "$SHARE" ] || die 252 "--share $SHARE is not a directory"
SHARE=$(cd "$SHARE" && pwd -P)
WORKDIR=$(pwd -P)

T_START=$(date +%s.%N)
mkdir -p "$LAB" || die 252 "cannot create the cache dir RXE_LAB=$LAB"

# ------------------------------------------------------------------ host packages
# ci/lib.sh brings apt_install (waits for the dpkg lock, retries failures).
# shellcheck source=../lib.sh
. "$HERE/../lib.sh"
log() { printf '[rxe-vm %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
apt_install qemu-system-x86 busybox-static kmod cpio gzip xz-utils rdma-core ibverbs-providers \
  ibverbs-utils rdmacm-utils perftest iproute2 >&2 ||
  die 252 "installing the host packages failed: check apt (network, /etc/apt/sources.list, root)"

# Everything below that writes to the cache dir is serialised between runs.
exec 9>"$LAB/.lock"
flock 9

# ------------------------------------------------------------------ guest kernel
# Debian's own kernel, never installed: downloaded with apt-get download and
# unpacked under $LAB with dpkg-deb -x, module index built with depmod -b.
kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
KPKG=${RXE_KPKG:-}
if [ -z "$KPKG" ] && [ -s "$LAB/kernel-package" ]; then KPKG=$(cat "$LAB/kernel-package"); fi
if [ -z "$KPKG" ]; then
  KPKG=$(kernel_pkg)
  if [ -z "$KPKG" ]; then
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
    KPKG=$(kernel_pkg)
  fi
  [ -n "$KPKG" ] || die 252 "cannot tell which kernel linux-image-amd64 depends on (apt-cache depends linux-image-amd64); set RXE_KPKG"
  echo "$KPKG" > "$LAB/kernel-package"
fi
KVER=${KPKG#linux-image-}
KTREE=$LAB/$KPKG
if [ ! -e "$KTREE/.unpacked" ]; then
  say "downloading and unpacking $KPKG (once)"
  rm -rf "$KTREE" "$LAB/download"
  mkdir -p "$LAB/download"
  ok=0
  for try in 1 2 3 4 5; do
    # apt-get download runs as _apt when it can; the directory must be writable for it
    chmod 777 "$LAB/download"
    if (cd "$LAB/download" && apt-get -q download "$KPKG" >&2); then ok=1; break; fi
    apt-get -o DPkg::Lock::Timeout=600 update -qq >&2 || true
    log "apt-get download $KPKG failed (try $try), retrying in $((try * 10))s"; sleep $((try * 10))
  done
  [ $ok = 1 ] || die 252 "apt-get download $KPKG failed: check apt's network access (or set RXE_KPKG)"
  deb=$(ls "$LAB/download/${KPKG}"_*.deb 2>/dev/null | head -n1)
  [ -n "$deb" ] || die 252 "no .deb for $KPKG in $LAB/download"
  dpkg-deb -x "$deb" "$KTREE" && depmod -b "$KTREE" "$KVER" ||
    die 252 "unpacking $deb or depmod failed (disk space in $LAB?)"
  dpkg-deb -f "$deb" Version > "$KTREE/.version"
  rm -rf "$LAB/download"
  touch "$KTREE/.unpacked"
fi
VMLINUZ=$KTREE/boot/vmlinuz-$KVER
[ -r "$VMLINUZ" ] || die 252 "$VMLINUZ is missing: remove $KTREE and retry"
# Under TCG, unpacking the xz-compressed bzImage costs the guest ~7 s per boot. Debian
# kernels are PVH-capable (CONFIG_PVH=y), so qemu can start the plain ELF vmlinux
# directly: unpack it once here. RXE_VM_BZIMAGE=1 boots the bzImage instead.
KERNEL=$VMLINUZ
if [ -z "${RXE_VM_BZIMAGE:-}" ] && grep -q '^CONFIG_PVH=y' "$KTREE/boot/config-$KVER" 2>/dev/null &&
   grep -q '^CONFIG_KERNEL_XZ=y' "$KTREE/boot/config-$KVER"; then
  if [ ! -s "$KTREE/vmlinux" ]; then
    off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$VMLINUZ" | head -n1 | cut -d: -f1)
    # xz complains about the data after the stream (rest of the bzImage): expected
    [ -n "$off" ] && tail -c +$((off + 1)) "$VMLINUZ" | xz -dcq > "$KTREE/vmlinux.part" 2>/dev/null
    if [ "$(head -c4 "$KTREE/vmlinux.part" 2>/dev/null | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
      mv "$KTREE/vmlinux.part" "$KTREE/vmlinux"
    else
      rm -f "$KTREE/vmlinux.part"; say "could not unpack vmlinux from $VMLINUZ, booting the bzImage"
    fi
  fi
  [ -s "$KTREE/vmlinux" ] && KERNEL=$KTREE/vmlinux
fi

# ------------------------------------------------------------------ initramfs
# busybox + /init + the modules below with their dependencies, in load order.
# crc32_generic: rxe computes its ICRC through the crypto API's "crc32" (a module).
MODULES=(crc32_generic virtio_pci 9pnet_virtio 9p dummy rdma_rxe ib_uverbs rdma_ucm)
BUSYBOX=$(command -v busybox || echo /bin/busybox)
key=$( { echo "$KPKG ${MODULES[*]}"; cat "$HERE/guest-init.sh" "$BUSYBOX"; } | sha256sum | cut -c1-16)
INITRD=$LAB/initrd-$KVER-$key.cpio.gz
if [ ! -s "$INITRD" ]; then
  say "building $INITRD"
  rm -f "$LAB"/initrd-*.cpio.gz   # older builds (other inputs) are not used any more
  tree=$(mktemp -d "$LAB/initrd-tree.XXXXXX")
  mkdir -p "$tree"/{bin,dev,proc,sys,ctl,sysroot} "$tree/lib/modules/$KVER"
  cp "$BUSYBOX" "$tree/bin/busybox" && cp "$HERE/guest-init.sh" "$tree/init" && chmod 755 "$tree/init" ||
    die 252 "cannot assemble the initramfs in $tree"
  for m in "${MODULES[@]}"; do
    modprobe -d "$KTREE" -S "$KVER" --show-depends "$m" ||
      die 252 "module $m not found in $KTREE (modprobe --show-depends)"
  done | awk '$1 == "insmod" && !seen[$2]++ { print $2 }' > "$tree/modlist.abs"
  : > "$tree/modules"
  while read -r ko; do
    cp "$ko" "$tree/lib/modules/$KVER/" || die 252 "cannot copy $ko"
    echo "/lib/modules/$KVER/$(basename "$ko")" >> "$tree/modules"
  done < "$tree/modlist.abs"
  rm -f "$tree/modlist.abs"
  (cd "$tree" && find . -print | cpio -o -H newc --quiet | gzip -1) > "$INITRD.part" &&
    mv "$INITRD.part" "$INITRD" || die 252 "writing $INITRD failed"
  rm -rf "$tree"
fi
flock -u 9

# ------------------------------------------------------------------ control dir
# Shared with the guest (9p, read-write): what to run, and where the status goes.
CTL=$(mktemp -d "$LAB/run.XXXXXX") || die 252 "cannot create a run dir in $LAB"
CONSOLE=$CTL/console.log
QEMU_PID= TAIL_PID=
cleanup() {
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
  [ -n "$TAIL_PID" ] && kill "$TAIL_PID" 2>/dev/null
  [ -f "$CONSOLE" ] && cp "$CONSOLE" "${LOGFILE:-$LAB/last-console.log}" 2>/dev/null
  rm -rf "$CTL"
}
trap cleanup EXIT
trap 'say "interrupted, stopping the VM"; exit 130' INT TERM HUP

printf '%s' "$SHARE" > "$CTL/share"
printf '%s' "$WORKDIR" > "$CTL/workdir"
printf '%s' "$HERE/guest-run.sh" > "$CTL/script"
printf '%s\0' "$@" > "$CTL/argv"
{
  while IFS= read -r name; do
    printf 'export %s=%q\n' "$name" "${!name}"
  done < <(compgen -e | grep -E '^(RUST_|CARGO_|MSGR_)')
  for kv in "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
} > "$CTL/env"

# ------------------------------------------------------------------ boot
# ttyS0: guest console -> $CONSOLE;  ttyS1: the command's output -> our stdout.
QEMU=(qemu-system-x86_64 -accel tcg,thread=multi -cpu max -M q35 -smp "$SMP" -m "$MEM"
  -nodefaults -no-user-config -display none -no-reboot -nic none
  -kernel "$KERNEL" -initrd "$INITRD"
  -append "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic${RXE_VM_KERNEL_ARGS:+ $RXE_VM_KERNEL_ARGS}"
  -chardev "file,id=console,path=$CONSOLE" -serial chardev:console
  -chardev stdio,id=cmdout,signal=off -serial chardev:cmdout
  -fsdev "local,id=hostroot,path=/,readonly=on,security_model=passthrough,multidevs=remap"
  -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot
  -fsdev "local,id=share,path=$SHARE,security_model=passthrough,multidevs=remap"
  -device virtio-9p-pci,fsdev=share,mount_tag=share
  -fsdev "local,id=ctl,path=$CTL,security_model=passthrough"
  -device virtio-9p-pci,fsdev=ctl,mount_tag=ctl)
say "booting $KPKG ${KERNEL##*/} (tcg, ${MEM} MiB, ${SMP} cpus), share $SHARE, timeout ${TIMEOUT}s"
: > "$CONSOLE"
T_BOOT=$(date +%s.%N)
timeout -k 10 "$TIMEOUT" "${QEMU[@]}" < /dev/null &
QEMU_PID=$!
if [ "$QUIET" = 0 ]; then
  tail -n +1 -f --pid="$QEMU_PID" "$CONSOLE" 2>/dev/null | tr -d '\r' >&2 &
  TAIL_PID=$!
fi
wait "$QEMU_PID"
qemu_rc=$?
QEMU_PID=
T_END=$(date +%s.%N)
if [ -n "$TAIL_PID" ]; then wait "$TAIL_PID" 2>/dev/null; TAIL_PID=; fi

# ------------------------------------------------------------------ verdict
mark() { grep -a -o "rxe-vm\[[0-9.]*\]: $1" "$CONSOLE" | head -n1 | sed 's/^rxe-vm\[\([0-9.]*\)\].*/\1/'; }
UP_INIT=$(mark 'init') UP_READY=$(mark 'rxe ready') UP_DONE=$(mark 'command exited')
KEEP="${LOGFILE:-$LAB/last-console.log}"
if [ "$QUIET" = 0 ]; then
  awk -v a="$T_START" -v b="$T_BOOT" -v c="$T_END" -v i="${UP_INIT:-?}" -v r="${UP_READY:-?}" -v d="${UP_DONE:-?}" \
    'BEGIN { printf "[rxe-vm] timings: prepare %.1fs, vm %.1fs (guest uptime: init %ss, rxe ready %ss, command done %ss), total %.1fs\n", b-a, c-b, i, r, d, c-a }' >&2
fi
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
  die 250 "timed out after ${TIMEOUT}s: the command did not finish (raise --timeout; guest console: $KEEP)"
fi
if [ -s "$CTL/status" ]; then
  rc=$(cat "$CTL/status")
  if [ -s "$CTL/failure" ]; then
    case $rc in
      254) die 254 "guest init failed: $(cat "$CTL/failure") (guest console: $KEEP)";;
      255) die 255 "rxe setup failed in the guest: $(cat "$CTL/failure") (guest console: $KEEP)";;
    esac
  fi
  [[ $rc =~ ^[0-9]+$ ]] || die 251 "garbled exit status '$rc' from the guest (guest console: $KEEP)"
  say "exit status $rc"
  exit "$rc"
fi
# no control dir to write to (9p did not come up): the console has the reason
code=$(grep -a -o 'rxe-vm-status=[0-9]*' "$CONSOLE" | tail -n1 | cut -d= -f2)
if [ -n "$code" ]; then
  die "$code" "guest init failed: $(grep -a -o 'rxe-vm-failure: .*' "$CONSOLE" | tail -n1 | cut -d' ' -f2- | tr -d '\r') (guest console: $KEEP)"
fi
if [ ! -s "$CONSOLE" ] && [ "$qemu_rc" != 0 ]; then
  die 253 "qemu failed to start (exit $qemu_rc): check that qemu-system-x86_64 runs and that $KERNEL and $INITRD are readable (RXE_VM_BZIMAGE=1 boots the bzImage); messages above"
fi
tail -n 20 "$CONSOLE" | tr -d '\r' | sed 's/^/[rxe-vm console] /' >&2
die 251 "the VM stopped without an exit status (qemu exit $qemu_rc): kernel panic, crash or out of memory? Try a larger --mem; guest console: $KEEP"
