#!/usr/bin/env bash
# Kernel compatibility harness: boots Debian's own kernel (dm-snapshot as a module) under qemu's
# software emulation, so that COW devices written by snapfs can be checked against the real
# snapshot, snapshot-origin and snapshot-merge targets, and the other way round.
#
#   scripts/kernel-compat.sh setup     install what is missing, fetch and unpack the kernel,
#                                      build the initramfs; prints KEY=VALUE lines
#   scripts/kernel-compat.sh smoke     one boot: prints the kernel version and dm target versions
#   scripts/kernel-compat.sh boot [--timeout S] [--log FILE] GUEST_DIR [IMAGE...]
#                                      boots with IMAGE... as /dev/vda, /dev/vdb, ... and runs
#                                      GUEST_DIR/run.sh in the guest; console on stdout, each
#                                      line stamped with the seconds since the start;
#                                      exits with 124 when the guest ran out of time
#   scripts/kernel-compat.sh test [TEST_ARGS...]
#                                      runs tests/kernel_compat.rs (the scenarios); TEST_ARGS
#                                      go to the test binary (e.g. a test name)
#
# Needs root (apt-get) on Debian 12 for the first `setup`; later runs reuse the cache
# ($SNAPFS_KERNEL_CACHE, default /var/cache/snapfs-kernel; never inside the repository).
# SNAPFS_KERNEL_REFRESH=1 resolves the kernel package again (after a Debian kernel update).
# See docs/compatibility.md.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
GUEST_FILES=$HERE/kernel-compat
CACHE=${SNAPFS_KERNEL_CACHE:-/var/cache/snapfs-kernel}
# Loaded with insmod in this order (dependencies first). Missing ones are assumed built in.
MODULES=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
  dm-mod dm-bufio dm-snapshot)
BOOT_TIMEOUT_S=${SNAPFS_KERNEL_TIMEOUT:-120}

die() {
  echo "kernel-compat: error: $*" >&2
  exit 1
}
log() { echo "kernel-compat: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}" >&2
  exit "${1:-2}"
}

# --- packages ------------------------------------------------------------------------------

