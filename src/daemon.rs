//! Running a mount: open the devices, mount, serve until unmounted, flush, exit.
//!
//! Threads: the main thread mounts and then runs fuser's session, which starts
//! [`crate::fuse::FUSE_THREADS`] request threads; one more thread waits for SIGTERM, SIGINT and
//! SIGHUP. Those signals are blocked before any thread exists, so only that thread sees them.
//! While a merge runs the volume has its own merge thread.
//!
//! Teardown is ours, not fuser's (fuser 0.18 unmounts without `MNT_DETACH`, fails with EBUSY
//! while a loop device holds a file, and can then claim success): on a signal the signal thread
//! flushes every device and detaches the mount (`umount2(MNT_DETACH)`); when the last user is
//! gone the kernel ends the FUSE connection, the session returns, and the main thread flushes
//! again and exits. An external `umount` ends the session the same way. The daemon never
//! accesses its own mountpoint once mounted: a request to itself could wait on itself.
//!
//! Without `-f` the process forks before any thread exists; the child reports "mounted" (once
//! the kernel's INIT has been answered) or the error text through a pipe, and the parent exits
//! with 0 or prints the error and exits with 1.
//!
//! The snapshots attached are the `-o snapshot=` ones plus the registry's (`-o registry=PATH`,
//! [`crate::registry`]), planned before forking so that a bad registry fails like a bad option.
//! A [`Ledger`] keeps the registry in step: control commands and status reads update it, and one
//! more thread looks once a second for a merge that completed.
//!
//! Logging: stderr, or the file of `-o log=PATH` once the mount is live. A daemon whose stderr
//! is a pipe lets go of it once the mount is live (see `release_piped_stderr`).

mod teardown;

use crate::device::{FileDevice, OpenMode};
use crate::fuse::{FsSettings, SnapFs, session_config};
use crate::options::{MountOptions, SnapshotSpec};
use crate::registry::{self, Ledger, Source};
use crate::volume::{Volume, VolumeOptions};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use teardown::{spawn_signal_thread, stop_signals};

/// `prctl(PR_SET_IO_FLUSHER)`; libc defines the constant for Android only.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// How often the daemon looks for a snapshot the volume detached by itself (a completed merge)
/// to take it out of the registry; status reads and control commands look as well.
const REGISTRY_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The snapshots a mount attaches, in order, and where each came from.
type Plan = Vec<(SnapshotSpec, Source)>;

/// A live mount: the volume, the record of its snapshots, and the FUSE session serving them.
struct Mounted {
    volume: Arc<Volume>,
    ledger: Arc<Ledger>,
    session: fuser::Session<SnapFs>,
}

/// What to mount, as the user gave it.
#[derive(Debug, Clone)]
pub struct MountRequest {
    /// The origin as given: it becomes the mount's source in `/proc/mounts` (`fsname`).
    pub origin: PathBuf,
    /// An existing directory.
    pub mountpoint: PathBuf,
    /// The parsed `-o` options.
    pub options: MountOptions,
    /// Serve in this process (`-f`) instead of forking a daemon.
    pub foreground: bool,
}

/// Where the outcome of mounting goes: the terminal (`-f`) or the waiting parent.
enum Reporter {
    Foreground,
    Parent(File),
}

impl Reporter {
    fn ready(self) {
        if let Reporter::Parent(mut pipe) = self {
            // The parent exits 0 on this; if it has gone, there is no one to tell.
            let _ = pipe.write_all(b"ok");
        }
    }

    fn failed(self, message: &str) {
        let line = message.replace('\n', " ");
        match self {
            Reporter::Foreground => eprintln!("snapfs: {line}"),
            Reporter::Parent(mut pipe) => {
                let _ = pipe.write_all(format!("error {line}").as_bytes());
            }
        }
    }
}

/// Mounts and serves; returns the process exit code (0: served and unmounted cleanly).
pub fn run(request: MountRequest) -> i32 {
    let fsname = request.origin.display().to_string();
    let (request, plan) = match prepare(request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("snapfs: {e}");
            return 1;
        }
    };
    if request.foreground {
        serve(&request, plan, &fsname, Reporter::Foreground)
    } else {
        daemonize(&request, plan, &fsname)
    }
}

/// Absolute paths, and the snapshots to attach: the `-o snapshot=` options plus what the
/// registry (if any) recorded.
fn prepare(request: MountRequest) -> Result<(MountRequest, Plan), String> {
    let request = absolute_paths(request)?;
    let options = &request.options;
    let plan = registry::plan(&options.snapshots, options.registry.as_deref())?;
    Ok((request, plan))
}

