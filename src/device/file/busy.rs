//! A device another process holds: who it is, and whether to wait for it.
//!
//! `umount` returns as soon as the kernel has taken the mount away; the daemon that served it
//! then still flushes its devices and exits, and only its exit lets go of them (the `flock` on
//! an image file, the `O_EXCL` claim on a block device). A mount of the same devices started
//! right after `umount` used to fail in that window with "locked by another snapfs mount".
//! Now the open looks at the holder:
//!
//! - a snapfs process none of whose FUSE connections is alive (the daemon of a mount that is
//!   gone, or `snapfs inspect`, or a daemon still opening its devices before it mounts) is
//!   waited for, up to [`WAIT_MAX`], with one log line saying so;
//! - this very process (a device named twice), a snapfs daemon whose mount is live (mounted, or
//!   detached but still in use), or any other program fails at once, naming the holder.
//!
//! Holders are found in `/proc/locks` (files: the `flock` names the locking process) and by
//! the descriptors of snapfs processes (block devices: an `O_EXCL` claim is not listed
//! anywhere). A FUSE connection's liveness is read from the holder's own `/dev/fuse`
//! descriptor: a copy taken with `pidfd_getfd` polls `POLLERR` once the connection is gone.
//! Without that (an older kernel, no permission), a connection counts as alive while its
//! number (`fuse_connection` in the descriptor's fdinfo) is mounted.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

/// The longest an open waits for the daemon of a mount that is gone. Its teardown is a flush of
/// each device (and the end of a merge step), a few milliseconds when idle, seconds on a disk
/// that is busy writing back.
pub const WAIT_MAX: Duration = Duration::from_secs(30);

/// How often a waiting open tries again.
const POLL: Duration = Duration::from_millis(10);

/// Tries with no holder to be found (the holder went away between the failed claim and the
/// look) before giving up with the plain reason.
const UNKNOWN_MAX: u32 = 5;

/// What was claimed and refused.
#[derive(Clone, Copy, Debug)]
pub(super) enum Target {
    /// A regular file, by device and inode (`flock`).
    File { dev: u64, ino: u64 },
    /// A block device, by device number (`O_EXCL`).
    Block { rdev: u64 },
}

impl Target {
    pub(super) fn of(meta: &std::fs::Metadata) -> Target {
        if meta.file_type().is_block_device() {
            Target::Block { rdev: meta.rdev() }
        } else {
            Target::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    fn plain_reason(self) -> &'static str {
        match self {
            Target::File { .. } => {
                "file is already in use (locked by another snapfs mount or by this one)"
            }
            Target::Block { .. } => "device is in use (mounted or claimed by another program)",
        }
    }
}

/// What to do about a holder.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A snapfs process that serves no live mount: wait for it.
    Wait { pid: i32 },
    /// Give up with this reason.
    Fail(String),
    /// No holder found.
    Unknown,
}

/// The retry loop of one open: [`Waiter::refused`] after each refused claim either sleeps (the
/// caller tries again) or gives up with the reason.
pub(super) struct Waiter<'a> {
    path: &'a Path,
    started: Instant,
    announced: Option<i32>,
    unknown: u32,
}

impl<'a> Waiter<'a> {
    pub(super) fn new(path: &'a Path) -> Waiter<'a> {
        Waiter {
            path,
            started: Instant::now(),
            announced: None,
            unknown: 0,
        }
    }

    /// After a claim of `target` was refused with `error` (EBUSY, EWOULDBLOCK): `Ok` when the
    /// caller should try again (after the pause this takes), `Err` with the reason otherwise.
    pub(super) fn refused(&mut self, target: Target, error: io::Error) -> io::Result<()> {
        let fail = |reason: String| {
            Err(io::Error::new(
                error.kind(),
                format!("{}: {reason}", self.path.display()),
            ))
        };
        match examine(target) {
            Verdict::Fail(reason) => fail(reason),
            Verdict::Unknown => {
                self.unknown += 1;
                if self.unknown > UNKNOWN_MAX {
                    return fail(format!("{}: {error}", target.plain_reason()));
                }
                std::thread::sleep(POLL);
                Ok(())
            }
            Verdict::Wait { pid } => {
                if self.started.elapsed() >= WAIT_MAX {
                    return fail(format!(
                        "in use by snapfs process {pid}, which serves no mount but has not let \
                         go of it after {} s (a daemon still flushing after umount?); wait for \
                         it to exit, or see docs/troubleshooting.md",
                        WAIT_MAX.as_secs()
                    ));
                }
                if self.announced != Some(pid) {
                    log::warn!(
                        "{}: held by snapfs process {pid}, which serves no mount (a daemon \
                         finishing after umount): waiting up to {} s for it to let go",
                        self.path.display(),
                        WAIT_MAX.as_secs()
                    );
                    self.announced = Some(pid);
                }
                std::thread::sleep(POLL);
                Ok(())
            }
        }
    }

    /// After the claim succeeded.
    pub(super) fn claimed(&self) {
        if self.announced.is_some() {
            log::info!(
                "{}: free after {} ms",
                self.path.display(),
                self.started.elapsed().as_millis()
            );
        }
    }
}

fn examine(target: Target) -> Verdict {
    let holders = match target {
        Target::File { dev, ino } => file_holders(dev, ino),
        Target::Block { rdev } => block_holders(rdev),
    };
    let mut wait = None;
    for pid in holders {
        match holder(pid) {
            Verdict::Wait { pid } => wait = Some(pid),
            Verdict::Unknown => {}
            fail => return fail,
        }
    }
    match wait {
        Some(pid) => Verdict::Wait { pid },
        None => Verdict::Unknown,
    }
}

/// What one holding process is.
fn holder(pid: i32) -> Verdict {
    if pid == std::process::id() as i32 {
        return Verdict::Fail(
            "already in use by this mount (as its origin or as another snapshot's COW): each \
             device can be used once"
                .to_string(),
        );
    }
    let Some(comm) = comm(pid) else {
        return Verdict::Unknown; // gone meanwhile
    };
    if !comm.starts_with("snapfs") {
        return Verdict::Fail(format!("in use: locked by process {pid} ({comm})"));
    }
    let connections = fuse_connections(pid);
    for connection in &connections {
        if connection.alive() {
            let served = match connection.mountpoint() {
                Some(mp) => format!("the snapfs mount on {mp}"),
                None => {
                    "a snapfs mount that is detached but still in use (a loop device?)".to_string()
                }
            };
            return Verdict::Fail(format!("in use by {served} (daemon {pid})"));
        }
    }
    Verdict::Wait { pid }
}

/// The processes holding a `flock` on the file: `/proc/locks` lines are
/// `N: FLOCK  ADVISORY  WRITE PID MAJ:MIN:INODE START END` (device numbers in hex), and
/// `N: -> ...` for waiters.
fn file_holders(dev: u64, ino: u64) -> Vec<i32> {
    let text = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    let want = (
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t),
        ino,
    );
    text.lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.get(1) == Some(&"->") || words.get(1) != Some(&"FLOCK") {
                return None;
            }
            let pid: i32 = words.get(4)?.parse().ok()?;
            let mut id = words.get(5)?.split(':');
            let major = u32::from_str_radix(id.next()?, 16).ok()?;
            let minor = u32::from_str_radix(id.next()?, 16).ok()?;
            let inode: u64 = id.next()?.parse().ok()?;
            ((major, minor, inode) == want).then_some(pid)
        })
        .collect()
}

