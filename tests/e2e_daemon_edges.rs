//! The daemon at its edges (needs root, /dev/fuse, util-linux, e2fsprogs): paths that lead a
//! mount back to itself (a COW on its own files, directly or through loop devices, filesystems
//! and other snapfs mounts), a second mount on a mount point, a remount right after `umount`,
//! signals, and the messages of refusals. Every refused request must change nothing: image
//! bytes, the snapshot list, and the mount keeps answering.
//!
//! COWs here start with zeros, as ext4 does (its first 1024 bytes are zero): such a file is
//! taken as a new COW and formatted, which is what made a COW on the mount's own files hang it.

mod e2e_support;

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

// ----- a COW that leads back to the mount -------------------------------------------------------

/// `snapshot y COW` where COW is one of the mount's own files, under any name: the file
/// itself, a snapshot file, a symlink, a bind mount of the mount, /proc/PID/fd/N, a loop device
/// over it, and the CLI. Each is refused with the reason; the origin, the existing snapshot and
/// the snapshot list are unchanged, and the mount keeps serving writes.
#[test]
fn a_cow_on_the_mounts_own_files_is_refused() {
    let mut s = Scratch::new("edges-own");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = zero_first_image(&origin, 16 * MIB, 1);
    sparse_file(&cow, 8 * MIB);
    s.mount_daemon(&origin, &[&format!("snapshot=s:{}", cow.display())], &[]);
    let mut stack = Stack::default();
    let mut model = initial.clone();
    write_at(&s.file("origin"), 4 * MIB, 8192, 10, &mut model);

    let link = s.path("link");
    std::os::unix::fs::symlink(s.file("origin"), &link).unwrap();
    let bind = s.path("bind");
    std::fs::create_dir(&bind).unwrap();
    run(
        "mount",
        &["--bind", s.mnt.to_str().unwrap(), bind.to_str().unwrap()],
    );
    stack.track_mount(&bind);
    let held = File::open(s.file("origin")).unwrap();
    let by_fd = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd());
    let lo = stack.attach(&s.file("origin"), false, false);
    let _abort = AbortOnPanic::new(&[&s]);

    let candidates: Vec<(String, &str)> = vec![
        (
            s.file("origin").display().to_string(),
            "is a file of this mount",
        ),
        (s.file("s").display().to_string(), "is a file of this mount"),
        (link.display().to_string(), "is a file of this mount"),
        (
            bind.join("origin").display().to_string(),
            "is a file of this mount",
        ),
        (by_fd.clone(), "is a file of this mount"),
        (lo.clone(), "loop device over"),
    ];
    for (i, (path, needle)) in candidates.iter().enumerate() {
        let answer = refused(&s.mnt, &format!("snapshot y {path}"), needle);
        assert!(answer.contains("wait on themselves"), "{answer}");
        assert_eq!(snapshots_of(&s.mnt), ["s"], "after {path}");
        assert_same(path, &read_all(&s.file("origin")), &model);
        assert_same("snapshot s", &read_all(&s.file("s")), &initial);
        // The mount still serves: an origin write copies out to s, and s still reads as before.
        write_at(
            &s.file("origin"),
            i as u64 * MIB,
            4096,
            20 + i as u64,
            &mut model,
        );
        assert_same(
            "snapshot s after a write",
            &read_all(&s.file("s")),
            &initial,
        );
    }
    // The CLI goes through `control`: the same refusal, exit 1.
    let mnt = s.mnt.to_str().unwrap();
    let out = snapfs(&["snapshot", mnt, "y", "--cow", s.file("s").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a file of this mount"), "{stderr}");
    drop(held);
    stack.detach(&lo);
    stack.umount(&bind);
    assert_same("origin", &read_all(&s.file("origin")), &model);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
}

/// A COW file on an ext4 that lives on the mount's own origin (through a loop device) leads
/// back; the same on another mount's origin is ordinary stacking and works.
#[test]
fn a_cow_on_a_filesystem_on_the_own_origin_is_refused() {
    let mut s = Scratch::new("edges-ext4");
    let mut other = Scratch::new("edges-ext4-other");
    let origin = s.path("origin.img");
    let other_origin = other.path("origin.img");
    sparse_file(&origin, 64 * MIB);
    sparse_file(&other_origin, 64 * MIB);
    s.mount_daemon(&origin, &[], &[]);
    other.mount_daemon(&other_origin, &[], &[]);
    let mut stack = Stack::default();
    let mut exts = Vec::new();
    for (tag, mount) in [("own", &s), ("other", &other)] {
        let lo = stack.attach(&mount.file("origin"), true, false);
        run("mkfs.ext4", &["-q", "-F", &lo]);
        let dir = s.path(&format!("ext-{tag}"));
        stack.mount(&lo, &dir, "rw");
        sparse_file(&dir.join("y.cow"), 8 * MIB);
        exts.push((lo, dir));
    }
    let _abort = AbortOnPanic::new(&[&s, &other]);
    let own_cow = exts[0].1.join("y.cow");
    let answer = refused(
        &s.mnt,
        &format!("snapshot y {}", own_cow.display()),
        "leads back to this mount",
    );
    assert!(answer.contains(&format!("loop device over {}", s.file("origin").display())));
    assert!(snapshots_of(&s.mnt).is_empty());
    // The filesystem on the origin still works.
    let file = exts[0].1.join("data");
    let payload = Rng(5).bytes(MIB);
    let (f, p) = (file.clone(), payload.clone());
    bounded("ext4 write", move || {
        std::fs::write(&f, &p).unwrap();
        File::open(&f).unwrap().sync_all().unwrap();
    });
    assert_eq!(std::fs::read(&file).unwrap(), payload);
    // A COW on a filesystem on another mount's origin: no cycle, attached and copying.
    // nofreeze: frozen, the snapshot would hold ext4's clean superblock and the thaw would then
    // change the origin's (needs_recovery again), which this comparison is not about.
    let other_cow = exts[1].1.join("y.cow");
    accepted(
        &s.mnt,
        &format!("snapshot y {} nofreeze", other_cow.display()),
    );
    let before = read_all(&s.file("origin"));
    let mut model = before.clone();
    write_at(&s.file("origin"), 40 * MIB, 65536, 6, &mut model);
    assert_same("snapshot y", &read_all(&s.file("y")), &before);
    accepted(&s.mnt, "drop y");
    drop(stack);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_eq!(other.unmount(), 0, "{}", other.log());
}

/// A partition of a loop device over the origin leads back through the loop device
/// (`/sys/block/loopN/loopNp1/partition`, then the loop's backing file).
#[test]
fn a_partition_of_a_loop_device_over_the_origin_is_refused() {
    let mut s = Scratch::new("edges-part");
    let origin = s.path("origin.img");
    // One Linux partition from 1 MiB, 8 MiB long; the partition itself is zero.
    let image = mbr_image(16 * MIB, 2048, 16384);
    std::fs::write(&origin, &image).unwrap();
    s.mount_daemon(&origin, &[], &[]);
    let looped = PartitionedLoop::attach(&s.file("origin"), &s.path("part1"));
    let _abort = AbortOnPanic::new(&[&s]);
    let lo_name = looped.name();
    let part = looped.part.display().to_string();
    let answer = refused(
        &s.mnt,
        &format!("snapshot y {part}"),
        "leads back to this mount",
    );
    assert!(
        answer.contains(&format!("partition of /dev/{lo_name}")),
        "{answer}"
    );
    assert!(answer.contains("loop device over"), "{answer}");
    assert!(snapshots_of(&s.mnt).is_empty());
    assert_same("origin", &read_all(&s.file("origin")), &image);
    drop(looped);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// A peer whose daemon is stopped does not hang the check: a COW on its files is refused after
/// the check's time limit, at mount and for a `snapshot` command, and this mount keeps serving.
#[test]
fn a_stopped_peer_does_not_hang_the_check() {
    let mut m1 = Scratch::new("edges-stopped1");
    let mut m2 = Scratch::new("edges-stopped2");
    let m3 = Scratch::new("edges-stopped3");
    let o1 = m1.path("origin.img");
    let o2 = m2.path("origin.img");
    let o3 = m3.path("origin.img");
    let mut model = zero_first_image(&o1, 8 * MIB, 121);
    zero_first_image(&o2, 8 * MIB, 122);
    zero_first_image(&o3, 8 * MIB, 123);
    m1.mount_daemon(&o1, &[], &[]);
    m2.mount_daemon(&o2, &[], &[]);
    let _abort = AbortOnPanic::new(&[&m1, &m2]);
    let peer = m2.server_pid();
    kill(peer, libc::SIGSTOP);
    let _cont = Continue(peer);
    let started = Instant::now();
    refused(
        &m1.mnt,
        &format!("snapshot y {}", m2.file("origin").display()),
        "does not answer",
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    assert!(snapshots_of(&m1.mnt).is_empty());
    write_at(&m1.file("origin"), MIB, 4096, 124, &mut model);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model);
    let sum = checksum(&o3);
    let option = format!("snapshot=y:{}", m2.file("origin").display());
    let out = snapfs_mount(&o3, &m3.mnt, &[&option], &m3.path("m3.log"));
    let log = std::fs::read_to_string(m3.path("m3.log")).unwrap();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("does not answer"), "{log}");
    assert!(!is_mounted(&m3.mnt));
    assert_eq!(checksum(&o3), sum);
    kill(peer, libc::SIGCONT);
    assert_eq!(m2.unmount(), 0);
    assert_eq!(m1.unmount(), 0);
}

/// Sends SIGCONT to a stopped daemon when dropped (a failed test must not leave it stopped).
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        // SAFETY: a signal to a daemon this test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Two mounts: m1 takes a COW on m2's origin (a chain: allowed, and it works); m2 then asking
/// for a COW on m1's origin would close a cycle and is refused, changing nothing.
#[test]
fn a_cycle_through_two_mounts_is_refused() {
    let mut m1 = Scratch::new("edges-cycle1");
    let mut m2 = Scratch::new("edges-cycle2");
    let o1 = m1.path("origin.img");
    let o2 = m2.path("origin.img");
    let initial1 = zero_first_image(&o1, 16 * MIB, 31);
    zero_first_image(&o2, 16 * MIB, 32);
    m1.mount_daemon(&o1, &[], &[]);
    m2.mount_daemon(&o2, &[], &[]);
    let _abort = AbortOnPanic::new(&[&m1, &m2]);
    accepted(
        &m1.mnt,
        &format!("snapshot a {}", m2.file("origin").display()),
    );
    let mut model1 = initial1.clone();
    write_at(&m1.file("origin"), MIB, 65536, 33, &mut model1);
    assert_same("m1 snapshot a", &read_all(&m1.file("a")), &initial1);
    let m2_origin = read_all(&m2.file("origin"));

    let answer = refused(
        &m2.mnt,
        &format!("snapshot b {}", m1.file("origin").display()),
        "leads back to this mount",
    );
    assert!(
        answer.contains(&format!("file of the snapfs mount on {}", m1.mnt.display())),
        "{answer}"
    );
    assert!(snapshots_of(&m2.mnt).is_empty());
    assert_eq!(snapshots_of(&m1.mnt), ["a"]);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model1);
    assert_same("m2 origin", &read_all(&m2.file("origin")), &m2_origin);
    // Both still serve.
    write_at(&m1.file("origin"), 2 * MIB, 4096, 34, &mut model1);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model1);
    assert_same("m1 snapshot a", &read_all(&m1.file("a")), &initial1);
    let mut model2 = read_all(&m2.file("origin"));
    write_at(&m2.file("origin"), 8 * MIB, 4096, 35, &mut model2);
    assert_same("m2 origin", &read_all(&m2.file("origin")), &model2);
    assert_eq!(m1.unmount(), 0, "{}", m1.log());
    assert_eq!(m2.unmount(), 0, "{}", m2.log());
}

