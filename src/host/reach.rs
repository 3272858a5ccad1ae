//! Paths that lead back to the mount: an origin, COW, log file or registry that the mount would
//! serve to itself is refused, at mount and for a `snapshot` command.
//!
//! Why: an origin write that copies a chunk holds the chunk's range lock while it writes the
//! COW. If the COW is a file of the same mount (`MNT/origin`, `MNT/s`, a loop device over one
//! of them, a file on a filesystem on such a loop device, or a file of another snapfs mount
//! whose own COW is one of ours), that COW write is a FUSE request to this same daemon, which
//! needs the range lock the first request holds: every request thread ends up waiting, in D
//! state, and only aborting the FUSE connection frees the mount. A chain that does not come
//! back (this mount's origin is another mount's `origin`, a COW on a filesystem on another
//! mount's snapshot) is ordinary stacking and stays allowed.
//!
//! How: a path is followed to what actually stores its bytes, whatever its name (symlinks, hard
//! links, bind mounts and `/proc/PID/fd/N` all resolve to one file; `stat` sees through them):
//! - a file of this mount (its `st_dev` is the mount's) leads back;
//! - at mount time, before this mount exists, a path inside the mount point (compared by the
//!   directory's device and inode, so bind mounts of it count) leads back: once mounted, the
//!   same path names the mount's own files;
//! - a file of another snapfs mount leads wherever that mount's devices lead: they are read from
//!   its `status` file (`#: origin ... device=PATH`, `cow=PATH`);
//! - a file on a filesystem on a block device, or a block device, leads wherever the device's
//!   storage does: a partition to its disk, a loop device to its backing file
//!   (`/sys/block/loopN/loop/backing_file`, placed in the mount table by its path, which asks
//!   no filesystem), a device-mapper or md device to its `slaves`.
//!
//! Asking a FUSE filesystem (a `stat` on one, a peer's `status`) may block forever if its daemon
//! hangs, so the whole walk runs on a helper thread and the check gives up, refusing, after
//! [`CHECK_TIMEOUT`]. The walk never reads this mount's own `status`, and the only requests it
//! may send to this mount (a `stat` of one of its files, from a control-command thread) are
//! answered by the other request threads, which hold nothing the command holds.

use crate::host::mountinfo::{self, MountEntry};
use crate::status::Report;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The longest a check may take. A local walk takes well under a millisecond; what can take
/// long is a FUSE daemon on the way that does not answer, and then no answer is coming.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Devices stacked deeper than this are refused: a bound on the walk (the kernel itself allows
/// few levels of block stacking).
const DEPTH_MAX: usize = 16;

/// What "this mount" is.
#[derive(Clone, Debug)]
pub struct Own {
    /// `st_dev` of the mount's files, once it is mounted.
    dev: Option<libc::dev_t>,
    /// The mount point, canonical.
    mountpoint: PathBuf,
    /// Device and inode of the mount point directory before mounting (mount-time checks).
    covered: Option<(libc::dev_t, u64)>,
}

impl Own {
    /// Before mounting on `mountpoint` (canonical, an existing directory).
    pub fn before_mount(mountpoint: &Path) -> Own {
        let covered = std::fs::metadata(mountpoint)
            .ok()
            .map(|m| (m.dev() as libc::dev_t, m.ino()));
        Own {
            dev: None,
            mountpoint: mountpoint.to_path_buf(),
            covered,
        }
    }

    /// The live mount on `mountpoint` whose files have device number `dev`.
    pub fn live(mountpoint: &Path, dev: libc::dev_t) -> Own {
        Own {
            dev: Some(dev),
            mountpoint: mountpoint.to_path_buf(),
            covered: None,
        }
    }
}

/// This process's live mount, set once it is mounted (see [`set_live`]).
static LIVE: OnceLock<Own> = OnceLock::new();

/// Records the live mount, for [`check_snapshot_cow`] and the log reopened on SIGHUP.
pub fn set_live(own: Own) {
    let _ = LIVE.set(own);
}

/// The check a `snapshot` command makes before it opens its COW: refused when `cow` is a file of
/// this mount or leads back to it (see the module documentation). Without a live mount in this
/// process (the library used on its own) there is nothing to lead back to.
pub fn check_snapshot_cow(name: &str, cow: &Path) -> Result<(), String> {
    let Some(own) = LIVE.get() else {
        return Ok(());
    };
    let item = Item {
        what: format!("COW {}", cow.display()),
        path: cow.to_path_buf(),
        role: Role::Device,
    };
    check(own.clone(), vec![item], true).map_err(|e| format!("snapshot {name}: {e}"))
}

