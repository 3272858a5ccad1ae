#!/usr/bin/env bash
# snapfs performance benchmark: the raw image, snapfs, and the peers doing the same job, side by
# side in one run. Writes docs/performance.md (tables) and docs/performance.png (chart).
#
#   scripts/bench.sh                 full run: 1 GiB origin, 3 repeats (about 12 minutes here)
#   BENCH_QUICK=1 scripts/bench.sh   development: 256 MiB origin, 1 repeat
#
# Environment: BENCH_DIR (work directory, default /var/tmp/snapfs-bench; needs about 4x the
# origin size free, plus sparse files), BENCH_REPEATS, BENCH_SIZE_MIB, BENCH_OUT (markdown
# file), BENCH_PNG, BENCH_PEERS (default "qsd nbd xmount"; empty for none), BENCH_CASES (default
# "basic seqwrite randwrite snapread ext4 mount1m backup"), BENCH_MAX_LOAD (wait, at most a
# minute, for the 1-minute load average to drop below it before each repeat; default 1.5),
# BENCH_KEEP=1 (keep the work directory), BENCH_SNAPFS (another snapfs binary, e.g. an older
# build for a before/after comparison), BENCH_WRITEBACK (a `writeback=` value for every snapfs
# mount, e.g. 0; unset: the binary's default).
#
# Method (see docs/performance.md): every case starts on fresh state (fresh COWs, overlays and
# caches of the peers, a new mount), page caches are dropped before each measured fio run, and
# fio uses direct I/O on the exposed file. A write case is timed as fio's own runtime plus an
# fdatasync of the file afterwards. Figures are throughputs; the report gives each as a ratio
# to the raw image measured in the same repeat (and to the best peer), min/median/max over the
# repeats. Next to each raw workload the same workload runs on the FUSE floor
# (examples/fuse_floor.rs: FUSE with snapfs's settings and nothing else), which shows how much of
# the gap to raw is the FUSE round trip. Root is needed (FUSE, loop devices, drop_caches). Every
# step has a timeout.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)

QUICK=${BENCH_QUICK:-0}
if [ "$QUICK" = 1 ]; then
  SIZE_MIB=${BENCH_SIZE_MIB:-256}
  REPEATS=${BENCH_REPEATS:-1}
else
  SIZE_MIB=${BENCH_SIZE_MIB:-1024}
  REPEATS=${BENCH_REPEATS:-3}
fi
DIR=${BENCH_DIR:-/var/tmp/snapfs-bench}
OUT_MD=${BENCH_OUT:-$ROOT/docs/performance.md}
OUT_PNG=${BENCH_PNG:-${OUT_MD%.md}.png}
PEERS=${BENCH_PEERS-qsd nbd xmount}
CASES=${BENCH_CASES:-basic seqwrite randwrite snapread ext4 mount1m backup}
MAX_LOAD=${BENCH_MAX_LOAD:-1.5}
SIZE=$((SIZE_MIB << 20))
RAND_IO=$((SIZE / 8))          # bytes of 4 KiB random I/O per random case
SYNC_IO=$((SIZE / 128))        # bytes of 4 KiB random writes each followed by an fsync
FS_FILE_MIB=$((SIZE_MIB / 4))  # file written by fio inside ext4
T_FIO=300                      # seconds, any one fio run
T_STEP=120                     # seconds, any mount, unmount, merge or preparation step
SNAPFS=${BENCH_SNAPFS:-$ROOT/target/release/snapfs}
GEN_COW=$ROOT/target/release/examples/bench_cow
FLOOR=$ROOT/target/release/examples/fuse_floor
RESULTS=$DIR/results.tsv
LOG=$DIR/bench.log

