#!/usr/bin/env bash
# Installs snapfs: the runtime packages (apt), a release build, `snapfs` on PATH and the mount(8)
# helper where mount(8) looks for it, with man pages and shell completions.
#
#   scripts/install.sh [--no-deps] [--no-build]
#
#   $DESTDIR$PREFIX/bin/snapfs               PREFIX=/usr/local (on PATH)
#   $DESTDIR$SBINDIR/mount.snapfs            SBINDIR=/sbin: `mount -t snapfs`, fstab type snapfs
#   $DESTDIR$SBINDIR/mount.fuse.snapfs       a symlink: fstab type fuse.snapfs
#   $DESTDIR$MANDIR/man8/snapfs.8, snapfs-SUBCOMMAND.8, mount.snapfs.8   MANDIR=$PREFIX/share/man
#   $DESTDIR$PREFIX/share/{bash-completion/completions/snapfs, zsh/site-functions/_snapfs,
#                          fish/vendor_completions.d/snapfs.fish}
#
# The man pages and completions are generated from the command-line definitions by the
# binary being installed (`snapfs generate man DIR`, `snapfs generate completions SHELL`).
#
# DESTDIR stages everything under another root (packaging, tests) and skips the packages.
# --no-deps skips the packages; --no-build installs what target/release (or $TARGET_DIR) holds.
# Packages: mount and util-linux (mount, losetup, fsfreeze), e2fsprogs (mkfs.ext4 and e2fsck, for
# `snapfs demo`), kmod (modprobe fuse). A Rust toolchain (cargo) must already be installed.
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"
SBINDIR="${SBINDIR:-/sbin}"
MANDIR="${MANDIR:-$PREFIX/share/man}"
TARGET="${TARGET_DIR:-${CARGO_TARGET_DIR:-target}/release}"
deps=1
build=1
for arg in "$@"; do
  case "$arg" in
    --no-deps) deps=0 ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
  esac
done

if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then
  echo "install.sh: installing into $PREFIX and $SBINDIR needs root (or set DESTDIR)" >&2
  exit 1
fi

if [ "$deps" = 1 ] && [ -z "$DESTDIR" ] && command -v apt-get >/dev/null; then
  need=()
  for pkg in mount util-linux e2fsprogs kmod; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ ${#need[@]} -gt 0 ]; then
    echo "== apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  # FUSE mounts need /dev/fuse.
  [ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
fi

if [ "$build" = 1 ]; then
  echo "== cargo build --release (snapfs and the mount helper)"
  cargo build --release --workspace
fi

for bin in snapfs mount-snapfs; do
  [ -x "$TARGET/$bin" ] || { echo "install.sh: $TARGET/$bin is missing: build first" >&2; exit 1; }
done
# Cargo forbids '.' in a binary name: the helper is built as mount-snapfs.
install -D -m 0755 "$TARGET/snapfs" "$DESTDIR$PREFIX/bin/snapfs"
install -D -m 0755 "$TARGET/mount-snapfs" "$DESTDIR$SBINDIR/mount.snapfs"
ln -sfn mount.snapfs "$DESTDIR$SBINDIR/mount.fuse.snapfs"
echo "== installed $DESTDIR$PREFIX/bin/snapfs"
echo "== installed $DESTDIR$SBINDIR/mount.snapfs (and mount.fuse.snapfs -> mount.snapfs)"

# Man pages and completions, generated from the one definition of the command line.
gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
"$TARGET/snapfs" generate man "$gen/man8" >/dev/null
for page in "$gen"/man8/*.8; do
  install -D -m 0644 "$page" "$DESTDIR$MANDIR/man8/$(basename "$page")"
done
for shell in bash zsh fish; do
  "$TARGET/snapfs" generate completions "$shell" >"$gen/$shell"
done
install -D -m 0644 "$gen/bash" "$DESTDIR$PREFIX/share/bash-completion/completions/snapfs"
install -D -m 0644 "$gen/zsh" "$DESTDIR$PREFIX/share/zsh/site-functions/_snapfs"
install -D -m 0644 "$gen/fish" "$DESTDIR$PREFIX/share/fish/vendor_completions.d/snapfs.fish"
echo "== installed man pages in $DESTDIR$MANDIR/man8 (man snapfs, man mount.snapfs)"
echo "== installed completions for bash, zsh and fish under $DESTDIR$PREFIX/share"
if [ -z "$DESTDIR" ]; then
  command -v snapfs >/dev/null || echo "note: $PREFIX/bin is not on your PATH" >&2
  echo "next: snapfs demo"
fi
