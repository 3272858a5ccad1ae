//! Freezing the file systems on the origin around a live snapshot, as LVM's suspend does
//! (dm's `lock_fs`): a file system mounted from a loop device over `MNT/origin` (or from a
//! partition of one) still has dirty data and an open journal in its cache; `FIFREEZE` makes it
//! write them out and stop writing, so the snapshot is a clean image that needs no journal
//! recovery. The `snapshot` command freezes, attaches the snapshot, and thaws (`FITHAW`).
//!
//! Why in the daemon: both entry points (`snapfs snapshot` and a command written to `control`)
//! get it. The daemon must then never wait on its own mount: `FIFREEZE` flushes into the origin
//! file, i.e. sends FUSE writes to this daemon. The other request threads serve them; the
//! command thread holds only the `control` answer's lock, which no origin request needs.
//! Still, a file system may not answer (a loop device over a hung FUSE mount on the way), so:
//! - finding and freezing run on a helper thread, and the command gives up after
//!   [`FREEZE_TIMEOUT`]: the snapshot is not taken, and whatever the helper froze is thawed,
//!   also what it freezes after the command gave up (it thaws as soon as its freeze returns);
//! - nothing stays frozen longer than [`FROZEN_MAX`]: a watchdog thread thaws at that bound
//!   even if the attach is still running (the answer then warns that the snapshot may need
//!   journal recovery), and [`Frozen`] thaws when dropped, so a failed command or a panic
//!   thaws too.
//!
//! A file system that is frozen already (by the user: `FIFREEZE` answers `EBUSY`) is left
//! frozen, and not thawed by snapfs. A file system that cannot be frozen (`EPERM` for a daemon
//! without `CAP_SYS_ADMIN`, `EOPNOTSUPP`) is named in a warning; the snapshot is taken
//! unfrozen.

use crate::host::mountinfo::{self, MountEntry};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest the command waits for finding and freezing the file systems on the origin. A
/// freeze writes the file system's dirty data: seconds on a slow disk with much cached.
pub const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a file system stays frozen by snapfs: the watchdog thaws it then, attached or
/// not. An attach takes milliseconds (it formats one header chunk); the bound is for a COW
/// device that stops answering.
pub const FROZEN_MAX: Duration = Duration::from_secs(10);

/// `_IOWR('X', 119, int)` and `_IOWR('X', 120, int)` (linux/fs.h).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

/// One file system snapfs froze.
struct Held {
    /// A directory of it (its mount point), open: the ioctls' target.
    fd: OwnedFd,
    /// How messages name it: `/mnt/data (ext4 on /dev/loop3)`.
    shown: String,
    /// How long FIFREEZE took (writing out the cache).
    took: Duration,
    since: Instant,
    thawed: bool,
}

#[derive(Default)]
struct Shared {
    held: Vec<Held>,
    /// The command gave up waiting: the helper thaws what it freezes from now on.
    abandoned: bool,
    /// The watchdog thawed at the bound (ms).
    expired: Option<u128>,
    /// What the answer says: one line per file system.
    notes: Vec<String>,
    warnings: Vec<String>,
}

impl Shared {
    fn thaw_all(&mut self, why: &str) {
        for h in self.held.iter_mut().filter(|h| !h.thawed) {
            h.thawed = true;
            let ms = h.since.elapsed().as_millis();
            // SAFETY: an ioctl on an fd we own, with an int argument it does not read.
            let rc = unsafe { libc::ioctl(h.fd.as_raw_fd(), FITHAW as _, 0) };
            if rc == 0 {
                log::info!("thawed {} after {ms} ms ({why})", h.shown);
                let took = h.took.as_millis();
                self.notes
                    .push(format!("froze {} in {took} ms, for {ms} ms", h.shown));
            } else {
                let e = std::io::Error::last_os_error();
                log::warn!("cannot thaw {}: {e}", h.shown);
                self.warnings.push(format!(
                    "cannot thaw {} ({e}): thaw it with fsfreeze -u",
                    h.shown
                ));
            }
        }
    }
}

/// The file systems snapfs froze; thawed by [`Frozen::thaw`], at [`FROZEN_MAX`], or when
/// dropped.
pub struct Frozen {
    shared: Arc<Mutex<Shared>>,
    /// Dropped to stop the watchdog.
    watchdog: Option<mpsc::Sender<()>>,
}

/// What a thaw reports: lines for the answer, and warnings.
#[derive(Debug, Default)]
pub struct Thawed {
    pub notes: Vec<String>,
    pub warnings: Vec<String>,
}