say() { printf '%s %s\n' "$(date +%T)" "$*" | tee -a "$LOG" >&2; }
die() { say "FATAL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (FUSE mounts, loop devices, drop_caches)"

# ----- packages --------------------------------------------------------------------------------

# The peers' packages on Debian 12: qemu-storage-daemon ships in qemu-system-common, qemu-img in
# qemu-utils; nbdfuse in libnbd-bin. A package that does not exist or fails to install only
# removes its peer (reported in the results).
install_packages() {
  export DEBIAN_FRONTEND=noninteractive
  local want=(fio gnuplot-nox jq bc e2fsprogs util-linux coreutils python3 procps
    qemu-utils qemu-system-common nbdkit libnbd-bin xmount)
  local missing=()
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing ${missing[*]}"
  timeout 300 apt-get update -qq >>"$LOG" 2>&1 || say "apt-get update failed"
  if ! timeout 600 apt-get install -y -qq "${missing[@]}" >>"$LOG" 2>&1; then
    for p in "${missing[@]}"; do
      timeout 300 apt-get install -y -qq "$p" >>"$LOG" 2>&1 || say "package $p: not installable here"
    done
  fi
}

# ----- helpers ---------------------------------------------------------------------------------

record() { printf '%s\t%s\t%s\n' "$REP" "$1" "$2" >>"$RESULTS"; }   # repeat, key, value
note() { printf 'note\t%s\n' "$*" >>"$RESULTS"; say "note: $*"; }

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

now_ns() { date +%s%N; }

is_mounted() { mountpoint -q "$1" 2>/dev/null || grep -q " $1 " /proc/mounts; }

wait_until() { # seconds, command...: polls every 50 ms
  local limit=$1; shift
  local deadline=$(($(date +%s) + limit))
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || return 1
    sleep 0.05
  done
}

kill_wait() { # pids (processes this script started): SIGTERM, then wait (30 s at most)
  local p
  for p in "$@"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  for p in "$@"; do [ -n "$p" ] && wait_until 30 bash -c "! kill -0 $p 2>/dev/null"; done
  return 0
}

umount_retry() { # path: umount, retrying while busy, lazily in the end
  local m=$1 i
  is_mounted "$m" || return 0
  for i in $(seq 1 50); do
    umount "$m" 2>/dev/null && return 0
    sleep 0.1
  done
  umount -l "$m" 2>/dev/null || true
}

# fio on FILE; prints "BYTES SECONDS" (fio's own runtime, I/O only; startup excluded).
# Args: file rw bs qd size [io_size] [extra fio args...]
fio_run() {
  local file=$1 rw=$2 bs=$3 qd=$4 size=$5 io=${6:-$5}
  shift 6 || shift $#
  local engine=psync
  [ "$qd" -gt 1 ] && engine=libaio
  local json=$DIR/fio.json
  timeout "$T_FIO" fio --name=bench --filename="$file" --direct=1 --rw="$rw" --bs="$bs" \
    --iodepth="$qd" --ioengine="$engine" --size="$size" --io_size="$io" --randrepeat=1 \
    --allow_file_create=0 --invalidate=1 --output-format=json --output="$json" "$@" \
    >>"$LOG" 2>&1 || { say "fio $rw on $file failed or timed out"; return 1; }
  jq -r '.jobs[0] | "\(.read.io_bytes + .write.io_bytes) \(.job_runtime / 1000)"' "$json"
}

# fdatasync of FILE; prints the seconds it took.
fsync_time() {
  local t0 t1
  t0=$(now_ns)
  timeout "$T_FIO" sync --data "$1" || say "fdatasync $1 failed"
  t1=$(now_ns)
  echo "scale=6; ($t1 - $t0) / 1000000000" | bc
}

mibps() { echo "scale=3; $1 / 1048576 / $2" | bc; } # bytes seconds

# One measured workload on FILE, recorded under KEY (MiB/s). Workloads:
#   seqread   1 MiB sequential read, QD1, the whole file
#   randread  4 KiB random read, QD16 (libaio), RAND_IO bytes, no block twice
#   seqwrite  1 MiB sequential write, QD1, the whole file, then fdatasync
#   randwrite 4 KiB random write, QD16, RAND_IO bytes, no block twice, then fdatasync
#   overwrite = seqwrite over data written before (the caller arranges that)
#   randsync  4 KiB random write, QD1, each followed by an fsync (fio fsync=1), SYNC_IO bytes
measure() {
  local key=$1 wl=$2 file=$3 size=${4:-$SIZE} out
  drop_caches
  case $wl in
    seqread) out=$(fio_run "$file" read 1M 1 "$size" "$size") || return 0 ;;
    randread) out=$(fio_run "$file" randread 4k 16 "$size" "$RAND_IO") || return 0 ;;
    seqwrite | overwrite) out=$(fio_run "$file" write 1M 1 "$size" "$size") || return 0 ;;
    randwrite) out=$(fio_run "$file" randwrite 4k 16 "$size" "$RAND_IO") || return 0 ;;
    randsync) out=$(fio_run "$file" randwrite 4k 1 "$size" "$SYNC_IO" --fsync=1) || return 0 ;;
    *) die "unknown workload $wl" ;;
  esac
  record_fio "$key" "$wl" "$file" "$out"
}