/// The check before the log file is reopened (SIGHUP): the log must not lead into the mount.
pub fn check_live_log(path: &Path) -> Result<(), String> {
    let Some(own) = LIVE.get() else {
        return Ok(());
    };
    let item = Item {
        what: format!("log file {}", path.display()),
        path: path.to_path_buf(),
        role: Role::Log,
    };
    check(own.clone(), vec![item], true)
}

/// What a checked path is for, which decides what the refusal says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The origin or a COW.
    Device,
    Log,
    Registry,
    /// The image `snapfs backup` writes (checked by the command, not the daemon).
    BackupImage,
}

impl Role {
    fn why(self) -> &'static str {
        match self {
            Role::Device => {
                "a mount cannot use its own files as its origin or a COW, directly or through \
                 other mounts: its writes would wait on themselves and hang it"
            }
            Role::Log => {
                "the daemon must never write into its own mount (nor into a directory the mount hides)"
            }
            Role::BackupImage => {
                "a backup cannot be written into the volume it copies: it would overwrite the \
                 volume with itself, block by block"
            }
            Role::Registry => {
                "the registry is rewritten beside itself after every snapshot and drop, which \
                 cannot be done inside the mount: every snapshot would fail"
            }
        }
    }
}

/// One path to check.
#[derive(Clone, Debug)]
pub struct Item {
    /// How the refusal names it: `origin /img/o.img`, `COW /x.cow of snapshot a`, ...
    pub what: String,
    pub path: PathBuf,
    pub role: Role,
}

/// Checks `items` on a helper thread, within [`CHECK_TIMEOUT`]: a log file or registry may not
/// be one of the devices (under any name), a block device, nor each other, and (`walk`) no item
/// may lead back to the mount. The first failure is the refusal. A helper that does not answer
/// in time is left behind, blocked on whatever did not answer (the process exits, or the
/// thread ends when that filesystem answers).
pub fn check(own: Own, items: Vec<Item>, walk: bool) -> Result<(), String> {
    let first = items.first().map(|i| i.what.clone()).unwrap_or_default();
    // The item being looked at, for the message if the look does not come back.
    let current = Arc::new(Mutex::new(first.clone()));
    let (tx, rx) = mpsc::channel();
    let looking = current.clone();
    let spawned = std::thread::Builder::new()
        .name("snapfs-reach".to_string())
        .spawn(move || {
            let outcome = same_files(&items).and_then(|()| {
                if !walk {
                    return Ok(());
                }
                let mut walk = Walk::new(own);
                items.iter().try_for_each(|item| {
                    *looking.lock() = item.what.clone();
                    walk.item(item)
                })
            });
            let _ = tx.send(outcome);
        });
    let helper = match spawned {
        Ok(helper) => helper,
        Err(e) => return Err(format!("cannot check {first}: cannot start a thread ({e})")),
    };
    match rx.recv_timeout(CHECK_TIMEOUT) {
        Ok(outcome) => {
            // Gone before the caller goes on: the mount forks, and blocks signals, with no
            // other thread running.
            let _ = helper.join();
            outcome
        }
        Err(_) => Err(format!(
            "cannot tell within {} s whether {} leads back to this mount: a filesystem on the \
             way (a FUSE mount?) does not answer",
            CHECK_TIMEOUT.as_secs(),
            current.lock()
        )),
    }
}

/// A log file or registry that is a device (the same file or block device under any name)
/// would be written into it; a log file that is the registry would corrupt it.
fn same_files(items: &[Item]) -> Result<(), String> {
    let ids: Vec<Option<FileId>> = items.iter().map(|i| FileId::of(&i.path)).collect();
    let devices = || {
        items
            .iter()
            .zip(&ids)
            .filter(|(i, _)| i.role == Role::Device)
    };
    let mut seen: Vec<(&Item, FileId)> = Vec::new();
    for (item, id) in items.iter().zip(&ids) {
        if matches!(item.role, Role::Device | Role::BackupImage) {
            continue;
        }
        let Some(id) = *id else { continue };
        if let Some((device, _)) = devices().find(|(_, d)| **d == Some(id)) {
            let written = match item.role {
                Role::Log => "log lines",
                _ => "records",
            };
            return Err(format!(
                "{} is the {}: its {written} would be written into the device",
                item.what, device.what
            ));
        }
        if let FileId::Block(_) = id {
            return Err(format!(
                "{} is a block device: give it a file (writing it would overwrite the device)",
                item.what
            ));
        }
        if let Some((other, _)) = seen.iter().find(|(_, o)| *o == id) {
            return Err(format!("{} is also the {}", other.what, item.what));
        }
        seen.push((item, id));
    }
    for pair in items.windows(2) {
        if pair[0].role != Role::Device
            && pair[1].role != Role::Device
            && pair[0].path == pair[1].path
        {
            return Err(format!("{} is also the {}", pair[0].what, pair[1].what));
        }
    }
    Ok(())
}