impl Frozen {
    /// Thaws now; says what was frozen and for how long.
    pub fn thaw(self) -> Thawed {
        let shared = self.shared.clone();
        drop(self);
        let mut s = shared.lock();
        if let Some(bound) = s.expired {
            s.warnings.push(format!(
                "the file systems on the origin were thawed after {bound} ms, before the \
                 snapshot was attached: it may need journal recovery"
            ));
        }
        Thawed {
            notes: std::mem::take(&mut s.notes),
            warnings: std::mem::take(&mut s.warnings),
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.watchdog.take();
        self.shared.lock().thaw_all("snapshot command done");
    }
}

/// Freezes every file system mounted from a loop device (or a partition of one) whose backing
/// file is the file `origin` (device and inode numbers), within [`FREEZE_TIMEOUT`], for at most
/// [`FROZEN_MAX`]. `Err` is the refusal: the snapshot must not be taken.
pub fn freeze_users(origin: (libc::dev_t, u64)) -> Result<Frozen, String> {
    freeze_users_within(origin, FREEZE_TIMEOUT, FROZEN_MAX)
}

/// [`freeze_users`] with other bounds (tests): `timeout` for finding and freezing, `frozen_max`
/// for the frozen time.
pub fn freeze_users_within(
    origin: (libc::dev_t, u64),
    timeout: Duration,
    frozen_max: Duration,
) -> Result<Frozen, String> {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let (tx, rx) = mpsc::channel();
    let helper_shared = shared.clone();
    std::thread::Builder::new()
        .name("snapfs-freeze".to_string())
        .spawn(move || {
            let _ = tx.send(freeze_on_origin(origin, &helper_shared));
        })
        .map_err(|e| format!("cannot freeze: cannot start a thread ({e})"))?;
    let outcome = rx.recv_timeout(timeout);
    let done = match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!(
            "the file systems on the origin did not freeze within {} s (the helper thaws \
             them as soon as their freeze returns); retry, or give nofreeze (--no-freeze)",
            timeout.as_secs()
        )),
    };
    if let Err(why) = done {
        let mut s = shared.lock();
        s.abandoned = true;
        s.thaw_all("freeze failed");
        return Err(why);
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let watched = shared.clone();
    let start = shared.lock().held.first().map(|h| h.since);
    if let Some(start) = start {
        let spawned = std::thread::Builder::new()
            .name("snapfs-thaw".to_string())
            .spawn(move || {
                let left = frozen_max.saturating_sub(start.elapsed());
                if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(left) {
                    let mut s = watched.lock();
                    if s.held.iter().any(|h| !h.thawed) {
                        s.expired = Some(frozen_max.as_millis());
                        s.thaw_all("frozen-time bound reached");
                    }
                }
            });
        if let Err(e) = spawned {
            let mut s = shared.lock();
            s.thaw_all("no watchdog");
            return Err(format!(
                "cannot bound the frozen time: cannot start a thread ({e})"
            ));
        }
    }
    Ok(Frozen {
        shared,
        watchdog: Some(stop),
    })
}

/// The helper's work: find the file systems, freeze each.
fn freeze_on_origin(origin: (libc::dev_t, u64), shared: &Mutex<Shared>) -> Result<(), String> {
    let table = mountinfo::read();
    for (entry, via) in on_file(&table, origin) {
        let shown = format!("{} ({} on {via})", entry.mountpoint.display(), entry.fstype);
        let fd = match std::fs::File::options()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&entry.mountpoint)
        {
            Ok(f) => OwnedFd::from(f),
            Err(e) => {
                log::warn!("cannot open {shown} to freeze it: {e}");
                shared.lock().warnings.push(format!(
                    "cannot open {shown} to freeze it ({e}): the snapshot may need journal \
                     recovery"
                ));
                continue;
            }
        };
        let start = Instant::now();
        // SAFETY: an ioctl on an fd we own, with an int argument it does not read.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), FIFREEZE as _, 0) };
        let e = std::io::Error::last_os_error();
        let mut s = shared.lock();
        if rc == 0 {
            let took = start.elapsed();
            log::info!("froze {shown} in {} ms", took.as_millis());
            s.held.push(Held {
                fd,
                shown,
                took,
                since: Instant::now(),
                thawed: false,
            });
            if s.abandoned {
                s.thaw_all("the command gave up waiting");
            }
            continue;
        }
        match e.raw_os_error() {
            Some(libc::EBUSY) => {
                log::info!("{shown} is frozen already: left frozen");
                s.notes
                    .push(format!("left {shown} frozen: it was frozen already"));
            }
            _ => {
                log::warn!("cannot freeze {shown}: {e}");
                s.warnings.push(format!(
                    "cannot freeze {shown} ({e}): the snapshot may need journal recovery"
                ));
            }
        }
    }
    Ok(())
}

/// The file systems of `table` mounted from a loop device, or a partition of one, whose backing
/// file is `origin`: one visible mount of each (a file system mounted twice is frozen once),
/// with the device it is mounted from.
fn on_file(table: &[MountEntry], origin: (libc::dev_t, u64)) -> Vec<(MountEntry, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in table {
        if libc::major(entry.dev) == 0 || seen.contains(&entry.dev) {
            continue;
        }
        if mountinfo::top_at(table, &entry.mountpoint) != Some(entry) {
            continue;
        }
        let Some((disk, backing)) = crate::host::reach::loop_backing(entry.dev) else {
            continue;
        };
        // Placed in the mount table first: a backing file on another file system is not asked
        // (its FUSE daemon, say, may not answer).
        let backing = Path::new(&backing);
        let on_mount = mountinfo::containing(table, backing)
            .iter()
            .any(|m| m.dev == origin.0);
        if !on_mount {
            continue;
        }
        let Ok(m) = std::fs::metadata(backing) else {
            continue;
        };
        if (m.dev() as libc::dev_t, m.ino()) != origin {
            continue;
        }
        seen.insert(entry.dev);
        out.push((entry.clone(), disk));
    }
    out
}

/// The device and inode numbers of `MNT/origin`, once the mount is live.
pub fn live_origin() -> Option<(libc::dev_t, u64)> {
    Some((crate::host::reach::live_dev()?, crate::fuse::ORIGIN_INODE))
}