/// Legitimate stacking: m2's origin is m1's origin and m2's COW is m1's snapshot file. Data
/// flows through both; m1 asking for a COW on m2's origin would close a cycle and is refused.
#[test]
fn stacking_without_a_cycle_keeps_working() {
    let mut m1 = Scratch::new("edges-stack1");
    let mut m2 = Scratch::new("edges-stack2");
    let o1 = m1.path("origin.img");
    let s1 = m1.path("s1.cow");
    let initial = zero_first_image(&o1, 16 * MIB, 41);
    sparse_file(&s1, 16 * MIB);
    m1.mount_daemon(&o1, &[&format!("snapshot=s1:{}", s1.display())], &[]);
    let t_option = format!("snapshot=t:{}", m1.file("s1").display());
    m2.mount_daemon(&m1.file("origin"), &[&t_option], &[]);
    let _abort = AbortOnPanic::new(&[&m1, &m2]);
    let mut model = initial.clone();
    write_at(&m2.file("origin"), 3 * MIB, 65536, 42, &mut model);
    assert_same("m2 origin", &read_all(&m2.file("origin")), &model);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model);
    assert_same("m2 snapshot t", &read_all(&m2.file("t")), &initial);

    let answer = refused(
        &m1.mnt,
        &format!("snapshot z {}", m2.file("origin").display()),
        "leads back to this mount",
    );
    assert!(answer.contains("its origin"), "{answer}");
    assert_eq!(snapshots_of(&m1.mnt), ["s1"]);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model);
    write_at(&m2.file("origin"), 9 * MIB, 4096, 43, &mut model);
    assert_same("m2 snapshot t", &read_all(&m2.file("t")), &initial);
    assert_eq!(m2.unmount(), 0, "{}", m2.log());
    assert_eq!(m1.unmount(), 0, "{}", m1.log());
    assert_same("origin image", &std::fs::read(&o1).unwrap(), &model);
}

