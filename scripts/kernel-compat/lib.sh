# Helpers for the guest scripts of the kernel compatibility harness (busybox sh), sourced by
# run.sh as `. /usr/share/snapfs/lib.sh`. Results go to the console as lines
# "@@<KEY> <words...>"; bulk data (device contents) goes to a results drive. Device I/O goes
# through snapfs-guest-io (O_DIRECT from aligned buffers; see guest-io.rs for why not dd).

# say KEY WORDS...: one result line.
say() {
  echo "@@$*"
}

# create NAME TABLE: a device-mapper device from a one-line table, as LVM would (no udev).
create() {
  name=$1
  shift
  if out=$(dmsetup --noudevsync create "$name" --table "$*" 2>&1); then
    say CREATED "$name"
  else
    say CREATEFAIL "$name" "$(echo "$out" | tr '\n' ' ')"
  fi
}

# remove NAME
remove() {
  dmsetup --noudevsync remove "$1" >/dev/null 2>&1 || say REMOVEFAIL "$1"
}

# status NAME [LABEL]: "@@STATUS LABEL <dmsetup status line>" (LABEL defaults to NAME).
status() {
  say STATUS "${2:-$1}" "$(dmsetup status "$1" 2>&1 | tr '\n' ' ' | sed 's/ *$//')"
}

# dump DEV RESULTS_DEV OFFSET_MIB SIZE_MIB LABEL: copies DEV's contents into the results drive.
dump() {
  if out=$(snapfs-guest-io copy "$1" "$2" $(($3 * 1048576)) $(($4 * 1048576)) 2>&1); then
    say DUMP "$5" ok
  else
    say DUMP "$5" fail "$out"
  fi
}

# writes: stdin lines "DEV SRC DST LEN": writes LEN bytes of /guest/pattern from SRC to DEV at
# DST, in order, one at a time. A failed write prints "@@WFAIL DEV DST LEN <error>".
writes() {
  snapfs-guest-io write /guest/pattern || say ERROR "snapfs-guest-io write failed"
}

# readable DEV LABEL: whether the first sector of DEV can be read ("@@READ LABEL ok|fail").
readable() {
  if snapfs-guest-io readable "$1" 2>/dev/null; then
    say READ "$2" ok
  else
    say READ "$2" fail
  fi
}

# wait_merge NAME TIMEOUT_S: polls a snapshot-merge device until allocated == metadata sectors
# (the merge is complete, as LVM detects it). "@@MERGED NAME ok|timeout|<status>".
wait_merge() {
  i=0
  limit=$(($2 * 10))
  while [ $i -lt $limit ]; do
    # "0 <len> snapshot-merge <alloc>/<total> <meta>": split into words on purpose.
    # shellcheck disable=SC2046
    set -- "$1" "$2" $(dmsetup status "$1" 2>/dev/null)
    usage=${6:-}
    meta=${7:-}
    case "$usage" in
      */*)
        if [ "${usage%%/*}" = "$meta" ]; then
          say MERGED "$1" ok
          return
        fi
        ;;
      *)
        say MERGED "$1" "${6:-}" "${7:-}"
        return
        ;;
    esac
    sleep 0.1
    i=$((i + 1))
  done
  say MERGED "$1" timeout
}

# table NAME LABEL: "@@TABLE LABEL <dmsetup table line>" (the kernel prints the devices as
# major:minor).
table() {
  say TABLE "$2" "$(dmsetup table "$1" 2>&1 | tr '\n' ' ' | sed 's/ *$//')"
}

# devno DEV LABEL: "@@DEVNO LABEL <major>:<minor>" of a block device (as `dmsetup table`
# prints it).
devno() {
  say DEVNO "$2" "$(cat "/sys/class/block/$(basename "$1")/dev" 2>&1)"
}

# discard_limits DEV LABEL: the device's discard limits from sysfs:
# "@@LIMITS LABEL <discard_max_bytes> <discard_granularity>" (0 0: no discard).
discard_limits() {
  # The node's major and minor (hex) find its sysfs directory, dm devices included.
  # shellcheck disable=SC2046
  set -- "$1" "$2" $(stat -L -c '%t %T' "$1")
  q=/sys/dev/block/$((0x$3)):$((0x$4))/queue
  say LIMITS "$2" "$(cat "$q/discard_max_bytes" 2>&1)" "$(cat "$q/discard_granularity" 2>&1)"
}

# discard DEV OFFSET LEN LABEL: blkdiscard (BLKDISCARD) of LEN bytes at OFFSET:
# "@@DISCARD LABEL ok|fail <error>".
discard() {
  if out=$(blkdiscard -o "$2" -l "$3" "$1" 2>&1); then
    say DISCARD "$4" ok
  else
    say DISCARD "$4" fail "$(echo "$out" | tr '\n' ' ')"
  fi
}

# kernel_said PATTERN LABEL: the last kernel message containing PATTERN (fixed string), as
# "@@KMSG LABEL <message>" (empty when there is none).
kernel_said() {
  say KMSG "$2" "$(dmesg | grep -F "$1" | tail -n1)"
}
