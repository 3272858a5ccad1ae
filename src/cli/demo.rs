//! `snapfs demo [DIR]`: the whole life of a volume in half a minute, printed as a transcript.
//! This module is the stage (a working directory, running and showing commands, cleaning up
//! whatever happens); `demo_steps` is the play.

use super::demo_steps;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Set by SIGINT/SIGTERM: the demo stops before its next command and cleans up. (The command
/// running gets the terminal's SIGINT too and fails, which ends the step.)
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Prints a transcript line. Never panics: a closed stdout (`snapfs demo | head`) must not stop
/// the clean-up.
macro_rules! show {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
        let _ = out.flush();
    }};
}

pub const ABOUT: &str = "\
Run a short, self-checking tour of snapfs and print each step as a transcript: sparse image
files for a 256 MiB origin and a COW, a snapfs mount, ext4 on the origin through a loop device,
files written, a live snapshot (snapfs freezes ext4 around it), files changed, status, a look into the snapshot,
a merge back into the origin, and a check that the old files are back and the filesystem is
clean. Every step is checked; the demo exits 1 at the first failed check.

It always cleans up (filesystems, loop devices, the snapfs mount) and removes its working
directory, unless DIR was given (DIR is created if needed and kept, with the images and the
daemon's log in it). Needs root, /dev/fuse, mkfs.ext4 and e2fsck (e2fsprogs), losetup and mount
(util-linux, mount). Takes about 10 to 30 seconds.";

pub const EXAMPLES: &str = "\
Examples:
  snapfs demo
  snapfs demo /var/tmp/snapfs-demo      # keep the images and the log afterwards";

/// Tools the demo runs, and the Debian package of each.
const TOOLS: [(&str, &str); 5] = [
    ("mkfs.ext4", "e2fsprogs"),
    ("e2fsck", "e2fsprogs"),
    ("losetup", "util-linux"),
    ("mount", "mount"),
    ("umount", "mount"),
];

#[derive(clap::Args)]
pub struct Args {
    /// Work here and keep it afterwards (default: a new temporary directory, removed)
    dir: Option<PathBuf>,
}

pub fn run(args: Args) -> i32 {
    catch_interrupts();
    if let Err(why) = preflight() {
        eprintln!("snapfs demo: {why}");
        return 1;
    }
    let mut stage = match Stage::new(args.dir) {
        Ok(s) => s,
        Err(why) => {
            eprintln!("snapfs demo: {why}");
            return 1;
        }
    };
    let started = Instant::now();
    let outcome = demo_steps::play(&mut stage);
    if let Err(why) = &outcome {
        show!("\nFAILED: {why}");
        stage.show_log_tail();
    }
    stage.clean_up();
    match outcome {
        Ok(()) => {
            let secs = started.elapsed().as_secs_f64();
            show!("\ndemo passed: every check held ({secs:.1} s)");
            0
        }
        Err(_) => {
            show!("\ndemo FAILED (see above)");
            1
        }
    }
}

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// A handler (not SIG_IGN, which children would inherit): the commands the demo runs still
/// die of Ctrl-C, and the demo itself cleans up.
fn catch_interrupts() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        let _ = unsafe { sigaction(sig, &action) };
    }
}

fn preflight() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("needs root (a FUSE mount and loop devices): run it with sudo".to_string());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: modprobe fuse".to_string());
    }
    for (tool, package) in TOOLS {
        if find_tool(tool).is_none() {
            return Err(format!("{tool} is missing: apt-get install {package}"));
        }
    }
    Ok(())
}

/// `tool` in PATH or in the sbin directories (not always in a user's PATH).
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// The demo's working directory and everything set up in it, torn down in reverse order.
pub struct Stage {
    pub dir: PathBuf,
    keep_dir: bool,
    step: usize,
    exe: PathBuf,
    filesystems: Vec<PathBuf>,
    loops: Vec<String>,
    snapfs_mount: Option<PathBuf>,
    cleaned: bool,
}