/// At mount time, before the mount exists, a path inside the mount point names what will be
/// the mount's own files: an origin, a COW (from `-o snapshot=` or the registry), a log file
/// or a registry there is refused, as is a log file or registry that is one of the devices.
/// Nothing is written, nothing mounted.
#[test]
fn mount_time_paths_into_the_mount_point_or_onto_devices_are_refused() {
    let s = Scratch::new("edges-mounttime");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    zero_first_image(&origin, 8 * MIB, 51);
    sparse_file(&cow, 8 * MIB);
    let inside_origin = s.file("o.img");
    let inside_cow = s.file("x.cow");
    zero_first_image(&inside_origin, 8 * MIB, 52);
    sparse_file(&inside_cow, 8 * MIB);
    let link = s.path("link.cow");
    std::os::unix::fs::symlink(&inside_cow, &link).unwrap();
    let origin_link = s.path("origin-link");
    std::os::unix::fs::symlink(&origin, &origin_link).unwrap();
    let registry = s.path("reg");
    std::fs::write(&registry, format!("x {} P 8\n", inside_cow.display())).unwrap();
    let spare = s.path("spare.img");
    sparse_file(&spare, MIB);
    let mut stack = Stack::default();
    let lo = stack.attach(&spare, false, false);
    let files = [
        &origin,
        &cow,
        &inside_origin,
        &inside_cow,
        &registry,
        &spare,
    ];
    let before = sums(&files.map(|p| p.as_path()));

    let d = |p: &Path| p.display().to_string();
    let s_opt = format!("snapshot=s:{}", d(&cow));
    let cases: Vec<(PathBuf, Vec<String>, &str)> = vec![
        (inside_origin.clone(), vec![], "origin"),
        (
            origin.clone(),
            vec![format!("snapshot=x:{}", d(&inside_cow))],
            "COW",
        ),
        (
            origin.clone(),
            vec![format!("snapshot=x:{}", d(&link))],
            "COW",
        ),
        (
            origin.clone(),
            vec![format!("registry={}", d(&registry))],
            "(from the registry)",
        ),
        (
            origin.clone(),
            vec![format!("registry={}", d(&s.file("reg")))],
            "registry",
        ),
        (
            origin.clone(),
            vec![format!("log={}", d(&s.file("snapfs.log")))],
            "log file",
        ),
    ];
    for (o, options, what) in &cases {
        let opts: Vec<&str> = options.iter().map(String::as_str).collect();
        let out = s
            .command(o, &opts, false)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("inside the mount point"),
            "{options:?}: {stderr}"
        );
        assert!(stderr.contains(what), "{options:?}: {stderr}");
        assert!(!is_mounted(&s.mnt));
    }
    let devices: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("log={}", d(&origin))], "is the origin"),
        (vec![format!("log={}", d(&origin_link))], "is the origin"),
        (
            vec![s_opt.clone(), format!("log={}", d(&cow))],
            "is the COW",
        ),
        (
            vec![s_opt.clone(), format!("registry={}", d(&cow))],
            "is the COW",
        ),
        (
            vec![
                format!("log={}", d(&registry)),
                format!("registry={}", d(&registry)),
            ],
            "is also the registry",
        ),
        (vec![format!("log={lo}")], "is a block device"),
    ];
    for (options, needle) in &devices {
        let opts: Vec<&str> = options.iter().map(String::as_str).collect();
        let out = s
            .command(&origin, &opts, false)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {stderr}");
        assert!(stderr.contains(needle), "{options:?}: {stderr}");
        assert!(!is_mounted(&s.mnt));
    }
    assert_eq!(
        before,
        sums(&files.map(|p| p.as_path())),
        "nothing was written"
    );
    assert!(!s.file("snapfs.log").exists() && !s.file("reg").exists());
}