# Records fio's "BYTES SECONDS" (OUT) under KEY in MiB/s; a write workload (WL) also pays for
# an fdatasync of FILE right after.
record_fio() {
  local key=$1 wl=$2 file=$3 out=$4 bytes secs extra=0
  read -r bytes secs <<<"$out"
  case $wl in *write) extra=$(fsync_time "$file") ;; esac
  secs=$(echo "$secs + $extra" | bc)
  record "$key" "$(mibps "$bytes" "$secs")"
  say "  $key: $(mibps "$bytes" "$secs") MiB/s ($bytes bytes in ${secs}s)"
}

# ----- snapfs ----------------------------------------------------------------------------------

MNT=$DIR/mnt
SNAP_PID=

# snapfs_mount ORIGIN [snapshot specs...]: fresh sparse COWs are the caller's job.
snapfs_mount() {
  local origin=$1; shift
  local args=() s
  for s in "$@"; do args+=(-o "snapshot=$s"); done
  [ -n "${BENCH_WRITEBACK:-}" ] && args+=(-o "writeback=$BENCH_WRITEBACK")
  mkdir -p "$MNT"
  timeout "$T_STEP" "$SNAPFS" mount "$origin" "$MNT" "${args[@]}" 2>>"$DIR/snapfs.log" ||
    die "snapfs mount failed: $(tail -3 "$DIR/snapfs.log")"
  SNAP_PID=$(snapfs_pid)
}

snapfs_pid() { pgrep -f "snapfs mount .* $MNT( |\$)" | head -1; }

snapfs_umount() {
  local pid=$SNAP_PID
  umount_retry "$MNT"
  if [ -n "$pid" ]; then
    wait_until "$T_STEP" bash -c "! kill -0 $pid 2>/dev/null" || say "snapfs $pid still running"
  fi
  SNAP_PID=
}

# fresh_cows N PREFIX CHUNK: creates N sparse COWs; prints the snapshot specs.
fresh_cows() {
  local n=$1 prefix=$2 chunk=$3 i
  for i in $(seq 1 "$n"); do
    rm -f "$DIR/$prefix$i.cow"
    truncate -s $((SIZE + SIZE / 8 + (64 << 20))) "$DIR/$prefix$i.cow"
    echo "s$i:$DIR/$prefix$i.cow:P:$chunk"
  done
}

# ----- the FUSE floor ----------------------------------------------------------------------------
# examples/fuse_floor.rs: the image served over FUSE with snapfs's kernel settings, threads and
# device code, and no snapshot logic. Its figures are what any server like snapfs can reach on
# this machine; the gap between them and raw is the FUSE round trip.

FLOOR_MNT=$DIR/floor
FLOOR_PID=