/// What a path names, whatever the name: a file by device and inode, a block device by its
/// device number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileId {
    File(u64, u64),
    Block(u64),
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        let meta = std::fs::metadata(path).ok()?;
        Some(if meta.file_type().is_block_device() {
            FileId::Block(meta.rdev())
        } else {
            FileId::File(meta.dev(), meta.ino())
        })
    }
}

/// Hops from a path to where it leads back, e.g. `snapfs mount on /m2`, `its device /m1/origin`,
/// `file of this mount`.
type Hops = Vec<String>;

/// `Ok(None)`: does not lead back; `Err`: cannot tell (refused as well).
type Found = Result<Option<Hops>, String>;

#[derive(Clone, Copy, Hash, PartialEq, Eq)]
enum Node {
    Fs(libc::dev_t),
    Block(libc::dev_t),
}

/// One walk over the storage graph. Every node is visited once, so a cycle among other mounts
/// ends the walk instead of looping.
struct Walk {
    own: Own,
    table: Vec<MountEntry>,
    seen: HashSet<Node>,
}

impl Walk {
    fn new(own: Own) -> Walk {
        Walk {
            own,
            table: mountinfo::read(),
            seen: HashSet::new(),
        }
    }

    fn item(&mut self, item: &Item) -> Result<(), String> {
        let hops = match self.path(&item.path, 0) {
            Ok(None) => return Ok(()),
            Ok(Some(hops)) => hops,
            Err(why) => {
                return Err(format!("{}: cannot tell where it leads ({why})", item.what));
            }
        };
        let why = item.role.why();
        if let [hop] = hops.as_slice() {
            if let Some(mp) = hop.strip_prefix("inside the mount point ") {
                return Err(format!(
                    "{} is inside the mount point {mp}: once mounted that directory is the \
                     mount itself; {why}",
                    item.what
                ));
            }
            if hop == OWN_FILE {
                return Err(format!("{} is a file of this mount: {why}", item.what));
            }
        }
        Err(format!(
            "{} leads back to this mount ({} -> {}): {why}",
            item.what,
            item.path.display(),
            hops.join(" -> ")
        ))
    }

    /// Where the bytes of `path` live. A missing path is taken as a file to be created in its
    /// nearest existing directory.
    fn path(&mut self, path: &Path, depth: usize) -> Found {
        if depth > DEPTH_MAX {
            return Err(format!("devices stacked more than {DEPTH_MAX} deep"));
        }
        if let Some(mp) = self.inside_mountpoint(path) {
            return Ok(Some(vec![format!(
                "inside the mount point {}",
                mp.display()
            )]));
        }
        let Some(meta) = path.ancestors().find_map(|p| std::fs::metadata(p).ok()) else {
            return Ok(None);
        };
        if meta.file_type().is_block_device() {
            return self.block(meta.rdev() as libc::dev_t, depth + 1);
        }
        self.fs(meta.dev() as libc::dev_t, depth + 1)
    }

    /// At mount time: whether `path` (or the file it names through symlinks) is inside the
    /// mount point; its directory is recognised by device and inode, so a bind mount of it
    /// counts. Returns the mount point.
    fn inside_mountpoint(&self, path: &Path) -> Option<PathBuf> {
        let covered = self.own.covered?;
        let mountpoint = &self.own.mountpoint;
        if path.starts_with(mountpoint) {
            return Some(mountpoint.clone());
        }
        let real = path.ancestors().find_map(|p| p.canonicalize().ok())?;
        let inside = real.starts_with(mountpoint)
            || real.ancestors().any(|dir| {
                std::fs::metadata(dir).is_ok_and(|m| (m.dev() as libc::dev_t, m.ino()) == covered)
            });
        inside.then(|| mountpoint.clone())
    }