/// The snapfs processes with the block device open. Other programs holding it are not looked
/// for: whatever they are, the claim fails at once.
fn block_holders(rdev: u64) -> Vec<i32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders = Vec::new();
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if !comm(pid).is_some_and(|c| c.starts_with("snapfs")) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            // Only device nodes are looked at: following a descriptor into a FUSE mount would
            // ask its daemon.
            std::fs::read_link(fd.path()).is_ok_and(|t| t.starts_with("/dev/"))
                && std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.file_type().is_block_device() && m.rdev() == rdev)
        });
        if holds {
            holders.push(pid);
        }
    }
    holders
}

fn comm(pid: i32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end().to_string())
}

/// One `/dev/fuse` descriptor of a process.
struct Connection {
    pid: i32,
    fd: i32,
    /// `fuse_connection` in its fdinfo: the minor number of the mount's device.
    number: Option<u32>,
}

fn fuse_connections(pid: i32) -> Vec<Connection> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == Path::new("/dev/fuse")))
        .filter_map(|fd| {
            let fd: i32 = fd.file_name().to_string_lossy().parse().ok()?;
            let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
            let number = info
                .lines()
                .find_map(|l| l.strip_prefix("fuse_connection:"))
                .and_then(|n| n.trim().parse().ok());
            Some(Connection { pid, fd, number })
        })
        .collect()
}

impl Connection {
    /// Whether the connection still serves a mount (mounted or detached).
    fn alive(&self) -> bool {
        match poll_copy(self.pid, self.fd) {
            Some(alive) => alive,
            // No copy of the descriptor: alive while its number is mounted; a descriptor with
            // no connection yet (the daemon has not mounted) serves nothing.
            None => self.mountpoint().is_some(),
        }
    }

    /// Where the connection is mounted, if it is (the mount's device is `0:NUMBER`).
    fn mountpoint(&self) -> Option<String> {
        let number = self.number?;
        let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        table.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let fstype = line.split_once(" - ")?.1.split(' ').next()?;
            (fields.get(2) == Some(&format!("0:{number}").as_str()) && fstype.starts_with("fuse"))
                .then(|| fields.get(4).map(|s| s.to_string()))
                .flatten()
        })
    }
}

/// Polls a copy of descriptor `fd` of process `pid`: `Some(false)` once its FUSE connection
/// is gone (`POLLERR`), `Some(true)` while it is up, `None` if no copy could be taken. Closing
/// the copy never ends the connection: the holder still has the descriptor (and a holder that
/// died meanwhile has ended it already).
fn poll_copy(pid: i32, fd: i32) -> Option<bool> {
    // SAFETY: raw syscalls with integer arguments; each descriptor returned is closed below.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if pidfd < 0 {
            return None;
        }
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) as i32;
        libc::close(pidfd);
        if copy < 0 {
            return None;
        }
        let mut p = libc::pollfd {
            fd: copy,
            events: 0,
            revents: 0,
        };
        let rc = libc::poll(&mut p, 1, 0);
        libc::close(copy);
        match rc {
            0 => Some(true),
            1 => Some(p.revents & libc::POLLERR == 0),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;

    #[test]
    fn a_flock_names_this_process() {
        let dir = std::env::temp_dir().join(format!("snapfs-busy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"x").unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) }, 0);
        let meta = std::fs::metadata(&path).unwrap();
        let Target::File { dev, ino } = Target::of(&meta) else {
            panic!("a regular file")
        };
        assert_eq!(file_holders(dev, ino), vec![std::process::id() as i32]);
        let Verdict::Fail(reason) = examine(Target::of(&meta)) else {
            panic!("held by this process")
        };
        assert!(reason.contains("in use by this mount"), "{reason}");
        drop(file);
        assert_eq!(file_holders(dev, ino), Vec::<i32>::new());
        assert_eq!(examine(Target::of(&meta)), Verdict::Unknown);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
