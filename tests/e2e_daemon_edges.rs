//! The daemon at its edges (needs root, /dev/fuse, util-linux, e2fsprogs): paths that lead a
//! mount back to itself (a COW on its own files, directly or through loop devices, filesystems
//! and other snapfs mounts), a second mount on a mount point, a remount right after `umount`,
//! signals, and the messages of refusals. Every refused request must change nothing: image
//! bytes, the snapshot list, and the mount keeps answering.
//!
//! COWs here start with zeros, as ext4 does (its first 1024 bytes are zero): such a file is
//! taken as a new COW and formatted, which is what made a COW on the mount's own files hang it.

mod e2e_support;

#[path = "e2e_daemon_edges/cow_paths.rs"]
mod cow_paths;
#[path = "e2e_daemon_edges/mounts.rs"]
mod mounts;

use e2e_support::*;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Bytes at the start of every image that are zero, as in an ext4 image.
const ZERO_HEAD: usize = 256 * 1024;

/// How long anything that goes through a mount may take before the test calls it a hang.
const HANG: Duration = Duration::from_secs(20);

/// A random image whose first [`ZERO_HEAD`] bytes are zero; returns its content.
fn zero_first_image(path: &Path, len: u64, seed: u64) -> Vec<u8> {
    let mut data = Rng(seed).bytes(len);
    data[..ZERO_HEAD].fill(0);
    std::fs::write(path, &data).unwrap();
    data
}

/// Runs `f` on a thread; fails the test if it does not return within [`HANG`] (the thread is
/// left behind, blocked in the hung mount, until the guards kill the daemon).
fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what}: no answer within {HANG:?} (the mount hangs?)"))
}

/// Writes one control command to `mnt/control`, bounded; returns the write's result and the
/// answer.
fn control_at(mnt: &Path, command: &str) -> (std::io::Result<()>, String) {
    let (mnt, command) = (mnt.to_path_buf(), command.to_string());
    bounded(&format!("control {command:?}"), move || {
        control_of(&mnt, &command)
    })
}

/// A control command that must be refused with EINVAL, its answer naming the reason.
fn refused(mnt: &Path, command: &str, needle: &str) -> String {
    let (result, answer) = control_at(mnt, command);
    let errno = result.as_ref().err().and_then(|e| e.raw_os_error());
    assert_eq!(
        errno,
        Some(libc::EINVAL),
        "{command:?} must be refused: {result:?}: {answer}"
    );
    assert!(answer.starts_with("error: "), "{command:?}: {answer}");
    assert!(answer.contains(needle), "{command:?}: {answer}");
    assert_eq!(answer.trim_end().lines().count(), 1, "one line: {answer}");
    answer
}

fn accepted(mnt: &Path, command: &str) {
    let (result, answer) = control_at(mnt, command);
    assert!(result.is_ok(), "{command:?}: {result:?}: {answer}");
    assert!(answer.starts_with("ok "), "{command:?}: {answer}");
}

/// Names of the snapshots a mount serves (its status target lines), bounded.
fn snapshots_of(mnt: &Path) -> Vec<String> {
    let mnt = mnt.to_path_buf();
    let text = bounded("status", move || {
        std::fs::read_to_string(mnt.join("status")).unwrap()
    });
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            let target = rest.split(' ').nth(2)?;
            matches!(target, "snapshot" | "snapshot-merge").then(|| name.to_string())
        })
        .collect()
}

/// The whole file, bounded.
fn read_all(path: &Path) -> Vec<u8> {
    let path = path.to_path_buf();
    bounded(&format!("read {}", path.display()), move || {
        std::fs::read(&path).unwrap()
    })
}

/// Writes `len` seeded bytes at `offset` of a file of a mount (bounded) and records them in
/// `model`.
fn write_at(path: &Path, offset: u64, len: usize, seed: u64, model: &mut [u8]) {
    let data = Rng(seed).bytes(len as u64);
    model[offset as usize..offset as usize + len].copy_from_slice(&data);
    let path = path.to_path_buf();
    bounded(&format!("write {}", path.display()), move || {
        let f = open_rw(&path);
        f.write_all_at(&data, offset).unwrap();
        f.sync_data().unwrap();
    });
}

/// `snapfs mount ORIGIN MNT -o OPTIONS` (daemon mode), stderr to `log`; returns the output.
fn snapfs_mount(origin: &Path, mnt: &Path, options: &[&str], log: &Path) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("mount").arg(origin).arg(mnt);
    for o in options {
        cmd.arg("-o").arg(o);
    }
    let stderr = File::options().create(true).append(true).open(log).unwrap();
    cmd.stdin(Stdio::null()).stderr(stderr).output().unwrap()
}

/// Waits for a daemon (our adopted child) to exit; returns its exit code.
fn reap(pid: i32) -> i32 {
    let deadline = Instant::now() + HANG;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on an adopted child.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        assert!(
            rc >= 0,
            "waitpid {pid}: {}",
            std::io::Error::last_os_error()
        );
        if rc == pid {
            assert!(libc::WIFEXITED(status), "daemon {pid} killed: {status:#x}");
            return libc::WEXITSTATUS(status);
        }
        assert!(Instant::now() < deadline, "daemon {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether our child `pid` is still running (not exited, not killed).
fn running(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid on an adopted child, without blocking.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    assert!(rc == 0 || rc == pid, "waitpid {pid}");
    rc == 0
}

/// The state letter of a process (`R`, `S`, `D`, `T` stopped, `Z`).
fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit_once(')').unwrap().1;
    after.trim_start().chars().next().unwrap()
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: a signal to a daemon this test started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill {pid} {sig}");
}

/// `umount2(path, 0)` without util-linux, which would `stat` the mount point first (and wait
/// on a stopped daemon).
fn umount_syscall(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    assert_eq!(
        rc,
        0,
        "umount {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// When the test fails, ends its mounts for good before the guards declared earlier (loop
/// devices, filesystems, open files) tear down: with a mount that hangs on itself they would
/// wait forever. SIGKILL alone is not enough there: a daemon thread stuck in a request to its
/// own mount keeps the daemon's descriptors, so the connection is aborted first.
struct AbortOnPanic {
    connections: Vec<String>,
    pids: Vec<i32>,
}

impl AbortOnPanic {
    fn new(mounts: &[&Scratch]) -> AbortOnPanic {
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let connections = mounts
            .iter()
            .filter_map(|s| {
                let mnt = s.mnt.to_str().unwrap();
                let line = table.lines().find(|l| l.split(' ').nth(4) == Some(mnt))?;
                Some(line.split(' ').nth(2)?.strip_prefix("0:")?.to_string())
            })
            .collect();
        let pids = mounts.iter().map(|s| s.server_pid()).collect();
        AbortOnPanic { connections, pids }
    }
}

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let ctl = Path::new("/sys/fs/fuse/connections");
        if std::fs::read_dir(ctl)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
        {
            let _ = Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(ctl)
                .output();
        }
        for n in &self.connections {
            let _ = std::fs::write(ctl.join(n).join("abort"), "1");
        }
        for &pid in &self.pids {
            // SAFETY: a signal to a daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn sums(paths: &[&Path]) -> Vec<u64> {
    paths.iter().map(|p| checksum(p)).collect()
}