/// `--check` (what `mount -f` asks for): the options parsed already; checks that the devices
/// and the mountpoint exist, without opening anything (the devices may be in use by the very
/// mount being recorded). Returns the exit code.
pub fn check(request: MountRequest) -> i32 {
    let (request, plan) = match prepare(request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("snapfs: {e}");
            return 1;
        }
    };
    let cows = plan.iter().map(|(s, _)| &s.cow);
    for path in std::iter::once(&request.origin).chain(cows) {
        if let Err(e) = std::fs::metadata(path) {
            eprintln!("snapfs: {}: {e}", path.display());
            return 1;
        }
    }
    if !request.mountpoint.is_dir() {
        let mp = request.mountpoint.display();
        eprintln!("snapfs: mountpoint {mp} is not a directory");
        return 1;
    }
    0
}

/// Makes every path absolute, since the daemon changes to `/`. Device paths keep their
/// symlinks (messages name them as given); the mountpoint is resolved as the kernel records it
/// in the mount table, which is where teardown looks for it.
fn absolute_paths(mut request: MountRequest) -> Result<MountRequest, String> {
    let abs = |p: &Path| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display()));
    request.origin = abs(&request.origin)?;
    request.mountpoint = request
        .mountpoint
        .canonicalize()
        .map_err(|e| format!("mountpoint {}: {e}", request.mountpoint.display()))?;
    for spec in &mut request.options.snapshots {
        spec.cow = abs(&spec.cow)?;
    }
    let options = &mut request.options;
    for path in [&mut options.registry, &mut options.log]
        .into_iter()
        .flatten()
    {
        *path = abs(path)?;
    }
    Ok(request)
}

fn daemonize(request: &MountRequest, plan: Plan, fsname: &str) -> i32 {
    let (read_end, write_end) = match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("snapfs: cannot create a pipe: {e}");
            return 1;
        }
    };
    // SAFETY: no other thread exists yet (the caller has started none), so the child may run
    // arbitrary code.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("snapfs: cannot fork: {e}");
            1
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            drop(write_end);
            wait_for_daemon(File::from(read_end), child)
        }
        Ok(nix::unistd::ForkResult::Child) => {
            drop(read_end);
            let _ = nix::unistd::setsid();
            if let Err(e) = detach_stdio() {
                log::warn!("cannot redirect stdin/stdout to /dev/null: {e}");
            }
            let _ = nix::unistd::chdir("/");
            let code = serve(
                request,
                plan,
                fsname,
                Reporter::Parent(File::from(write_end)),
            );
            std::process::exit(code);
        }
    }
}