// ----- one mount per mount point ------------------------------------------------------------------

/// A second `snapfs mount` on a directory that holds a snapfs mount is refused; the first one
/// serves on, and one `umount` ends it alone.
#[test]
fn a_second_mount_on_a_mount_point_is_refused() {
    let mut s = Scratch::new("edges-stacked");
    let (o1, o2) = (s.path("o1.img"), s.path("o2.img"));
    let data1 = write_random_image(&o1, 8 * MIB, 61);
    write_random_image(&o2, 8 * MIB, 62);
    s.mount_daemon(&o1, &[], &[]);
    let sum2 = checksum(&o2);
    for foreground in [false, true] {
        let out = s
            .command(&o2, &[], foreground)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("already holds a snapfs mount"), "{stderr}");
        assert!(stderr.contains(o1.to_str().unwrap()), "{stderr}");
    }
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = s.mnt.to_str().unwrap();
    assert_eq!(
        table
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(mnt))
            .count(),
        1
    );
    assert_eq!(checksum(&o2), sum2);
    assert_same("origin", &read_all(&s.file("origin")), &data1);
    assert_eq!(s.unmount(), 0);
    assert!(!is_mounted(&s.mnt));
}

/// A daemon never unmounts a mount that is not its own: A's mount is detached while still in
/// use, B is mounted on the same directory, then A's last user goes and A exits: B stays.
#[test]
fn a_daemon_leaves_a_later_mount_on_its_mount_point_alone() {
    let mut s = Scratch::new("edges-later");
    let (oa, ob) = (s.path("a.img"), s.path("b.img"));
    write_random_image(&oa, 8 * MIB, 63);
    let data_b = write_random_image(&ob, 8 * MIB, 64);
    s.mount_daemon(&oa, &[], &[]);
    let a = s.daemon.take().unwrap();
    let busy = File::open(s.file("origin")).unwrap();
    run("umount", &["-l", s.mnt.to_str().unwrap()]);
    let out = snapfs_mount(&ob, &s.mnt, &[], &s.path("b.log"));
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(s.path("b.log")).unwrap()
    );
    s.daemon = daemons_of(&s.mnt, &[a]).first().copied();
    drop(busy);
    assert_eq!(reap(a), 0, "A exits once its last user is gone");
    assert!(is_mounted(&s.mnt), "B is still mounted after A exited");
    assert_same("B's origin", &read_all(&s.file("origin")), &data_b);
    assert_eq!(s.unmount(), 0);
}

