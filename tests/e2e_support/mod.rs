//! Harness for the end-to-end tests: seeded data, image files, and [`Scratch`], which runs the
//! `snapfs` binary on a temporary directory and cleans up after it whatever happens.
// Each end-to-end test binary uses a different subset of this harness.
#![allow(dead_code, unused_imports)]

mod ext4;
mod process;

pub use ext4::{Ext4Volume, Frozen, Writer};
pub use process::{NoNewThreads, kill_9, peak_rss};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_snapfs");
pub const MIB: u64 = 1 << 20;
const WAIT: Duration = Duration::from_secs(20);

// ----- data -----------------------------------------------------------------------------------

pub use snapfs::rng::Rng;

pub fn write_random_image(path: &Path, len: u64, seed: u64) -> Vec<u8> {
    let data = Rng(seed).bytes(len);
    std::fs::write(path, &data).unwrap();
    data
}

/// A zeroed image of `len` bytes with an MBR holding one Linux partition of `sectors` sectors
/// from sector `start`.
pub fn mbr_image(len: u64, start: u32, sectors: u32) -> Vec<u8> {
    let mut image = vec![0u8; len as usize];
    let entry = &mut image[446..462];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    image[510] = 0x55;
    image[511] = 0xaa;
    image
}

pub fn sparse_file(path: &Path, len: u64) {
    File::create(path).unwrap().set_len(len).unwrap();
}

/// FNV-1a over a whole file: enough to see any change.
pub fn checksum(path: &Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

// ----- processes and mounts -------------------------------------------------------------------

pub fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    });
}

/// A temporary directory with a mountpoint in it; cleans up everything on drop.
pub struct Scratch {
    pub dir: PathBuf,
    pub mnt: PathBuf,
    pub child: Option<Child>,
    pub daemon: Option<i32>,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        become_subreaper();
        let dir = std::env::temp_dir().join(format!("snapfs-e2e-{}-{test}", std::process::id()));
        let _ = Command::new("umount")
            .arg("-l")
            .arg(dir.join("mnt"))
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        Scratch {
            mnt: dir.join("mnt"),
            dir,
            child: None,
            daemon: None,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.mnt.join(name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("snapfs.log")).unwrap_or_default()
    }

