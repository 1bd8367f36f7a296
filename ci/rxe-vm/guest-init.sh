#!/bin/busybox sh
# /init (PID 1) of the initramfs built by ci/rxe-vm/run.sh. busybox only.
# Loads the modules listed in /modules, mounts the three 9p shares (control dir,
# host root read-only, the --share dir read-write), chroots into the host root to
# run guest-run.sh, stores its exit status in the control dir and powers off.
# Lines on the console starting with "rxe-vm[UPTIME]:" are read by run.sh.
/bin/busybox --install -s /bin
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

note() { echo "rxe-vm[$(cut -d' ' -f1 /proc/uptime)]: $*"; }
halt() {
  sync
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger
}
# give_up CODE MESSAGE: report a failure of the VM itself (not of the command)
give_up() {
  note "rxe-vm-failure: $2"
  note "rxe-vm-status=$1"
  if grep -q ' /ctl 9p ' /proc/mounts; then
    echo "$2" > /ctl/failure
    echo "$1" > /ctl/status
  fi
  halt
}

note "init"
bad=
while read -r ko; do
  out=$(insmod "$ko" 2>&1) || case $out in *"File exists"*) ;; *) bad="$bad ${ko##*/}: $out;";; esac
done < /modules

O9P=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$O9P" ctl /ctl || give_up 254 "cannot mount the control share (9p modules:$bad)"
[ -z "$bad" ] || give_up 254 "insmod failed:$bad"

SHARE=$(cat /ctl/share)
WORKDIR=$(cat /ctl/workdir)
SCRIPT=$(cat /ctl/script)
R=/sysroot
mount -t 9p -o "$O9P,ro,cache=loose" hostroot $R || give_up 254 "cannot mount the host root (9p hostroot)"
mount -t proc proc $R/proc &&
  mount -t sysfs sysfs $R/sys &&
  mount -t devtmpfs devtmpfs $R/dev &&
  mkdir -p $R/dev/pts $R/dev/shm &&
  mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts &&
  mount -t tmpfs -o mode=1777 tmpfs $R/dev/shm &&
  mount -t tmpfs -o mode=1777 tmpfs $R/tmp &&
  mount -t tmpfs -o mode=755 tmpfs $R/run &&
  mkdir -p $R/run/rxe-vm &&
  mount -o bind /ctl $R/run/rxe-vm ||
  give_up 254 "cannot mount proc/sys/dev/tmpfs inside the host root"
# A share under /tmp, /run or /dev/shm is hidden by the guest's own tmpfs there: make the
# mount point inside that tmpfs (the read-only host root refuses anything else).
[ -d "$R$SHARE" ] || mkdir -p "$R$SHARE" 2>/dev/null || give_up 254 "share $SHARE does not exist in the guest"
mount -t 9p -o "$O9P,cache=mmap" share "$R$SHARE" || give_up 254 "cannot mount the share $SHARE (9p share)"
[ -f "$R$SCRIPT" ] || give_up 254 "guest script $SCRIPT is not visible in the guest"
note "mounted"

# guest-run.sh sets up rxe and then execs the command (output on ttyS1)
chroot $R /bin/bash "$SCRIPT" "$WORKDIR"
rc=$?
# guest-run.sh leaves a failure note only when the rxe setup failed
[ -s /ctl/failure ] && rc=255
echo "$rc" > /ctl/status
note "command exited status=$rc"
umount "$R$SHARE" 2>/dev/null
umount $R/run/rxe-vm 2>/dev/null
umount /ctl 2>/dev/null
halt