floor_measure() { # key workload: one workload on a fresh floor mount of the origin
  mkdir -p "$FLOOR_MNT"
  "$FLOOR" "$DIR/origin.img" "$FLOOR_MNT" 2>>"$LOG" &
  FLOOR_PID=$!
  if wait_until 30 is_mounted "$FLOOR_MNT"; then
    measure "$1" "$2" "$FLOOR_MNT/data"
  else
    say "the FUSE floor did not mount"
  fi
  umount_retry "$FLOOR_MNT"
  kill_wait "$FLOOR_PID"
  FLOOR_PID=
}

# ----- peers -----------------------------------------------------------------------------------
# Each peer_start prints the file to run fio on; peer_stop tears it down and removes its state.

PEER_FILE=
NBDFUSE_PID=
peer_available() {
  case $1 in
    qsd) command -v qemu-storage-daemon >/dev/null && command -v qemu-img >/dev/null ;;
    nbd) command -v nbdkit >/dev/null && command -v nbdfuse >/dev/null &&
      timeout 20 nbdkit -U - --filter=cow memory 1M --run true >/dev/null 2>&1 ;;
    xmount) command -v xmount >/dev/null ;;
  esac
}

peer_start() {
  local p=$1 origin=$2
  case $p in
    qsd)
      # A qcow2 overlay on the raw image, both opened with O_DIRECT (the fastest setting;
      # the export answers FOPEN_DIRECT_IO like snapfs).
      rm -f "$DIR/ov.qcow2" "$DIR/qsd.pid"
      qemu-img create -q -f qcow2 -b "$origin" -F raw "$DIR/ov.qcow2"
      : >"$DIR/qsd.export"
      qemu-storage-daemon \
        --blockdev "driver=file,node-name=base,filename=$origin,read-only=on,cache.direct=on" \
        --blockdev driver=raw,node-name=basefmt,file=base,read-only=on \
        --blockdev "driver=file,node-name=ovf,filename=$DIR/ov.qcow2,cache.direct=on" \
        --blockdev driver=qcow2,node-name=ov,file=ovf,backing=basefmt \
        --export "type=fuse,id=e,node-name=ov,mountpoint=$DIR/qsd.export,writable=on" \
        --pidfile "$DIR/qsd.pid" >>"$LOG" 2>&1 &
      wait_until 30 is_mounted "$DIR/qsd.export" || return 1
      PEER_FILE=$DIR/qsd.export ;;
    nbd)
      # nbdkit's file plugin under the cow filter (overlay in a temporary file), exported on a
      # Unix socket, and nbdfuse presenting it as a file.
      rm -f "$DIR/nbd.sock" "$DIR/nbdkit.pid"
      mkdir -p "$DIR/nbdmnt"
      TMPDIR=$DIR nbdkit -U "$DIR/nbd.sock" -P "$DIR/nbdkit.pid" --filter=cow file \
        "file=$origin" >>"$LOG" 2>&1 || return 1
      wait_until 30 test -S "$DIR/nbd.sock" || return 1
      nbdfuse "$DIR/nbdmnt" --unix "$DIR/nbd.sock" >>"$LOG" 2>&1 &
      NBDFUSE_PID=$!
      wait_until 30 is_mounted "$DIR/nbdmnt" || return 1
      PEER_FILE=$DIR/nbdmnt/nbd ;;
    xmount)
      # xmount with a cache file taking the writes (its 'virtual write support').
      rm -f "$DIR/xmount.cache"
      mkdir -p "$DIR/xmnt"
      xmount --in raw "$origin" --cache "$DIR/xmount.cache" "$DIR/xmnt" >>"$LOG" 2>&1 || return 1
      wait_until 30 is_mounted "$DIR/xmnt" || return 1
      PEER_FILE=$DIR/xmnt/$(basename "${origin%.*}").dd ;;
  esac
}

