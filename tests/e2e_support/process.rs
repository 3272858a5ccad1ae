//! The daemon as a process: kill -9, its peak memory, and a pids cgroup that lets it start no
//! thread.

use super::Scratch;
use std::path::{Path, PathBuf};

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
pub fn peak_rss(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = text.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The daemon in a pids cgroup that allows no new thread; moved back and removed on drop.
pub struct NoNewThreads {
    pub dir: PathBuf,
    pid: i32,
}

impl NoNewThreads {
    pub fn new(tag: &str, pid: i32) -> NoNewThreads {
        let dir = Path::new("/sys/fs/cgroup/pids").join(format!("snapfs-{tag}-{pid}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        let current = std::fs::read_to_string(dir.join("pids.current")).unwrap();
        std::fs::write(dir.join("pids.max"), current.trim()).unwrap();
        NoNewThreads { dir, pid }
    }
}

impl Drop for NoNewThreads {
    fn drop(&mut self) {
        let root = Path::new("/sys/fs/cgroup/pids/cgroup.procs");
        let _ = std::fs::write(root, self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// kill -9 of the server, and the dead mount cleared.
pub fn kill_9(s: &mut Scratch) {
    let pid = s.server_pid();
    // SAFETY: SIGKILL to, and reaping of, the daemon this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    s.daemon = None;
    s.child = None;
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(&s.mnt)
        .output();
}
