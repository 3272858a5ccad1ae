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