/// stdin and stdout go to /dev/null; stderr stays, for the logs.
fn detach_stdio() -> nix::Result<()> {
    let null = nix::fcntl::open(
        "/dev/null",
        nix::fcntl::OFlag::O_RDWR,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::dup2_stdin(&null)?;
    nix::unistd::dup2_stdout(&null)
}

/// The parent's side: waits for "ok" or the error text.
fn wait_for_daemon(mut pipe: File, child: nix::unistd::Pid) -> i32 {
    let mut message = String::new();
    let _ = pipe.read_to_string(&mut message);
    if message == "ok" {
        return 0;
    }
    match message.strip_prefix("error ") {
        Some(reason) => eprintln!("snapfs: {reason}"),
        None => {
            let status = nix::sys::wait::waitpid(child, None);
            eprintln!("snapfs: the daemon exited before the mount was ready ({status:?})");
            return 1;
        }
    }
    let _ = nix::sys::wait::waitpid(child, None);
    1
}

/// The mount's whole life in this process.
fn serve(request: &MountRequest, plan: Plan, fsname: &str, reporter: Reporter) -> i32 {
    // Before any thread: every thread inherits the mask and the I/O flusher flag.
    let signals = stop_signals();
    if let Err(e) = signals.thread_block() {
        reporter.failed(&format!("cannot block signals: {e}"));
        return 1;
    }
    set_io_flusher();
    // Opened now so that a bad path fails the mount; used once the mount is live, so that
    // errors before that still reach whoever ran the mount.
    let log_file = match request.options.log.as_deref().map(open_log).transpose() {
        Ok(f) => f,
        Err(e) => {
            reporter.failed(&e);
            return 1;
        }
    };
    let Mounted {
        volume,
        ledger,
        session,
    } = match mount(request, plan, fsname) {
        Ok(mounted) => mounted,
        Err(e) => {
            reporter.failed(&e);
            return 1;
        }
    };
    reporter.ready();
    match log_file {
        Some(file) => redirect_stderr(file),
        None if !request.foreground => release_piped_stderr(),
        None => {}
    }
    if let Err(e) = spawn_signal_thread(signals, volume.clone(), &request.mountpoint, fsname) {
        log::error!("cannot start the signal thread: {e}; stop with umount");
    }
    if ledger.registry().is_some() && !request.options.read_only {
        spawn_registry_sync(ledger.clone(), volume.clone());
    }
    // A merge found in progress on disk goes on from where it stopped.
    volume.resume_merge();
    if let Err(e) = session.run() {
        log::error!("FUSE session ended with an error: {e}");
    }
    // Pauses a running merge after its current step (it resumes at the next mount) and makes
    // everything durable.
    let stopped = volume.shutdown();
    // A merge may have completed since the last look.
    ledger.sync(&volume);
    match stopped {
        Ok(()) => {
            let mp = request.mountpoint.display();
            log::info!("{mp} unmounted; devices flushed");
            0
        }
        Err(e) => {
            log::error!("flushing the devices after unmount failed: {e}");
            1
        }
    }
}

/// Opens the volume and mounts it. On return the mount is live: fuser mounts and completes
/// the INIT handshake inside `Session::new`, so the kernel already has the INIT reply.
fn mount(request: &MountRequest, plan: Plan, fsname: &str) -> Result<Mounted, String> {
    let mp = request.mountpoint.display();
    // Checked before any device is opened: a new COW is formatted when the volume opens.
    if !request.mountpoint.is_dir() {
        return Err(format!("mountpoint {mp} is not a directory"));
    }
    let volume = Arc::new(open_volume(request, &plan)?);
    let options = &request.options;
    let ledger = Arc::new(Ledger::new(
        options.registry.clone(),
        options.read_only,
        plan,
    ));
    if let Err(e) = ledger.opened(&volume) {
        // A new COW may have been formatted: make that durable like any other write.
        let _ = volume.flush_all();
        return Err(e);
    }
    let settings = FsSettings {
        read_only: options.read_only,
        uid: options.uid.unwrap_or(nix::unistd::getuid().as_raw()),
        gid: options.gid.unwrap_or(nix::unistd::getgid().as_raw()),
    };
    let initialised = Arc::new(AtomicBool::new(false));
    let fs = SnapFs::new(
        volume.clone(),
        ledger.clone(),
        settings,
        initialised.clone(),
    );
    let config = session_config(fsname, options);
    let session = fuser::Session::new(fs, &request.mountpoint, &config).map_err(|e| {
        // A new COW may have been formatted: make that durable like any other write.
        let _ = volume.flush_all();
        format!("cannot mount on {mp}: {e}")
    })?;
    debug_assert!(initialised.load(Ordering::Acquire), "INIT was handled");
    log::info!(
        "{fsname} mounted on {mp} ({} snapshot(s){})",
        volume.snapshots().len(),
        if options.read_only { ", read-only" } else { "" }
    );
    Ok(Mounted {
        volume,
        ledger,
        session,
    })
}

/// Keeps the registry in step with snapshots the volume detaches by itself (a completed
/// merge). The thread ends with the process.
fn spawn_registry_sync(ledger: Arc<Ledger>, volume: Arc<Volume>) {
    let spawned = std::thread::Builder::new()
        .name("snapfs-registry".to_string())
        .spawn(move || {
            loop {
                std::thread::sleep(REGISTRY_SYNC_INTERVAL);
                ledger.sync(&volume);
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the registry thread ({e}): status reads keep it in step");
    }
}

/// `log=PATH`: appended to, created 0640 if missing.
fn open_log(path: &Path) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("log file {}: {e}", path.display()))
}

/// A daemon whose stderr is a pipe would keep whoever reads that pipe waiting for its end
/// (`out=$(mount -t snapfs ... 2>&1)` would never return): once the mount is live it lets go
/// of the pipe, saying so. A terminal, a file or the journal (a socket) is kept.
fn release_piped_stderr() {
    let piped = nix::sys::stat::fstat(std::io::stderr())
        .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFIFO);
    if !piped {
        return;
    }
    log::info!(
        "stderr is a pipe: the daemon logs no more (mount with -o log=PATH to keep the log)"
    );
    match File::options().write(true).open("/dev/null") {
        Ok(null) => redirect_stderr(null),
        Err(e) => log::warn!("cannot open /dev/null: {e}"),
    }
}

/// From now on the log (and anything else written to stderr) goes to `file`.
fn redirect_stderr(file: File) {
    if let Err(e) = nix::unistd::dup2_stderr(&file) {
        log::warn!("cannot redirect the log: {e}");
    }
}

/// Marks the daemon as an I/O flusher: its allocations do not recurse into writeback of its
/// own mount (a loop device on it), and it is not throttled as a writer.
fn set_io_flusher() {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) };
    if rc != 0 {
        log::debug!(
            "prctl(PR_SET_IO_FLUSHER) failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Opens the origin and every COW, then the volume. Nothing is written to any device unless
/// everything validated (the volume's guarantee).
fn open_volume(request: &MountRequest, plan: &Plan) -> Result<Volume, String> {
    let options = &request.options;
    let mode = if options.read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    let origin = FileDevice::open(&request.origin, mode).map_err(|e| e.to_string())?;
    let mut configs = Vec::with_capacity(plan.len());
    for (spec, source) in plan {
        let from = match source {
            Source::Registry => " (from the registry)",
            _ => "",
        };
        configs.push(
            spec.open(mode)
                .map_err(|e| format!("snapshot {}{from}: {e}", spec.name))?,
        );
    }
    let volume_options = VolumeOptions {
        read_only: options.read_only,
        origin_discard: options.origin_discard,
    };
    Volume::open(Arc::new(origin), configs, volume_options).map_err(|e| e.to_string())
}
