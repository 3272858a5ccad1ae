//! `snapfs mount`: parses everything before forking or opening anything, so usage errors exit
//! with status 2 and touch no device.

use snapfs::daemon::{self, MountRequest};
use snapfs::options::MountOptions;
use std::path::PathBuf;

pub const ABOUT: &str = "\
Mount ORIGIN with its snapshots on MOUNTPOINT. The mount shows `origin`, one file per snapshot,
`status` (dmsetup-style status lines) and `control` (write a command, read the answer; absent
with ro).

Options (-o, comma separated, repeatable):
  snapshot=NAME:COW[:STORE[:CHUNK]]  attach a snapshot; STORE is P (default), PO or N; CHUNK
                                     in 512-byte sectors, or KiB with a k suffix (4k = 8).
                                     Default chunk: the on-disk size (32 for a new P/PO COW);
                                     32 for N (0 is refused for N).
      The spec is read from the right, as COW paths may contain ':': NAME ends at the first ':';
      if the last field is a chunk size and the one before it P, PO or N, both are taken; else
      if the last field is P, PO or N, it is taken; the rest is the COW path.
      Example: snapshot=daily:/dev/disk/by-path/pci-0000:00:04.0-part1:PO:8
      Feature words come last, joined by +, after a store word (and chunk): the snapshot's own
      autoextend is written with / there, as : splits the spec:
      snapshot=big:/v/big.cow:P:8:discard_zeroes_cow+autoextend=70/20/10G
  registry=PATH          record the snapshots served (also those taken live) in PATH and attach
                         them again at the next mount; one registry per mount
  log=PATH               append the daemon's log to PATH once the mount is live (default:
                         stderr; under systemd that is the journal of the mount unit)
  ro, rw                 read-only (no device is ever written) or read-write (default)
  allow_other, allow_root  let other users (or root) in; default: the mounting user only
  uid=N, gid=N           owner of the files (default: the mounting user); other users need
                         allow_other as well
  origin_discard         pass discards on the origin down to the origin device
  warn=L1:L2:...         warn (log, status) as a snapshot's COW usage crosses these percents;
                         default 80:85:90:95; warn=none for none
  notify=CMD             run CMD MOUNTPOINT SNAPSHOT PERCENT EVENT (absolute path) at each
                         warning and when a snapshot becomes invalid or overflows (10 s timeout)
  autoextend=THRESHOLD:PERCENT[:MAX]  grow a file COW by PERCENT of its size when its usage
                         reaches THRESHOLD percent, up to MAX (e.g. 70:20:10G; lvm.conf's
                         snapshot_autoextend_threshold/percent); block devices are not grown;
                         a snapshot's own autoextend= feature word wins over it
  writeback=SIZE         answer origin first writes before their copy-out, holding at most
                         SIZE of their data (plus as much in reused buffers; default 64M;
                         0: off; 1M to 1G); fsync and flushes wait for what was answered
  default_permissions    always in force
  Ignored: defaults, _netdev, nofail, auto, noauto, dev, nodev, suid, nosuid, exec, noexec,
  user, users, nouser, owner, atime, noatime, relatime, strictatime, sync, async, x-*,
  comment=*. Any other option is an error.

Files: origin and snapshots 0600 (0400 with ro), status 0444, control 0600. Their size is
fixed: truncation fails (EINVAL), writes past the end fail (ENOSPC). Every open is direct I/O
(origin and snapshots always agree), so shared mmap is not available.
Control commands (one per write; read control for the answer):
  snapshot NAME COW [STORE [CHUNK]], drop NAME, merge [NAME], help

Without -f, snapfs returns once the mount is live (exit 0) or reports why it is not (exit 1);
usage errors exit 2. Stop it with `umount MOUNTPOINT` or SIGTERM (both flush every device).
Origin and snapshot files carry the same filesystem UUID: XFS needs `-o nouuid` to mount two of
them at once, and fstab entries by UUID may pick either.";

pub const EXAMPLES: &str = "\
Examples:
  snapfs mount /var/lib/vols/data.img /srv/data-vol
  snapfs mount /dev/vg/data /srv/data-vol -o snapshot=nightly:/dev/vg/nightly-cow:P:16
  snapfs mount data.img vol -o registry=/var/lib/snapfs/data.reg,log=/var/log/snapfs-data.log
  mount -t snapfs /dev/vg/data /srv/data-vol -o snapshot=nightly:/dev/vg/nightly-cow  (helper)";

#[derive(clap::Args)]
pub struct Args {
    /// The origin device or image file
    origin: PathBuf,
    /// An existing directory
    mountpoint: PathBuf,
    /// Mount options (see below); repeatable
    #[arg(short = 'o', value_name = "OPTIONS")]
    options: Vec<String>,
    /// Stay in the foreground
    #[arg(short = 'f')]
    foreground: bool,
    /// Only check the options and that the files exist; mount nothing (mount -f)
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> i32 {
    let options = match MountOptions::parse(&args.options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("snapfs: {e}");
            return 2;
        }
    };
    let request = MountRequest {
        origin: args.origin,
        mountpoint: args.mountpoint,
        options,
        foreground: args.foreground,
    };
    if args.check {
        daemon::check(request)
    } else {
        daemon::run(request)
    }
}