    /// A filesystem, by the `st_dev` of its files.
    fn fs(&mut self, dev: libc::dev_t, depth: usize) -> Found {
        if self.own.dev == Some(dev) {
            return Ok(Some(vec![OWN_FILE.to_string()]));
        }
        if !self.seen.insert(Node::Fs(dev)) {
            return Ok(None);
        }
        let entries: Vec<MountEntry> = self
            .table
            .iter()
            .filter(|m| m.dev == dev)
            .cloned()
            .collect();
        if entries.iter().any(MountEntry::is_snapfs) {
            return self.peer(&entries, depth);
        }
        let Some(first) = entries.first() else {
            return Ok(None);
        };
        let hop = format!(
            "on {} (mounted on {})",
            first.source,
            first.mountpoint.display()
        );
        if libc::major(dev) != 0 {
            return prefixed(hop, self.block(dev, depth + 1));
        }
        // Filesystems with anonymous device numbers (btrfs) name their device as the source.
        for entry in &entries {
            let source = Path::new(&entry.source);
            if !source.starts_with("/dev/") {
                continue;
            }
            let Ok(m) = std::fs::metadata(source) else {
                continue;
            };
            if !m.file_type().is_block_device() {
                continue;
            }
            let hop = format!("on {}", entry.source);
            if let Some(h) = prefixed(hop, self.block(m.rdev() as libc::dev_t, depth + 1))? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// A block device: a partition leads to its disk, a loop device to its backing file, a
    /// stacked device (dm, md) to its slaves.
    fn block(&mut self, dev: libc::dev_t, depth: usize) -> Found {
        if depth > DEPTH_MAX {
            return Err(format!("devices stacked more than {DEPTH_MAX} deep"));
        }
        if !self.seen.insert(Node::Block(dev)) {
            return Ok(None);
        }
        let link = format!("/sys/dev/block/{}", mountinfo::dev_text(dev));
        let Ok(sys) = std::fs::canonicalize(&link) else {
            return Ok(None);
        };
        if sys.join("partition").exists() {
            let Some((disk, disk_dev)) = sys.parent().and_then(|d| Some((d, sysfs_dev(d)?))) else {
                return Ok(None);
            };
            let disk_name = disk.file_name().unwrap_or_default().to_string_lossy();
            let hop = format!("partition of /dev/{disk_name}");
            return prefixed(hop, self.block(disk_dev, depth + 1));
        }
        if let Some(backing) = backing_file(&sys) {
            let hop = format!("loop device over {backing}");
            return prefixed(hop, self.backing_file(Path::new(&backing), depth + 1));
        }
        let Ok(slaves) = std::fs::read_dir(sys.join("slaves")) else {
            return Ok(None);
        };
        for slave in slaves.flatten() {
            let Some(slave_dev) = sysfs_dev(&slave.path()) else {
                continue;
            };
            let slave_name = slave.file_name().to_string_lossy().into_owned();
            let hop = format!("built on /dev/{slave_name}");
            if let Some(h) = prefixed(hop, self.block(slave_dev, depth + 1))? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// A loop device's backing file, by the path the kernel prints: placed in the mount table
    /// without asking the filesystem (which may be a FUSE mount that does not answer).
    fn backing_file(&mut self, path: &Path, depth: usize) -> Found {
        let devs: Vec<libc::dev_t> = mountinfo::containing(&self.table, path)
            .iter()
            .map(|m| m.dev)
            .collect();
        for dev in devs {
            if let Some(h) = self.fs(dev, depth)? {
                return Ok(Some(h));
            }
        }
        Ok(None)
    }

    /// Another snapfs mount: its files lead wherever its devices do.
    fn peer(&mut self, entries: &[MountEntry], depth: usize) -> Found {
        // A mount point covered by another mount would show that mount's files.
        let visible: Vec<PathBuf> = entries
            .iter()
            .filter(|m| m.is_snapfs() && m.root == "/")
            .filter(|m| mountinfo::top_at(&self.table, &m.mountpoint) == Some(*m))
            .map(|m| m.mountpoint.clone())
            .collect();
        let Some((mountpoint, text)) = visible.iter().find_map(|mp| {
            let text = std::fs::read_to_string(mp.join("status")).ok()?;
            Some((mp.clone(), text))
        }) else {
            log::debug!("cannot read the status of the snapfs mount {entries:?}");
            return Ok(None);
        };
        let Ok(report) = Report::parse(&text) else {
            return Ok(None);
        };
        let devices = report.origin_device.iter().map(|d| ("origin", d)).chain(
            report
                .snapshots
                .iter()
                .filter_map(|s| Some(("COW", s.cow.as_ref()?))),
        );
        let devices: Vec<(&str, PathBuf)> = devices.map(|(w, d)| (w, PathBuf::from(d))).collect();
        for (word, device) in devices {
            if let Some(h) = self.path(&device, depth + 1)? {
                let mut hops = vec![
                    format!("file of the snapfs mount on {}", mountpoint.display()),
                    format!("its {word} {}", device.display()),
                ];
                hops.extend(h);
                return Ok(Some(hops));
            }
        }
        Ok(None)
    }
}

/// The last hop of a path that is this mount's own file.
const OWN_FILE: &str = "file of this mount";

fn prefixed(hop: String, found: Found) -> Found {
    Ok(found?.map(|rest| std::iter::once(hop).chain(rest).collect()))
}

/// The backing file of the loop device whose sysfs directory is `sys`, as the kernel prints
/// its path (`loop/backing_file`, without a ` (deleted)` suffix).
fn backing_file(sys: &Path) -> Option<String> {
    let text = std::fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    let backing = text.trim_end_matches('\n');
    Some(
        backing
            .strip_suffix(" (deleted)")
            .unwrap_or(backing)
            .to_string(),
    )
}

/// The block device `dev`, if it is a loop device or a partition of one: its name
/// (`/dev/loop3`, `/dev/loop3p1`) and the loop device's backing file.
pub(super) fn loop_backing(dev: libc::dev_t) -> Option<(String, String)> {
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{}", mountinfo::dev_text(dev))).ok()?;
    let name = format!("/dev/{}", sys.file_name()?.to_string_lossy());
    let disk = match sys.join("partition").exists() {
        true => sys.parent()?,
        false => sys.as_path(),
    };
    Some((name, backing_file(disk)?))
}

/// `st_dev` of the live mount's files, once it is mounted.
pub(super) fn live_dev() -> Option<libc::dev_t> {
    LIVE.get()?.dev
}

/// The device number in a sysfs block directory's `dev` file (`MAJOR:MINOR`).
fn sysfs_dev(dir: &Path) -> Option<libc::dev_t> {
    let text = std::fs::read_to_string(dir.join("dev")).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("snapfs-reach-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        dir
    }

    fn item(path: &Path, role: Role) -> Item {
        Item {
            what: format!("thing {}", path.display()),
            path: path.to_path_buf(),
            role,
        }
    }

    #[test]
    fn inside_the_mount_point_by_any_name() {
        let dir = scratch("inside");
        let mnt = dir.join("mnt").canonicalize().unwrap();
        let own = Own::before_mount(&mnt);
        std::fs::write(mnt.join("o.img"), b"x").unwrap();
        std::os::unix::fs::symlink(mnt.join("o.img"), dir.join("link")).unwrap();
        std::os::unix::fs::symlink(&mnt, dir.join("dirlink")).unwrap();
        for (path, role) in [
            (mnt.join("o.img"), Role::Device),
            (dir.join("link"), Role::Device),
            (dir.join("dirlink/new.log"), Role::Log),
            (mnt.join("sub/dir/reg"), Role::Registry),
        ] {
            let e = check(own.clone(), vec![item(&path, role)], true).unwrap_err();
            assert!(e.contains("inside the mount point"), "{e}");
            assert!(!e.contains('\n'));
        }
        std::fs::write(dir.join("outside.img"), b"x").unwrap();
        check(
            own.clone(),
            vec![item(&dir.join("outside.img"), Role::Device)],
            true,
        )
        .unwrap();
        check(own, vec![item(&dir.join("missing/x.log"), Role::Log)], true).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_of_the_live_mount_by_its_device_number() {
        let dir = scratch("live");
        let f = dir.join("f");
        std::fs::write(&f, b"x").unwrap();
        let dev = std::fs::metadata(&f).unwrap().dev() as libc::dev_t;
        let own = Own::live(Path::new("/nonexistent-mnt"), dev);
        let e = check(own.clone(), vec![item(&f, Role::Device)], true).unwrap_err();
        assert!(e.contains("is a file of this mount"), "{e}");
        let e = check(own, vec![item(&dir.join("new"), Role::Log)], true).unwrap_err();
        assert!(
            e.contains("file of this mount"),
            "a file to be created there: {e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