peer_stop() {
  case $1 in
    qsd)
      umount_retry "$DIR/qsd.export"
      kill_wait "$(cat "$DIR/qsd.pid" 2>/dev/null)"
      rm -f "$DIR/ov.qcow2" ;;
    nbd)
      umount_retry "$DIR/nbdmnt"
      kill_wait "${NBDFUSE_PID:-}"
      kill_wait "$(cat "$DIR/nbdkit.pid" 2>/dev/null)" ;;
    xmount)
      # xmount daemonizes: find ours by its mountpoint, which is this script's own.
      local xpid
      xpid=$(pgrep -f "xmount .*$DIR/xmnt\$" | head -1)
      umount_retry "$DIR/xmnt"
      kill_wait "$xpid"
      rm -f "$DIR/xmount.cache" ;;
  esac
}

cleanup() {
  set +e
  local l
  for m in "$DIR/fs" "$MNT" "$FLOOR_MNT" "$DIR/qsd.export" "$DIR/nbdmnt" "$DIR/xmnt" "$DIR/mnt1m"; do
    is_mounted "$m" && umount -l "$m"
  done
  for l in $(losetup -j "$DIR/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$l"; done
  for l in $(losetup -a 2>/dev/null | grep "$DIR" | cut -d: -f1); do losetup -d "$l"; done
  [ -f "$DIR/qsd.pid" ] && kill "$(cat "$DIR/qsd.pid")" 2>/dev/null
  [ -f "$DIR/nbdkit.pid" ] && kill "$(cat "$DIR/nbdkit.pid")" 2>/dev/null
  if [ "${BENCH_KEEP:-0}" != 1 ]; then
    rm -f "$DIR"/*.img "$DIR"/*.cow "$DIR"/*.qcow2 "$DIR"/*.cache "$DIR/cp.copy"
  fi
}

# ----- cases -----------------------------------------------------------------------------------

# shellcheck source=bench/backup.sh
. "$ROOT/scripts/bench/backup.sh"   # case_backup: incremental backup (issue 15)

# Reads and writes on the raw image, snapfs without snapshot, and the peers.
case_basic() {
  local wl p
  for wl in seqread randread; do
    say "$wl"
    measure "raw.$wl" "$wl" "$DIR/origin.img"
    floor_measure "floor.$wl" "$wl"
    snapfs_mount "$DIR/origin.img"
    measure "snapfs0.$wl" "$wl" "$MNT/origin"
    snapfs_umount
    for p in $ACTIVE_PEERS; do
      peer_start "$p" "$DIR/origin.img" || { say "$p did not start"; peer_stop "$p"; continue; }
      measure "$p.$wl" "$wl" "$PEER_FILE"
      peer_stop "$p"
    done
  done
}

# The raw read figure of workload WL in this repeat, measured here if `basic` did not: the
# device-serial limit of first writes is computed from it (scripts/bench/report.py).
raw_read_once() {
  grep -q "^$REP	raw.$1	" "$RESULTS" 2>/dev/null || measure "raw.$1" "$1" "$DIR/origin.img"
}

# First writes (sequential 1 MiB, then the overwrite of the same bytes), with 0 to 8
# snapshots, the peers, and the merge of the 1-snapshot case against cp.
case_seqwrite() {
  local n p specs
  say "seqwrite / overwrite"
  raw_read_once seqread
  measure "raw.seqwrite" seqwrite "$DIR/origin.img"
  measure "raw.overwrite" overwrite "$DIR/origin.img"
  floor_measure "floor.seqwrite" seqwrite
  floor_measure "floor.overwrite" overwrite
  for n in 0 1 2 4 8; do
    mapfile -t specs < <(fresh_cows "$n" w 32)
    snapfs_mount "$DIR/origin.img" "${specs[@]}"
    measure "snapfs$n.seqwrite" seqwrite "$MNT/origin"
    if [ "$n" = 0 ] || [ "$n" = 1 ]; then
      measure "snapfs$n.overwrite" overwrite "$MNT/origin"
    fi
    if [ "$n" = 1 ]; then
      merge_vs_cp
    fi
    snapfs_umount
    rm -f "$DIR"/w*.cow
  done
  for p in $ACTIVE_PEERS; do
    peer_start "$p" "$DIR/origin.img" || { say "$p did not start"; peer_stop "$p"; continue; }
    measure "$p.seqwrite" seqwrite "$PEER_FILE"
    measure "$p.overwrite" overwrite "$PEER_FILE"
    peer_stop "$p"
  done
}

# Merge of a COW holding every chunk of the origin, timed from the command to the snapshot's
# disappearance from status; against cp of the COW file (same bytes) plus its fdatasync.
merge_vs_cp() {
  local t0 t1 bytes
  # Allocated minus metadata sectors: the data chunks the merge copies back.
  bytes=$(($(awk '/^s1: /{split($5,a,"/"); print a[1] - $6; exit}' "$MNT/status") * 512))
  drop_caches
  t0=$(now_ns)
  echo "merge s1" >"$MNT/control"
  if ! wait_until "$T_STEP" bash -c "! grep -q '^s1: ' '$MNT/status'"; then
    say "merge did not finish in ${T_STEP}s"
    return 0
  fi
  t1=$(now_ns)
  record "merge.snapfs" "$(mibps "$bytes" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)")"
  drop_caches
  t0=$(now_ns)
  timeout "$T_STEP" cp --sparse=never "$DIR/w1.cow" "$DIR/cp.copy"
  timeout "$T_STEP" sync --data "$DIR/cp.copy"
  t1=$(now_ns)
  rm -f "$DIR/cp.copy"
  record "merge.cp" "$(mibps "$bytes" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)")"
  say "  merge: $bytes bytes; snapfs $(tail -2 "$RESULTS" | head -1 | cut -f3) MiB/s, cp $(tail -1 "$RESULTS" | cut -f3) MiB/s"
}

# 4 KiB random first writes at QD16 with 0 to 8 snapshots: with 4 KiB chunks every write copies
# a chunk out. With one snapshot also 4 KiB random first writes each followed by an fsync (the
# regression guard of write-back: every write waits for its own copy-out).
case_randwrite() {
  local n p specs
  say "randwrite"
  raw_read_once randread
  measure "raw.randwrite" randwrite "$DIR/origin.img"
  measure "raw.randsync" randsync "$DIR/origin.img"
  floor_measure "floor.randwrite" randwrite
  for n in 0 1 2 4 8; do
    mapfile -t specs < <(fresh_cows "$n" r 8)
    snapfs_mount "$DIR/origin.img" "${specs[@]}"
    measure "snapfs$n.randwrite" randwrite "$MNT/origin"
    snapfs_umount
    rm -f "$DIR"/r*.cow
  done
  # Its own fresh snapshot: fio repeats its offsets, and they must be first writes again.
  mapfile -t specs < <(fresh_cows 1 r 8)
  snapfs_mount "$DIR/origin.img" "${specs[@]}"
  measure "snapfs1.randsync" randsync "$MNT/origin"
  snapfs_umount
  rm -f "$DIR"/r*.cow
  for p in $ACTIVE_PEERS; do
    peer_start "$p" "$DIR/origin.img" || { say "$p did not start"; peer_stop "$p"; continue; }
    measure "$p.randwrite" randwrite "$PEER_FILE"
    peer_stop "$p"
  done
}

# Snapshot reads: first of a fresh snapshot (every chunk still on the origin, as a backup
# taken right after the snapshot reads it), then with every other chunk in the COW (16 KiB
# chunks, interleaved: the worst case for sequential reads, which alternate between the two
# devices).
case_snapread() {
  local specs
  say "snapshot reads: untouched, then half the chunks excepted"
  mapfile -t specs < <(fresh_cows 1 h 32)
  snapfs_mount "$DIR/origin.img" "${specs[@]}"
  measure "snapread0.seqread" seqread "$MNT/s1"
  timeout "$T_FIO" fio --name=prep --filename="$MNT/origin" --direct=1 --rw=write:16k --bs=16k \
    --iodepth=16 --ioengine=libaio --size="$SIZE" --allow_file_create=0 >>"$LOG" 2>&1 ||
    say "preparing the half-excepted snapshot failed"
  say "  $(grep '^s1: ' "$MNT/status")"
  measure "snapread.seqread" seqread "$MNT/s1"
  measure "snapread.randread" randread "$MNT/s1"
  snapfs_umount
  rm -f "$DIR"/h*.cow
}

# ext4 on a loop device (direct I/O) over the raw image and over snapfs's origin with one
# snapshot; fio inside the filesystem: a sequential file write + fsync (first writes below),
# random 4 KiB writes into it + fsync, random 4 KiB reads of it.
case_ext4() {
  local what file dev specs wl
  say "ext4 on loop"
  for what in raw snapfs; do
    if [ "$what" = raw ]; then
      file=$DIR/fs.img
    else
      mapfile -t specs < <(fresh_cows 1 e 32)
      snapfs_mount "$DIR/fs.img" "${specs[@]}"
      file=$MNT/origin
    fi
    dev=$(losetup --direct-io=on --show -f "$file")
    mkdir -p "$DIR/fs"
    mount -t ext4 "$dev" "$DIR/fs"
    rm -f "$DIR/fs/data"
    touch "$DIR/fs/data"
    for wl in seqwrite randwrite randread; do
      ext4_measure "ext4.$what.$wl" "$wl" "$DIR/fs/data"
    done
    umount_retry "$DIR/fs"
    losetup -d "$dev"
    if [ "$what" = snapfs ]; then
      sleep 0.2
      snapfs_umount
      rm -f "$DIR"/e*.cow
    fi
  done
}

ext4_measure() {
  local key=$1 wl=$2 file=$3 size=$((FS_FILE_MIB << 20)) out
  drop_caches
  case $wl in
    seqwrite) out=$(fio_run "$file" write 1M 1 "$size" "$size" --allow_file_create=1) || return 0 ;;
    randwrite) out=$(fio_run "$file" randwrite 4k 16 "$size" $((size / 4))) || return 0 ;;
    randread) out=$(fio_run "$file" randread 4k 16 "$size" $((size / 4))) || return 0 ;;
  esac
  record_fio "$key" "$wl" "$file" "$out"
}

# Mount time and memory with 1 million exceptions (scattered: no two form a run) against a
# mount of the same origin with an empty snapshot.
case_mount1m() {
  local t0 t1 pid rss_empty rss_full hwm mnt=$DIR/mnt1m
  say "mount with 1 000 000 exceptions"
  mkdir -p "$mnt"
  rm -f "$DIR/empty.cow"
  truncate -s 64M "$DIR/empty.cow"
  for what in empty full; do
    local cow=$DIR/big.cow
    [ "$what" = empty ] && cow=$DIR/empty.cow
    drop_caches
    t0=$(now_ns)
    timeout "$T_STEP" "$SNAPFS" mount "$DIR/big.img" "$mnt" -o "snapshot=s:$cow:P:8" \
      2>>"$DIR/snapfs.log" || die "mount of the 1M-exception COW failed"
    t1=$(now_ns)
    pid=$(pgrep -f "snapfs mount .* $mnt" | head -1)
    head -c 4096 "$mnt/s" >/dev/null # one request served: the mount is live
    local rss hwm_now
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$pid/status")
    hwm_now=$(awk '/^VmHWM/{print $2}' "/proc/$pid/status")
    if [ "$what" = empty ]; then
      rss_empty=$rss
    else
      rss_full=$rss
      hwm=$hwm_now
      record "mount1m.seconds" "$(echo "scale=4; ($t1 - $t0) / 1000000000" | bc)"
      record "mount1m.bytes_per_exception" "$(echo "scale=2; ($rss_full - $rss_empty) * 1024 / 1000000" | bc)"
      record "mount1m.peak_bytes_per_exception" "$(echo "scale=2; ($hwm - $rss_empty) * 1024 / 1000000" | bc)"
      say "  mount $(echo "scale=3; ($t1 - $t0) / 1000000000" | bc)s, RSS $rss_empty -> $rss_full KiB (peak $hwm KiB)"
    fi
    umount_retry "$mnt"
    wait_until "$T_STEP" bash -c "! kill -0 $pid 2>/dev/null" || true
  done
}

wait_for_quiet() {
  local i
  for i in $(seq 1 12); do
    awk -v max="$MAX_LOAD" '{exit !($1 < max)}' /proc/loadavg && return 0
    sleep 5
  done
  say "load still $(cut -d' ' -f1-3 /proc/loadavg) after a minute: measuring anyway"
}

# ----- main ------------------------------------------------------------------------------------

mkdir -p "$DIR"
: >"$LOG"
trap cleanup EXIT
cleanup
install_packages
for t in fio jq bc python3 losetup mkfs.ext4; do
  command -v "$t" >/dev/null || die "$t is missing"
done
say "building snapfs (release), the COW generator and the FUSE floor"
(cd "$ROOT" && cargo build --release --bin snapfs --example bench_cow --example fuse_floor >>"$LOG" 2>&1) ||
  die "cargo build failed (see $LOG)"

: >"$RESULTS"
printf 'meta\tsize_mib\t%s\nmeta\trepeats\t%s\nmeta\tquick\t%s\n' "$SIZE_MIB" "$REPEATS" "$QUICK" >>"$RESULTS"
printf 'meta\tkernel\t%s\nmeta\tcpus\t%s\nmeta\tmax_pages_limit\t%s\n' "$(uname -r)" "$(nproc)" \
  "$(cat /proc/sys/fs/fuse/max_pages_limit 2>/dev/null || echo n/a)" >>"$RESULTS"
printf 'meta\tdate\t%s\nmeta\tcommit\t%s\n' "$(date -u +%FT%TZ)" \
  "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo '+changes')" >>"$RESULTS"

ACTIVE_PEERS=
for p in $PEERS; do
  if peer_available "$p"; then
    ACTIVE_PEERS="$ACTIVE_PEERS $p"
    printf 'meta\tpeer.%s\t%s\n' "$p" "$(case $p in
      qsd) qemu-storage-daemon --version | head -1 ;;
      nbd) echo "nbdkit $(nbdkit --version | head -1 | cut -d' ' -f2), nbdfuse $(nbdfuse --version | head -1 | cut -d' ' -f2)" ;;
      xmount) xmount --version 2>&1 | grep -m1 -o 'xmount v[0-9.]*' ;;
    esac)" >>"$RESULTS"
  else
    note "peer $p skipped: its programs are not installed or do not work here"
  fi
done

say "preparing a ${SIZE_MIB} MiB origin of random data"
head -c "$SIZE" /dev/urandom >"$DIR/origin.img"
cp "$DIR/origin.img" "$DIR/fs.img"
mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 "$DIR/fs.img"
# 1 000 000 scattered exceptions of 4 KiB chunks over an 8 GiB sparse origin.
rm -f "$DIR/big.img"
truncate -s 8G "$DIR/big.img"
"$GEN_COW" "$DIR/big.cow" $((8 << 30)) 8 1000000 >>"$LOG"

for REP in $(seq 1 "$REPEATS"); do
  wait_for_quiet
  say "== repeat $REP of $REPEATS (load $(cut -d' ' -f1-3 /proc/loadavg))"
  printf '%s\tload\t%s\n' "$REP" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RESULTS"
  for c in $CASES; do "case_$c"; done
done

say "writing $OUT_MD and $OUT_PNG"
python3 "$ROOT/scripts/bench/report.py" "$RESULTS" "$OUT_MD" "$OUT_PNG"
say "done"