// ----- remount right after umount ---------------------------------------------------------------

/// 20 rounds of writes, `umount`, and an immediate `snapfs mount` of the same devices: every
/// mount succeeds, and the origin and the snapshot read exactly as the model says.
#[test]
fn remount_right_after_umount_20_rounds() {
    let s = Scratch::new("edges-remount");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = write_random_image(&origin, 32 * MIB, 71);
    sparse_file(&cow, 48 * MIB);
    let option = format!("snapshot=s:{}", cow.display());
    let log = s.path("mounts.log");
    let mut model = initial.clone();
    let mut daemons: Vec<i32> = Vec::new();
    let mut rng = Rng(72);
    let started = Instant::now();
    for round in 0..20 {
        let out = snapfs_mount(&origin, &s.mnt, &[&option], &log);
        assert!(
            out.status.success(),
            "round {round}: mount right after umount failed: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let new = daemons_of(&s.mnt, &daemons);
        assert_eq!(new.len(), 1, "round {round}: one new daemon");
        daemons.extend(new);
        let f = open_rw(&s.file("origin"));
        for _ in 0..24 {
            let len = if rng.below(4) == 0 {
                1 << 20
            } else {
                4096 * (1 + rng.below(16))
            };
            let offset = rng.below(32 * MIB - len) / 4096 * 4096;
            let data = rng.bytes(len);
            f.write_all_at(&data, offset).unwrap();
            model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        }
        drop(f);
        if round % 5 == 4 {
            assert_same("origin", &read_all(&s.file("origin")), &model);
            assert_same("snapshot s", &read_all(&s.file("s")), &initial);
        }
        run("umount", &[s.mnt.to_str().unwrap()]);
    }
    for pid in daemons {
        assert_eq!(reap(pid), 0, "{}", std::fs::read_to_string(&log).unwrap());
    }
    println!("20 rounds in {:.1} s", started.elapsed().as_secs_f64());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
}

/// The holder decides: a device of a live mount fails at once, naming that mount; a device of a
/// daemon whose mount is gone (stopped here, so that it cannot finish) is waited for, and the
/// mount goes ahead as soon as that daemon exits.
#[test]
fn a_device_of_a_gone_mount_is_waited_for_and_of_a_live_one_refused() {
    let mut a = Scratch::new("edges-holder-a");
    let b = Scratch::new("edges-holder-b");
    let origin = a.path("origin.img");
    let cow = a.path("s.cow");
    let initial = write_random_image(&origin, 8 * MIB, 81);
    sparse_file(&cow, 8 * MIB);
    let option = format!("snapshot=s:{}", cow.display());
    a.mount_daemon(&origin, &[&option], &[]);
    let mut model = initial.clone();
    write_at(&a.file("origin"), MIB, 65536, 82, &mut model);

    let started = Instant::now();
    let out = snapfs_mount(&origin, &b.mnt, &[&option], &b.path("b.log"));
    let stderr = std::fs::read_to_string(b.path("b.log")).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let live = format!("in use by the snapfs mount on {}", a.mnt.display());
    assert!(stderr.contains(&live), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    assert!(!is_mounted(&b.mnt));

    let pid = a.daemon.take().unwrap();
    kill(pid, libc::SIGSTOP);
    umount_syscall(&a.mnt);
    let started = Instant::now();
    let log = b.path("b2.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("mount")
        .arg(&origin)
        .arg(&b.mnt)
        .arg("-o")
        .arg(&option);
    cmd.stdin(Stdio::null()).stderr(File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "B waits while A holds the devices"
    );
    kill(pid, libc::SIGCONT);
    let status = bounded("B's mount", move || child.wait().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        text.contains("serves no mount") && text.contains("waiting"),
        "{text}"
    );
    assert_eq!(reap(pid), 0, "A finished its teardown");
    let mut b = b;
    b.daemon = daemons_of(&b.mnt, &[]).first().copied();
    assert_same("origin", &read_all(&b.file("origin")), &model);
    assert_same("snapshot s", &read_all(&b.file("s")), &initial);
    assert_eq!(b.unmount(), 0);
}

// ----- signals ------------------------------------------------------------------------------------

/// Signals that used to kill the daemon silently (QUIT, USR1, USR2, ALRM, ...) or unmount the
/// volume (HUP) are logged and ignored; PIPE is ignored; HUP reopens the log file, so a log
/// rotation (rename, HUP) sends new lines to a new file. The data is checked after each.
#[test]
fn signals_keep_the_mount_and_hup_reopens_the_log() {
    let mut s = Scratch::new("edges-signals");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = write_random_image(&origin, 8 * MIB, 91);
    sparse_file(&cow, 8 * MIB);
    let log = s.path("daemon.log");
    let opts = format!("snapshot=s:{},log={}", cow.display(), log.display());
    s.mount_daemon(&origin, &[&opts], &[]);
    let pid = s.server_pid();
    let mut model = initial.clone();
    let signals = [
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGTSTP, "SIGTSTP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
    ];
    for (i, (sig, name)) in signals.iter().enumerate() {
        kill(pid, *sig);
        if *sig == libc::SIGPIPE {
            std::thread::sleep(Duration::from_millis(200));
        } else {
            let line = format!("{name} ignored");
            wait_for(10, &line, || {
                std::fs::read_to_string(&log).unwrap().contains(&line) || !running(pid)
            });
        }
        assert!(running(pid), "{name} killed the daemon");
        assert_ne!(process_state(pid), 'T', "{name} stopped the daemon");
        assert!(is_mounted(&s.mnt), "{name}: still mounted");
        let offset = i as u64 * 65536;
        write_at(&s.file("origin"), offset, 65536, 92 + i as u64, &mut model);
        assert_same(name, &read_all(&s.file("origin")), &model);
    }
    // Rotation: rename, HUP, and the next lines land in a new file at the same path.
    let rotated = s.path("daemon.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    kill(pid, libc::SIGHUP);
    wait_for(10, "the new log file", || log.exists());
    accepted(&s.mnt, "help");
    wait_for(10, "the control line in the new log", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("control: help")
    });
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("SIGHUP: reopening the log file"), "{old}");
    assert!(!old.contains("control: help"), "{old}");
    assert!(running(pid) && is_mounted(&s.mnt));
    assert_same("snapshot s", &read_all(&s.file("s")), &initial);
    assert_same("origin", &read_all(&s.file("origin")), &model);
    assert_eq!(s.unmount(), 0);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("unmounted; devices flushed")
    );
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);

    // Without log=, HUP is logged and ignored.
    s.mount_foreground(&origin, &[], &[]);
    kill(s.server_pid(), libc::SIGHUP);
    wait_for(10, "the HUP line", || s.log().contains("SIGHUP ignored"));
    assert!(is_mounted(&s.mnt));
    assert_same("origin", &read_all(&s.file("origin")), &model);
    assert_eq!(s.unmount(), 0);
}