impl Stage {
    fn new(dir: Option<PathBuf>) -> Result<Stage, String> {
        let keep_dir = dir.is_some();
        let dir = match dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!("snapfs-demo-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find snapfs itself: {e}"))?;
        show!("snapfs demo: a volume with ext4, a live snapshot, and a roll-back by merge.");
        show!("Every command below runs in {}.", dir.display());
        show!("$ cd {}", dir.display());
        Ok(Stage {
            dir,
            keep_dir,
            step: 0,
            exe,
            filesystems: Vec::new(),
            loops: Vec::new(),
            snapfs_mount: None,
            cleaned: false,
        })
    }

    /// A numbered heading.
    pub fn step(&mut self, title: &str) {
        self.step += 1;
        show!("\n== {}. {title}", self.step);
    }

    /// A line of narration (not a command).
    pub fn say(&self, text: &str) {
        show!("   {text}");
    }

    /// A check: prints it when it holds, fails the demo when it does not.
    pub fn check(&self, holds: bool, what: &str) -> Result<(), String> {
        if holds {
            self.say(&format!("ok: {what}"));
            Ok(())
        } else {
            Err(format!("check failed: {what}"))
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Runs a program in the working directory, showing it and its output; fails the demo if
    /// it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<String, String> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            return Err("interrupted".to_string());
        }
        let shown: Vec<&str> = [program].iter().chain(args).copied().collect();
        let shown = shown.join(" ");
        show!("$ {shown}");
        let exe = match program {
            "snapfs" => self.exe.clone(),
            _ => find_tool(program).unwrap_or_else(|| PathBuf::from(program)),
        };
        let out = Command::new(exe)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{program}: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in stdout
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            show!("   {line}");
        }
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!("{shown} failed ({})", out.status))
        }
    }

    pub fn mount_snapfs(&mut self, origin: &str, mnt: &str, options: &str) -> Result<(), String> {
        std::fs::create_dir_all(self.path(mnt)).map_err(|e| e.to_string())?;
        self.run("snapfs", &["mount", origin, mnt, "-o", options])?;
        self.snapfs_mount = Some(self.path(mnt));
        Ok(())
    }

    /// `losetup` with direct I/O (the fast mode over a FUSE file); returns the device.
    pub fn attach_loop(&mut self, file: &str, read_only: bool) -> Result<String, String> {
        let mut args = vec!["-f", "--show", "--direct-io=on"];
        if read_only {
            args.push("-r");
        }
        args.push(file);
        let dev = self.run("losetup", &args)?.trim().to_string();
        self.loops.push(dev.clone());
        Ok(dev)
    }

    pub fn detach_loop(&mut self, dev: &str) -> Result<(), String> {
        self.run("losetup", &["-d", dev])?;
        self.loops.retain(|d| d != dev);
        Ok(())
    }

    pub fn mount_fs(&mut self, dev: &str, dir: &str, options: &str) -> Result<(), String> {
        std::fs::create_dir_all(self.path(dir)).map_err(|e| e.to_string())?;
        self.run("mount", &["-o", options, dev, dir])?;
        self.filesystems.push(self.path(dir));
        Ok(())
    }

    pub fn umount_fs(&mut self, dir: &str) -> Result<(), String> {
        self.run("umount", &[dir])?;
        let path = self.path(dir);
        self.filesystems.retain(|d| *d != path);
        Ok(())
    }

    /// The daemon's log, when a step failed.
    fn show_log_tail(&self) {
        let log = std::fs::read_to_string(self.path("snapfs.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        if !lines.is_empty() {
            show!(
                "last lines of the snapfs log ({}):",
                self.path("snapfs.log").display()
            );
            for line in &lines[lines.len().saturating_sub(15)..] {
                show!("   {line}");
            }
        }
    }

    /// Tears down whatever is still set up, in the safe order: thaw, filesystems, loop
    /// devices, the snapfs mount; then removes the directory unless it was given.
    fn clean_up(&mut self) {
        if self.cleaned {
            return;
        }
        self.cleaned = true;
        show!("\n== clean up");
        for dir in self.filesystems.drain(..).rev() {
            if quiet("umount", &[dir.as_os_str()]).is_err() {
                let _ = quiet("umount", &["-l".as_ref(), dir.as_os_str()]);
            }
        }
        for dev in self.loops.drain(..) {
            let _ = quiet("losetup", &["-d".as_ref(), dev.as_ref()]);
        }
        if let Some(mnt) = self.snapfs_mount.take() {
            show!("$ umount {}", mnt.display());
            unmount_snapfs(&mnt);
        }
        if self.keep_dir {
            show!("   kept {} (images and snapfs.log)", self.dir.display());
        } else if !has_mounts_under(&self.dir) {
            show!("$ rm -r {}", self.dir.display());
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for Stage {
    /// Also on a panic: nothing is left mounted or attached.
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// Runs a clean-up command without showing it; `Err` if it failed.
fn quiet(program: &str, args: &[&std::ffi::OsStr]) -> Result<(), ()> {
    let status = Command::new(find_tool(program).unwrap_or_else(|| PathBuf::from(program)))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(()),
    }
}

/// `umount`, retried while a just-detached loop device still holds the file (the kernel lets
/// go of it asynchronously); lazily as a last resort.
fn unmount_snapfs(mnt: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while quiet("umount", &[mnt.as_os_str()]).is_err() {
        if Instant::now() > deadline {
            let _ = quiet("umount", &["-l".as_ref(), mnt.as_os_str()]);
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether anything is still mounted at or below `dir` (then it must not be removed).
fn has_mounts_under(dir: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.display().to_string();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp == prefix || mp.starts_with(&format!("{prefix}/")))
}