    pub fn command(&self, origin: &Path, options: &[&str], foreground: bool) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("mount").arg(origin).arg(&self.mnt);
        for o in options {
            cmd.arg("-o").arg(o);
        }
        if foreground {
            cmd.arg("-f");
        }
        cmd
    }

    /// `snapfs mount -f` as a child; returns once the mount is visible.
    pub fn mount_foreground(&mut self, origin: &Path, options: &[&str], env: &[(&str, &str)]) {
        let log = File::create(self.path("snapfs.log")).unwrap();
        let mut cmd = self.command(origin, options, true);
        cmd.envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap());
        let deadline = Instant::now() + WAIT;
        while !is_mounted(&self.mnt) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("snapfs exited ({status}) before mounting: {}", self.log());
            }
            assert!(Instant::now() < deadline, "mount did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `snapfs mount` without -f: must return 0 with the mount live.
    pub fn mount_daemon(&mut self, origin: &Path, options: &[&str], env: &[(&str, &str)]) {
        // stderr goes to a file: the daemon keeps it open, a pipe would never see EOF.
        let log = File::create(self.path("snapfs.log")).unwrap();
        let status = self
            .command(origin, options, false)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(log)
            .status()
            .unwrap();
        assert!(status.success(), "snapfs mount: {status}: {}", self.log());
        assert!(is_mounted(&self.mnt), "mounted when snapfs returns");
        self.daemon = Some(find_daemon(&self.mnt).expect("daemon process"));
    }

    /// Takes on the daemon of a mount made by someone else (mount(8), the helper): it was
    /// reparented to this process, the subreaper.
    pub fn adopt_daemon(&mut self) {
        assert!(
            is_mounted(&self.mnt),
            "nothing mounted on {}",
            self.mnt.display()
        );
        self.daemon = Some(find_daemon(&self.mnt).expect("daemon process"));
    }

    /// `umount MNT` (fails the test if it fails) and the server's exit status. "Target is
    /// busy" is retried for a few seconds: the kernel closes a detached loop device's backing
    /// file asynchronously, so right after `losetup -d` the file may still be open.
    pub fn unmount(&mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("umount").arg(&self.mnt).output().unwrap();
            if out.status.success() {
                break;
            }
            let busy = String::from_utf8_lossy(&out.stderr).contains("busy");
            assert!(busy && Instant::now() < deadline, "umount: {out:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_exit()
    }

    /// Waits for whichever server runs (child or daemon) to exit; returns its exit code.
    pub fn wait_exit(&mut self) -> i32 {
        let deadline = Instant::now() + WAIT;
        if let Some(mut child) = self.child.take() {
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    return status.code().unwrap_or(-1);
                }
                assert!(Instant::now() < deadline, "snapfs did not exit");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let pid = self.daemon.take().expect("a server was started");
        loop {
            let mut status = 0;
            // SAFETY: waitpid on our (adopted) child.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            assert!(rc >= 0, "waitpid: {}", std::io::Error::last_os_error());
            if rc == pid {
                assert!(libc::WIFEXITED(status), "daemon killed: {status:#x}");
                return libc::WEXITSTATUS(status);
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn server_pid(&self) -> i32 {
        match &self.child {
            Some(c) => c.id() as i32,
            None => self.daemon.unwrap(),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.daemon.take() {
            // SAFETY: signalling and reaping the daemon this test started.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn is_mounted(mnt: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = mnt.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(mnt))
}

/// The parent pid of the process whose `/proc` directory is `proc_dir` (field 4 of its `stat`,
/// read after the command name, which may hold blanks and parentheses).
pub fn parent_of(proc_dir: &Path) -> Option<i32> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    stat.rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(1))
        .and_then(|p| p.parse::<i32>().ok())
}

/// The daemon serving `mnt`: our adopted child running `snapfs mount ... mnt`.
pub fn find_daemon(mnt: &Path) -> Option<i32> {
    daemons_of(mnt, &[]).first().copied()
}

/// The snapfs daemons (our adopted children running `snapfs mount ... mnt`) serving `mnt`,
/// except `known`, in `/proc` order.
pub fn daemons_of(mnt: &Path, known: &[i32]) -> Vec<i32> {
    let me = std::process::id().to_string();
    let mnt = mnt.to_str().unwrap().as_bytes();
    let mut found = Vec::new();
    let Ok(proc) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in proc.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let ppid = parent_of(&entry.path()).map(|p| p.to_string());
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let serves = cmdline.split(|&b| b == 0).any(|a| a == mnt);
        if ppid.as_deref() == Some(me.as_str()) && serves && !known.contains(&pid) {
            found.push(pid);
        }
    }
    found
}

/// `fallocate(2)` on `f`; the error is the errno.
pub fn fallocate(f: &File, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap())
    }
}

pub fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// Writes one control command; returns the write's result and what `control` then reads.
pub fn control(s: &Scratch, command: &str) -> (std::io::Result<()>, String) {
    control_of(&s.mnt, command)
}

/// [`control`] on the mount at `mnt` (`mnt/control`).
pub fn control_of(mnt: &Path, command: &str) -> (std::io::Result<()>, String) {
    let control = mnt.join("control");
    let mut f = OpenOptions::new().write(true).open(&control).unwrap();
    let result = f.write_all(command.as_bytes());
    drop(f);
    let answer = std::fs::read_to_string(&control).unwrap();
    (result, answer)
}

/// Status lines as `(name, start, sectors, target, rest)`; lines starting `#` are for people.
pub fn status(s: &Scratch) -> Vec<(String, u64, u64, String, Vec<String>)> {
    let text = std::fs::read_to_string(s.file("status")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|line| {
            let (name, rest) = line.split_once(": ").expect("NAME: ...");
            let words: Vec<&str> = rest.split(' ').collect();
            assert!(words.len() >= 3, "{line}");
            (
                name.to_string(),
                words[0].parse().expect("start"),
                words[1].parse().expect("length"),
                words[2].to_string(),
                words[3..].iter().map(|w| w.to_string()).collect(),
            )
        })
        .collect()
}

/// Allocated sectors of a snapshot's status line `<allocated>/<total> <metadata>`.
pub fn allocated_sectors(s: &Scratch, name: &str) -> u64 {
    let lines = status(s);
    let line = lines.iter().find(|l| l.0 == name).expect("snapshot line");
    assert_eq!(line.3, "snapshot");
    let (alloc, total) = line.4[0].split_once('/').expect("a/t");
    assert!(total.parse::<u64>().unwrap() > 0);
    line.4[1].parse::<u64>().expect("metadata sectors");
    alloc.parse().unwrap()
}

// ----- block layer on top of the mount ----------------------------------------------------------

/// Runs a command that must succeed; returns its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `cond` every 50 ms until it holds; fails after `secs` seconds naming `what`.
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Loop devices and filesystems a test puts on the snapfs files. Declare it after the
/// [`Scratch`]: it is dropped first and tears down in the safe order (filesystems, then loop
/// devices, then the snapfs mount).
#[derive(Default)]
pub struct Stack {
    mounts: Vec<PathBuf>,
    loops: Vec<String>,
}

impl Stack {
    /// `losetup` on `file`: direct I/O or buffered, optionally read-only. Returns the device.
    pub fn attach(&mut self, file: &Path, direct: bool, read_only: bool) -> String {
        let f = file.to_str().unwrap();
        let mut args = vec!["-f", "--show"];
        if direct {
            args.push("--direct-io=on");
        }
        if read_only {
            args.push("-r");
        }
        args.push(f);
        let dev = run("losetup", &args).trim().to_string();
        self.loops.push(dev.clone());
        dev
    }

    pub fn detach(&mut self, dev: &str) {
        run("losetup", &["-d", dev]);
        self.loops.retain(|d| d != dev);
    }

    pub fn mount(&mut self, dev: &str, dir: &Path, opts: &str) {
        std::fs::create_dir_all(dir).unwrap();
        run("mount", &["-o", opts, dev, dir.to_str().unwrap()]);
        self.mounts.push(dir.to_path_buf());
    }

    /// Tears down a filesystem that something else mounted (`mount -a`) if the test does not.
    pub fn track_mount(&mut self, dir: &Path) {
        self.mounts.push(dir.to_path_buf());
    }

    pub fn umount(&mut self, dir: &Path) {
        run("umount", &[dir.to_str().unwrap()]);
        self.mounts.retain(|d| d != dir);
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for m in self.mounts.drain(..).rev() {
            let _ = Command::new("umount").arg("-l").arg(&m).output();
        }
        for l in self.loops.drain(..) {
            let _ = Command::new("losetup").arg("-d").arg(&l).output();
        }
    }
}

// ----- the tools: snapfs subcommands and the mount helper ----------------------------------------

/// Runs `snapfs ARGS` to completion (the subcommands that return: status, snapshot, ...).
pub fn snapfs(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// stdout of a `snapfs` subcommand that must succeed.
pub fn snapfs_ok(args: &[&str]) -> String {
    let out = snapfs(args);
    assert!(
        out.status.success(),
        "snapfs {args:?}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// JSON text (a `--json` answer), parsed; a parse error names the text.
/// The snapshot files a mount shows (everything but origin, status and control), sorted.
pub fn snapshot_names(mnt: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !["origin", "status", "control"].contains(&n.as_str()))
        .collect();
    names.sort();
    names
}

/// `snapfs backup MNT --to IMAGE EXTRA... --json`, started with its output piped.
pub fn spawn_backup(mnt: &Path, image: &Path, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(BIN)
        .arg("backup")
        .arg(mnt)
        .arg("--to")
        .arg(image)
        .args(extra)
        .arg("--json")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// `snapfs changes MNT SNAPSHOT --json`, live.
pub fn changes_json(mnt: &Path, snapshot: &str) -> serde_json::Value {
    json(&snapfs_ok(&[
        "changes",
        mnt.to_str().unwrap(),
        snapshot,
        "--json",
    ]))
}

/// `snapfs inspect --changes COW --json`, offline.
pub fn offline_changes_json(cow: &Path) -> serde_json::Value {
    json(&snapfs_ok(&[
        "inspect",
        "--changes",
        cow.to_str().unwrap(),
        "--json",
    ]))
}

/// The `mount-snapfs` binary (the mount-helper crate), built once per test process with this
/// test's profile: cargo builds only the binaries of the package under test.
pub fn mount_helper() -> PathBuf {
    static HELPER: OnceLock<PathBuf> = OnceLock::new();
    HELPER
        .get_or_init(|| {
            let dir = Path::new(BIN).parent().unwrap();
            let profile = match dir.file_name().unwrap().to_str().unwrap() {
                "debug" => "dev".to_string(),
                other => other.to_string(),
            };
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
            let out = Command::new(cargo)
                .args(["build", "-q", "-p", "mount-snapfs", "--profile", &profile])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building mount-snapfs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let helper = dir.join("mount-snapfs");
            assert!(helper.is_file(), "{} was built", helper.display());
            helper
        })
        .clone()
}

// ----- partitioned loop devices ----------------------------------------------------------------

/// A loop device attached with `-P` over an image with a partition table, and a device node
/// for its first partition; detached when dropped. The kernel here may not scan the table
/// itself and nothing creates device nodes: the partition is added with `partx` and its node
/// made with `mknod` at the path given.
pub struct PartitionedLoop {
    /// `/dev/loopN`.
    pub lo: String,
    /// The node of partition 1.
    pub part: PathBuf,
}

impl PartitionedLoop {
    pub fn attach(file: &Path, node: &Path) -> PartitionedLoop {
        let lo = run("losetup", &["-f", "--show", "-P", file.to_str().unwrap()])
            .trim()
            .to_string();
        let attached = PartitionedLoop {
            lo,
            part: node.to_path_buf(),
        };
        let sys = PathBuf::from(format!(
            "/sys/block/{name}/{name}p1",
            name = attached.name()
        ));
        if !sys.exists() {
            run("partx", &["-a", &attached.lo]);
        }
        let dev = std::fs::read_to_string(sys.join("dev")).unwrap();
        let (major, minor) = dev.trim().split_once(':').unwrap();
        run("mknod", &[node.to_str().unwrap(), "b", major, minor]);
        attached
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        self.lo.trim_start_matches("/dev/").to_string()
    }
}

impl Drop for PartitionedLoop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.lo).output();
    }
}
