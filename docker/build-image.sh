#!/usr/bin/env bash
# Builds the container image `msgr-rdma` from Debian packages only (no registry, no base
# image): the shared libraries an msgr binary built with `--features rdma` links, the
# RDMA user-space providers (ibverbs-providers: rxe, mlx5, ...), busybox for a shell,
# and the binary itself (stripped) as /usr/local/bin/msgr, the entry point.
#
#   docker/build-image.sh [BIN]           rootfs, then the image (podman build)
#   docker/build-image.sh rootfs DIR [BIN]  only assemble the root file system in DIR
#                                           (needs apt: run where the archive is reachable)
#   docker/build-image.sh image DIR       only build the image from DIR (needs podman;
#                                           PODMAN="podman --root ..." to use other storage)
#
# BIN defaults to target/release/msgr (cargo build --release --features rdma --bin msgr).
# The packages are the versions installed here, fetched with `apt-get download` (or taken
# from /var/cache/apt/archives), unpacked with dpkg-deb: the libraries in the image are
# the ones the binary was linked against. The list is printed and stored in the image as
# the label msgr.debian-packages.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "build-image.sh: $*" >&2; exit 1; }

# package_of FILE: the Debian package that installed FILE (through the /lib -> /usr/lib
# merge, under either name)
package_of() {
  local f=$1 alt p
  case $f in /usr/*) alt=${f#/usr} ;; *) alt=/usr$f ;; esac
  for p in "$f" "$alt" "$(readlink -f "$f")"; do
    dpkg -S "$p" 2>/dev/null | sed -n '1s/: .*//p' | grep . && return 0
  done
  die "no Debian package owns $f: the image is built from packages only"
}

build_rootfs() {
  local dir=$1 bin=$2 libs pkgs=() p ver debs work
  [ -x "$bin" ] || die "$bin not found: build it first (cargo build --release --features rdma --bin msgr)"
  libs=$(ldd "$bin" | awk '/=> \//{print $3} /^\t\/lib/{print $1}')
  grep -q libibverbs <<<"$libs" ||
    die "$bin does not link libibverbs: build it with --features rdma (cargo build --release --features rdma --bin msgr)"
  for f in $libs; do pkgs+=("$(package_of "$f")"); done
  # The verbs providers are loaded at run time (dlopen), so ldd does not list them.
  pkgs+=(ibverbs-providers busybox-static)
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sed 's/:amd64$//' | sort -u)
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  debs=()
  for p in "${pkgs[@]}"; do
    ver=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null) || die "$p is not installed here (apt-get install $p)"
    # apt-get download writes to the current directory
    if ! (cd "$work" && apt-get download -q "$p=$ver" >/dev/null 2>&1); then
      cp /var/cache/apt/archives/"${p}_${ver#*:}"_*.deb "$work/" 2>/dev/null ||
        die "cannot fetch $p $ver: apt-get download failed and it is not in /var/cache/apt/archives"
    fi
    echo "$p=$ver"
  done > "$work/packages"
  rm -rf "$dir"
  mkdir -p "$dir"
  for d in "$work"/*.deb; do dpkg-deb -x "$d" "$dir"; done
  # What a root file system needs beyond the packages' files
  mkdir -p "$dir"/{tmp,etc,usr/local/bin,root,dev,proc,sys,run}
  chmod 1777 "$dir/tmp"
  echo 'root:x:0:0:root:/root:/bin/sh' > "$dir/etc/passwd"
  echo 'root:x:0:' > "$dir/etc/group"
  echo 'include /etc/ld.so.conf.d/*.conf' > "$dir/etc/ld.so.conf"
  ldconfig -r "$dir"
  ln -sf busybox "$dir/bin/sh"
  objcopy --strip-debug "$bin" "$dir/usr/local/bin/msgr"
  cp "$work/packages" "$dir/etc/msgr-debian-packages"
  echo "build-image.sh: root file system in $dir from $(wc -l < "$work/packages") Debian packages:" >&2
  sed 's/^/  /' "$work/packages" >&2
}

build_image() {
  local dir=$1
  [ -x "$dir/usr/local/bin/msgr" ] || die "$dir is not a root file system made by '$0 rootfs'"
  read -ra podman <<<"${PODMAN:-podman}"
  command -v "${podman[0]}" >/dev/null || die "podman not found (apt-get install podman)"
  "${podman[@]}" build --quiet -f "$here/Containerfile" -t msgr-rdma \
    --label "msgr.debian-packages=$(paste -sd' ' "$dir/etc/msgr-debian-packages")" "$dir"
}

case ${1:-} in
  rootfs) [ -n "${2:-}" ] || die "usage: $0 rootfs DIR [BIN]"; build_rootfs "$2" "${3:-target/release/msgr}" ;;
  image) [ -n "${2:-}" ] || die "usage: $0 image DIR"; build_image "$2" ;;
  *)
    dir=$(mktemp -d)/rootfs
    build_rootfs "$dir" "${1:-target/release/msgr}"
    build_image "$dir"
    rm -rf "$(dirname "$dir")"
    ;;
esac