apt_install() {
  [ "$(id -u)" = 0 ] || die "missing $*: run as root (or apt-get install -y $*)"
  log "installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}

ensure_packages() {
  local need=()
  command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
  # The guest needs the statically linked busybox (the dynamic one has no libraries there).
  dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
  command -v cpio >/dev/null || need+=(cpio)
  command -v dmsetup >/dev/null || need+=(dmsetup)
  command -v timeout >/dev/null || need+=(coreutils)
  if [ ${#need[@]} -gt 0 ]; then
    apt_install "${need[@]}"
  fi
}

# --- the kernel ----------------------------------------------------------------------------

# The versioned image package that linux-image-amd64 depends on (e.g. linux-image-6.1.0-48-amd64).
kernel_package_name() {
  apt-cache depends linux-image-amd64 2>/dev/null |
    awk '$1 ~ /Depends:$/ && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}

ensure_kernel() {
  if [ -z "${SNAPFS_KERNEL_REFRESH:-}" ] && [ -d "$CACHE/current/root/boot" ]; then
    return
  fi
  local pkg
  pkg=$(kernel_package_name)
  if [ -z "$pkg" ]; then
    [ "$(id -u)" = 0 ] || die "cannot resolve linux-image-amd64 (run apt-get update as root)"
    apt-get update -qq
    pkg=$(kernel_package_name)
  fi
  [ -n "$pkg" ] || die "apt-cache depends linux-image-amd64 names no linux-image-<version> package"
  if [ ! -d "$CACHE/$pkg/root/boot" ]; then
    local tmp
    tmp=$(mktemp -d "$CACHE/.download.XXXXXX")
    log "downloading $pkg into $CACHE"
    if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); then
      # A stale package list names a version the mirror no longer has.
      apt-get update -qq
      pkg=$(kernel_package_name)
      (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) ||
        die "apt-get download $pkg failed"
    fi
    dpkg -x "$tmp"/*.deb "$tmp/root"
    rm -f "$tmp"/*.deb
    rm -rf "${CACHE:?}/$pkg"
    chmod 755 "$tmp"
    mv "$tmp" "$CACHE/$pkg"
  fi
  ln -sfn "$pkg" "$CACHE/current"
}

kernel_version() {
  local versions
  versions=$(ls "$CACHE/current/root/lib/modules")
  [ "$(echo "$versions" | wc -l)" = 1 ] || die "expected one module tree in $CACHE/current: $versions"
  echo "$versions"
}

# --- the initramfs -------------------------------------------------------------------------

# Prints the path of module NAME (dashes and underscores are interchangeable), decompressed into
# DIR if needed, or nothing when the kernel has no such module file.
module_file() {
  local tree=$1 name=$2 dir=$3 f alt
  alt=$(echo "$name" | tr _- -_)
  f=$(find "$tree/kernel" \( -name "$name.ko*" -o -name "$alt.ko*" \) -print -quit)
  [ -n "$f" ] || return 0
  case "$f" in
    *.ko) cp "$f" "$dir/$name.ko" ;;
    *.ko.xz) xz -dc "$f" >"$dir/$name.ko" ;;
    *.ko.zst)
      command -v zstd >/dev/null || apt_install zstd
      zstd -qdc "$f" >"$dir/$name.ko"
      ;;
    *.ko.gz) gzip -dc "$f" >"$dir/$name.ko" ;;
    *) die "unknown module compression: $f" ;;
  esac
  echo "$dir/$name.ko"
}

is_builtin() {
  local tree=$1 name=$2 alt
  alt=$(echo "$name" | tr _- -_)
  grep -qE "/($name|$alt)\.ko$" "$tree/modules.builtin" 2>/dev/null
}

# Copies a program to DIR/DEST and the libraries ldd lists for it (and the dynamic loader)
# to the same paths under DIR.
copy_program() {
  local prog=$1 dir=$2 dest=$3 lib
  mkdir -p "$(dirname "$dir/$dest")"
  cp -L "$prog" "$dir/$dest"
  for lib in $(ldd "$prog" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
    cp -L --parents "$lib" "$dir"
  done
}

build_initrd() {
  local kver tree dmsetup stamp_now out
  kver=$(kernel_version)
  tree=$CACHE/current/root/lib/modules/$kver
  dmsetup=$(command -v dmsetup)
  out=$CACHE/current/initrd.img
  stamp_now=$(cat "$GUEST_FILES/init" "$GUEST_FILES/lib.sh" "$GUEST_FILES/guest-io.rs" \
    /bin/busybox "$dmsetup" |
    sha256sum | cut -d' ' -f1)
  stamp_now="$stamp_now ${MODULES[*]}"
  if [ -f "$out" ] && [ "$(cat "$out.stamp" 2>/dev/null)" = "$stamp_now" ]; then
    return
  fi
  log "building the initramfs for $kver"
  local st
  st=$(mktemp -d "$CACHE/.initrd.XXXXXX")
  mkdir -p "$st"/{bin,sbin,proc,sys,dev,tmp,modules,usr/bin,usr/sbin,usr/share/snapfs}
  cp /bin/busybox "$st/bin/busybox"
  local applet
  for applet in $(/bin/busybox --list); do
    [ -e "$st/bin/$applet" ] || ln -s busybox "$st/bin/$applet"
  done
  copy_program "$dmsetup" "$st" usr/sbin/dmsetup
  # The guest's I/O helper (see its header for why not dd): static, so it starts fast.
  command -v rustc >/dev/null || die "rustc is needed to build the guest I/O helper"
  rustc --edition 2021 -O -C target-feature=+crt-static -o "$st/usr/bin/snapfs-guest-io" \
    "$GUEST_FILES/guest-io.rs" || die "cannot build $GUEST_FILES/guest-io.rs"
  : >"$st/modules/list"
  local m f
  for m in "${MODULES[@]}"; do
    f=$(module_file "$tree" "$m" "$st/modules")
    if [ -n "$f" ]; then
      echo "$m.ko" >>"$st/modules/list"
    elif is_builtin "$tree" "$m"; then
      log "module $m is built into $kver"
    elif [ "$m" = dm-snapshot ]; then
      die "kernel $kver has no dm-snapshot (neither a module nor built in)"
    else
      log "module $m not found in $kver: assuming it is not needed"
    fi
  done
  cp "$GUEST_FILES/init" "$st/init"
  cp "$GUEST_FILES/lib.sh" "$st/usr/share/snapfs/lib.sh"
  chmod 755 "$st/init"
  (cd "$st" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
  mv "$out.tmp" "$out"
  echo "$stamp_now" >"$out.stamp"
  rm -rf "$st"
}

setup() {
  case "$(realpath -m "$CACHE")/" in
    "$(realpath "$REPO")"/*) die "the kernel cache $CACHE must not be inside the repository" ;;
  esac
  ensure_packages
  mkdir -p "$CACHE"
  # Concurrent test processes share the cache: one builds, the others wait.
  exec 9>"$CACHE/.lock"
  flock 9
  ensure_kernel
  build_initrd
  exec 9>&-
  local kver
  kver=$(kernel_version)
  echo "KERNEL_PACKAGE=$(readlink "$CACHE/current")"
  echo "KERNEL_VERSION=$kver"
  echo "VMLINUZ=$CACHE/current/root/boot/vmlinuz-$kver"
  echo "INITRD=$CACHE/current/initrd.img"
}

# --- booting -------------------------------------------------------------------------------

# Device name of the Nth (0-based) virtio disk: vda .. vdz, vdaa ...
vd_name() {
  local n=$1 letters=abcdefghijklmnopqrstuvwxyz
  if [ "$n" -lt 26 ]; then
    echo "vd${letters:n:1}"
  else
    echo "vd${letters:n/26-1:1}${letters:n%26:1}"
  fi
}

# stamp: prefixes each console line with the seconds since the boot started ("[  12] "), so a
# boot that runs out of time shows whether the guest hung or crawled. The result parser looks
# for "@@" anywhere in a line.
stamp() {
  local line start=$SECONDS
  # The serial console ends its lines in CR LF: the CRs go here, not through tr, which would
  # hold the lines in its output buffer (a pipe) and stamp them late, or never for a guest
  # that stalls and is killed.
  while IFS= read -r line || [ -n "$line" ]; do
    printf '[%4d] %s\n' $((SECONDS - start)) "${line//$'\r'/}"
  done
}

boot() {
  local timeout_s=$BOOT_TIMEOUT_S logfile=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --timeout) timeout_s=$2; shift 2 ;;
      --log) logfile=$2; shift 2 ;;
      --) shift; break ;;
      -*) die "unknown option $1" ;;
      *) break ;;
    esac
  done
  [ $# -ge 1 ] || usage
  local guest_dir=$1
  shift
  [ -f "$guest_dir/run.sh" ] || die "$guest_dir/run.sh does not exist"
  setup >/dev/null
  local kver vmlinuz initrd
  kver=$(kernel_version)
  vmlinuz=$CACHE/current/root/boot/vmlinuz-$kver
  initrd=$CACHE/current/initrd.img

  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/snapfs-kernel-boot.XXXXXX")
  # shellcheck disable=SC2064 # expand now: work is local
  trap "rm -rf '$work'" EXIT
  tar -C "$guest_dir" -cf "$work/guest.tar" .
  [ -n "$logfile" ] || logfile=$work/console.log

  local args=() img n=0
  for img in "$@"; do
    [ -f "$img" ] || die "image $img does not exist"
    # cache=unsafe: the images are scratch copies that the host reads only after qemu exits,
    # through the same page cache, so no guest I/O needs to wait for the host's disk. A scenario
    # boot makes about a million small I/Os (chunk size 1 splits everything into 512-byte
    # requests); with cache=none each one did (see docs/compatibility.md).
    # discard=unmap: a discard the guest sends to a drive punches a hole in the image, so the
    # range reads zeroes afterwards, as on a thin or SSD-backed disk (qemu's default, ignore,
    # completes discards without doing anything). Only case `dsc` discards.
    args+=(-drive "file=$img,format=raw,if=virtio,cache=unsafe,discard=unmap")
    n=$((n + 1))
  done
  local guest_dev
  guest_dev=$(vd_name "$n")
  args+=(-drive "file=$work/guest.tar,format=raw,if=virtio,readonly=on")

  local rc=0 started=$SECONDS
  timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -no-reboot \
    -nic none -vga none -kernel "$vmlinuz" -initrd "$initrd" \
    -append "console=ttyS0 quiet panic=-1 snapfs_guest=$guest_dev" \
    "${args[@]}" </dev/null 2>&1 | stamp | tee "$logfile" || rc=${PIPESTATUS[0]}
  log "boot took $((SECONDS - started)) s"
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    log "error: the guest did not finish within ${timeout_s}s (timeout; SNAPFS_KERNEL_TIMEOUT raises it)"
    exit 124
  fi
  [ "$rc" = 0 ] || die "qemu failed with status $rc"
  local end
  end=$(sed -n 's/^.*@@END \([0-9]*\)$/\1/p' "$logfile" | tail -n1)
  [ -n "$end" ] || die "the guest stopped before the end of its script (no @@END line)"
  [ "$end" = 0 ] || die "the guest script failed with status $end"
}

smoke() {
  local d
  d=$(mktemp -d "${TMPDIR:-/tmp}/snapfs-kernel-smoke.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$d'" EXIT
  cat >"$d/run.sh" <<'EOF'
. /usr/share/snapfs/lib.sh
say UNAME "$(uname -r)"
dmsetup targets | while read -r line; do say TARGET "$line"; done
EOF
  # boot installs its own EXIT trap: run it in a subshell so both clean up.
  (boot "$d")
}

main() {
  [ $# -ge 1 ] || usage
  local cmd=$1
  shift
  case "$cmd" in
    setup) setup ;;
    boot) boot "$@" ;;
    smoke) smoke ;;
    test)
      setup >/dev/null
      cd "$REPO"
      SNAPFS_KERNEL_COMPAT=1 exec cargo test --release --test kernel_compat -- --ignored --nocapture "$@"
      ;;
    -h | --help | help) usage 0 ;;
    *) usage ;;
  esac
}

main "$@"