// ----- messages ---------------------------------------------------------------------------------

/// A mount by a user without CAP_SYS_ADMIN says that snapfs mounts need root, before anything
/// is opened.
#[test]
fn a_mount_without_root_says_it_needs_root() {
    let s = Scratch::new("edges-nonroot");
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 101);
    let sum = checksum(&origin);
    let nobody = 65534;
    for p in [&s.dir, &s.mnt, &origin] {
        std::os::unix::fs::chown(p, Some(nobody), Some(nobody)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .arg("mount")
        .arg(&origin)
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("need root") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!is_mounted(&s.mnt));
    assert_eq!(checksum(&origin), sum);
}

/// With debug logging, a flush storm (a journal committing through a loop device) gives a few
/// "flushed" lines, not one per flush.
#[test]
fn debug_logging_does_not_log_every_flush() {
    let mut s = Scratch::new("edges-flushlog");
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 111);
    s.mount_foreground(&origin, &[], &[("RUST_LOG", "snapfs=debug")]);
    let f = open_rw(&s.file("origin"));
    let started = Instant::now();
    for i in 0..300u64 {
        f.write_all_at(&[i as u8; 512], i * 512).unwrap();
        f.sync_data().unwrap();
    }
    let secs = started.elapsed().as_secs() + 1;
    drop(f);
    let log = s.log();
    let lines = log.lines().filter(|l| l.contains(": flushed")).count();
    assert!(log.contains("origin: flushed"), "{log}");
    assert!(
        lines as u64 <= secs + 2,
        "{lines} flushed lines for 300 flushes in {secs} s"
    );
    assert_eq!(s.unmount(), 0);
}
