# shellcheck shell=bash
# The `backup` case of scripts/bench.sh (sourced by it; uses its helpers and variables):
# `snapfs backup`'s incremental cycle against copying exactly the changed bytes and against a
# full copy of the volume.
#
# A volume of BENCH_BACKUP_MIB (default 1024) MiB of random data, mounted with a registry, gets
# a first (full, untimed) backup; then 1 % of it is rewritten as scattered 16 KiB chunk writes
# (distinct chunks, the backup snapshots' chunk size), caches are dropped, and these are timed,
# each ending with its data flushed:
#   backup.incremental  snapfs backup MNT --to IMAGE: snapshot, changes, copy, fsync, rotate
#   backup.ranges       exactly the changed chunks read from the same snapshot file and written
#                       into a copy of the image (python pread/pwrite, then fsync): the floor
#                       for any tool that knows which bytes changed
#   backup.cp_changed   cp of one contiguous file as large as the changed bytes (host to host)
#   backup.full         snapfs backup --full: the same run copying everything
#   backup.full_snapfs  cp of the whole snapshot file (MNT/NAME) into a new file, then sync
#   backup.full_raw     cp of the whole origin image (host to host), then sync
# Recorded as seconds (key.s) and the changed or copied bytes (backup.changed_bytes,
# backup.copied_bytes).

case_backup() {
  local mib=${BENCH_BACKUP_MIB:-1024}
  local size=$((mib << 20)) chunk=16384
  local vol=$DIR/backup-origin.img img=$DIR/backup-image.img reg=$DIR/backup.reg
  local list=$DIR/backup-chunks.txt out t0 t1 base new changed
  rm -f "$vol" "$img" "$img.snapfs-backup" "$reg" "$DIR"/backup-*.cow "$DIR/backup.copy"
  say "backup: ${mib} MiB volume, 1 % changed in 16 KiB chunks"
  head -c "$size" /dev/urandom >"$vol"
  mkdir -p "$MNT"
  timeout "$T_STEP" "$SNAPFS" mount "$vol" "$MNT" -o "registry=$reg" 2>>"$DIR/snapfs.log" ||
    die "snapfs mount failed: $(tail -3 "$DIR/snapfs.log")"
  SNAP_PID=$(snapfs_pid)
  out=$(timeout "$T_STEP" "$SNAPFS" backup "$MNT" --to "$img" --json 2>>"$LOG") || die "first backup failed"
  base=$(jq -r .snapshot <<<"$out")
  # Distinct random chunks, 1 % of the volume, written through the mount.
  python3 - "$MNT/origin" "$size" "$chunk" "$list" <<'PY'
import os, random, sys
path, size, chunk, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
n = size // 100 // chunk
chunks = sorted(random.Random(15).sample(range(size // chunk), n))
fd = os.open(path, os.O_WRONLY)
for c in chunks:
    os.pwrite(fd, os.urandom(chunk), c * chunk)
os.fsync(fd)
os.close(fd)
open(out, "w").write("\n".join(str(c) for c in chunks) + "\n")
PY
  changed=$(($(wc -l <"$list") * chunk))
  record "backup.changed_bytes" "$changed"
  cp --sparse=always "$img" "$DIR/backup.copy"
  drop_caches
  t0=$(now_ns)
  out=$(timeout "$T_STEP" "$SNAPFS" backup "$MNT" --to "$img" --json 2>>"$LOG") || die "incremental backup failed"
  t1=$(now_ns)
  new=$(jq -r .snapshot <<<"$out")
  record "backup.copied_bytes" "$(jq -r .copied_bytes <<<"$out")"
  record "backup.incremental.s" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)"
  [ "$new" != "$base" ] || die "backup took no new snapshot"
  drop_caches
  t0=$(now_ns)
  python3 - "$MNT/$new" "$DIR/backup.copy" "$chunk" "$list" <<'PY'
import os, sys
src, dst, chunk, listing = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
s, d = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
for line in open(listing):
    at = int(line) * chunk
    os.pwrite(d, os.pread(s, chunk, at), at)
os.fsync(d)
PY
  t1=$(now_ns)
  record "backup.ranges.s" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)"
  cmp -s "$DIR/backup.copy" "$img" || note "backup: the ranges copy differs from the image"
  rm -f "$DIR/backup.copy"
  head -c "$changed" /dev/urandom >"$DIR/backup.changed"
  drop_caches
  t0=$(now_ns)
  cp --sparse=never "$DIR/backup.changed" "$DIR/backup.copy" && sync --data "$DIR/backup.copy"
  t1=$(now_ns)
  record "backup.cp_changed.s" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)"
  rm -f "$DIR/backup.copy" "$DIR/backup.changed"
  drop_caches
  t0=$(now_ns)
  timeout "$T_STEP" cp --sparse=never "$MNT/$new" "$DIR/backup.copy" && sync --data "$DIR/backup.copy"
  t1=$(now_ns)
  record "backup.full_snapfs.s" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)"
  rm -f "$DIR/backup.copy"
  drop_caches
  t0=$(now_ns)
  timeout "$T_STEP" "$SNAPFS" backup "$MNT" --to "$img" --full --json >>"$LOG" 2>&1 || die "full backup failed"
  t1=$(now_ns)
  record "backup.full.s" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)"
  snapfs_umount
  drop_caches
  t0=$(now_ns)
  timeout "$T_STEP" cp --sparse=never "$vol" "$DIR/backup.copy" && sync --data "$DIR/backup.copy"
  t1=$(now_ns)
  record "backup.full_raw.s" "$(echo "scale=6; ($t1 - $t0) / 1000000000" | bc)"
  rm -f "$DIR/backup.copy" "$vol" "$img" "$img.snapfs-backup" "$reg" "$DIR"/backup-*.cow "$list"
  say "  backup: incremental $(grep -P '\tbackup.incremental.s\t' "$RESULTS" | tail -1 | cut -f3) s," \
    "ranges $(grep -P '\tbackup.ranges.s\t' "$RESULTS" | tail -1 | cut -f3) s," \
    "cp of the changed bytes $(grep -P '\tbackup.cp_changed.s\t' "$RESULTS" | tail -1 | cut -f3) s," \
    "full backup $(grep -P '\tbackup.full.s\t' "$RESULTS" | tail -1 | cut -f3) s," \
    "cp of the snapshot $(grep -P '\tbackup.full_snapfs.s\t' "$RESULTS" | tail -1 | cut -f3) s" \
    "(raw $(grep -P '\tbackup.full_raw.s\t' "$RESULTS" | tail -1 | cut -f3) s)"
}
