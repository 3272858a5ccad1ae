//! Running a mount: open the devices, mount, serve until unmounted, flush, exit.
//!
//! Threads: the main thread mounts, then waits for fuser's session thread, which starts
//! [`crate::fuse::FUSE_THREADS`] request threads; one more thread takes signals
//! ([`signals`]: SIGTERM and SIGINT stop the mount, SIGHUP reopens the log, the others that
//! would kill the daemon are logged and ignored). Those signals are blocked before any thread
//! exists, so only that thread sees them. While a merge runs the volume has its own merge
//! thread.
//!
//! Teardown is ours, not fuser's (fuser 0.18 unmounts without `MNT_DETACH`, fails with EBUSY
//! while a loop device holds a file, can then claim success, and unmounts by path whatever is
//! mounted there when its session ends): on SIGTERM the signal thread flushes every device and
//! detaches the mount if the top mount on the mount point is ours ([`teardown`]); when the last
//! user is gone the kernel ends the FUSE connection, the session returns, and the main thread
//! flushes again and exits. An external `umount` ends the session the same way. fuser's mount
//! handle is never dropped, so fuser never unmounts anything.
//!
//! The daemon never sends requests to its own mount while it holds anything a request needs: it
//! refuses origins, COWs, a log file or a registry that lead back to it ([`crate::host::reach`]), and a
//! second mount on a mount point that holds a snapfs mount already. `umount` returns before the
//! daemon has flushed and let go of its devices; a new mount of the same devices waits for such
//! a daemon (see `crate::device::FileDevice::open`).
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

mod error;
mod signals;
mod teardown;

use crate::device::{FileDevice, OpenMode};
use crate::fuse::{FsSettings, SnapFs, session_config};
use crate::host::mountinfo;
use crate::host::reach::{self, Item, Own, Role};
use crate::lifecycle::{self, Monitor, Notifier};
use crate::options::{MountOptions, SnapshotSpec};
use crate::registry::{self, Ledger, Source};
use crate::volume::{Volume, VolumeOptions};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use teardown::Identity;

pub use error::MountError;

/// `prctl(PR_SET_IO_FLUSHER)`; libc defines the constant for Android only.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// How often the daemon looks for a snapshot the volume detached by itself (a completed merge)
/// to take it out of the registry; status reads and control commands look as well.
const REGISTRY_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The snapshots a mount attaches, in order, and where each came from.
type Plan = Vec<(SnapshotSpec, Source)>;

/// The capability a FUSE mount takes (without a setuid `fusermount` helper).
const CAP_SYS_ADMIN: u32 = 21;

/// A live mount: the volume, the record of its snapshots, the FUSE session serving them, and
/// the mount's device number.
struct Mounted {
    volume: Arc<Volume>,
    ledger: Arc<Ledger>,
    session: fuser::Session<SnapFs>,
    dev: Option<libc::dev_t>,
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
    let prepared = check_privilege().and_then(|()| prepare(request, true));
    let (request, plan) = match prepared {
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
/// registry (if any) recorded. Refuses paths that would lead the mount back to itself, and
/// (`mounting`: not for `--check`, which may be asked about the very mount that exists) a
/// mount point that holds a snapfs mount already. Nothing is opened or written.
fn prepare(request: MountRequest, mounting: bool) -> Result<(MountRequest, Plan), MountError> {
    let request = absolute_paths(request)?;
    if let Some(cmd) = &request.options.notify {
        check_notify(cmd)?;
    }
    if mounting {
        refuse_stacking(&request.mountpoint)?;
    }
    let options = &request.options;
    let own = Own::before_mount(&request.mountpoint);
    let others = other_items(options);
    // Before the registry is read: a registry that is a device would not even parse.
    let given = options.snapshots.iter().map(|s| (s, Source::Options));
    let mut items = device_items(&request, given);
    items.extend(others.iter().cloned());
    reach::check(own.clone(), items, false).map_err(MountError::Reach)?;
    let plan = registry::plan(&options.snapshots, options.registry.as_deref())?;
    let mut items = device_items(&request, plan.iter().map(|(s, source)| (s, *source)));
    items.extend(others);
    reach::check(own, items, true).map_err(MountError::Reach)?;
    Ok((request, plan))
}

/// `notify=CMD` must name an executable file (it runs with the daemon's rights).
fn check_notify(cmd: &Path) -> Result<(), MountError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(cmd)
        .map_err(|e| MountError::Notify(format!("notify={}: {e}", cmd.display())))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(MountError::Notify(format!(
            "notify={}: not an executable file",
            cmd.display()
        )));
    }
    Ok(())
}

/// One snapfs mount per mount point: a second one on top would hide the first, and `umount`
/// of the mount point would only ever reach the top one.
fn refuse_stacking(mountpoint: &Path) -> Result<(), MountError> {
    let table = mountinfo::read();
    match mountinfo::top_at(&table, mountpoint) {
        Some(top) if top.is_snapfs() => Err(MountError::Stacked(format!(
            "{mp} already holds a snapfs mount (of {}): unmount it first (umount {mp}); a \
             second mount on top of it would hide it",
            top.source,
            mp = mountpoint.display()
        ))),
        _ => Ok(()),
    }
}

/// The origin and every COW to attach (`-o snapshot=` and, once planned, the registry's).
fn device_items<'a>(
    request: &MountRequest,
    snapshots: impl Iterator<Item = (&'a SnapshotSpec, Source)>,
) -> Vec<Item> {
    let mut devices = vec![Item {
        what: format!("origin {}", request.origin.display()),
        path: request.origin.clone(),
        role: Role::Device,
    }];
    for (spec, source) in snapshots {
        let from = match source {
            Source::Registry => " (from the registry)",
            _ => "",
        };
        devices.push(Item {
            what: format!("COW {} of snapshot {}{from}", spec.cow.display(), spec.name),
            path: spec.cow.clone(),
            role: Role::Device,
        });
    }
    devices
}

/// The log file and the registry, if given.
fn other_items(options: &MountOptions) -> Vec<Item> {
    let mut others = Vec::new();
    if let Some(log) = &options.log {
        others.push(Item {
            what: format!("log file {}", log.display()),
            path: log.clone(),
            role: Role::Log,
        });
    }
    if let Some(registry) = &options.registry {
        others.push(Item {
            what: format!("registry {}", registry.display()),
            path: registry.clone(),
            role: Role::Registry,
        });
    }
    others
}

/// A FUSE mount takes CAP_SYS_ADMIN (root), unless a setuid `fusermount` helper mounts for the
/// user. Checked before anything is opened, so that the refusal says so instead of the
/// kernel's bare "Permission denied".
fn check_privilege() -> Result<(), MountError> {
    if has_capability(CAP_SYS_ADMIN) || fusermount_installed() {
        return Ok(());
    }
    Err(MountError::NotPrivileged)
}

/// Whether the effective capability set has `cap` (`CapEff` in /proc/self/status).
fn has_capability(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// Whether fuser could mount through a `fusermount` helper (where fuser looks for one).
fn fusermount_installed() -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/sbin", "/bin"].map(PathBuf::from));
    dirs.flat_map(|d| [d.join("fusermount3"), d.join("fusermount")])
        .any(|p| p.is_file())
}

/// `--check` (what `mount -f` asks for): the options parsed already; checks that the devices
/// and the mountpoint exist, without opening anything (the devices may be in use by the very
/// mount being recorded). Returns the exit code.
pub fn check(request: MountRequest) -> i32 {
    let (request, plan) = match prepare(request, false) {
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
fn absolute_paths(mut request: MountRequest) -> Result<MountRequest, MountError> {
    let abs = |p: &Path| {
        std::path::absolute(p).map_err(|e| MountError::Path(format!("{}: {e}", p.display())))
    };
    request.origin = abs(&request.origin)?;
    request.mountpoint = request.mountpoint.canonicalize().map_err(|e| {
        let mp = request.mountpoint.display();
        MountError::Path(if e.raw_os_error() == Some(libc::ENOTCONN) {
            format!(
                "mountpoint {mp}: {e}: the daemon of the mount there is gone; unmount it \
                 first (umount -l {mp})"
            )
        } else {
            format!("mountpoint {mp}: {e}")
        })
    })?;
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
    // SAFETY: no other thread exists (the path checks' helper threads have been joined), so
    // the child may run arbitrary code.
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
    let signals = match signals::block() {
        Ok(set) => set,
        Err(e) => {
            reporter.failed(&format!("cannot block signals: {e}"));
            return 1;
        }
    };
    set_io_flusher();
    // A broken invariant stops the daemon, whichever thread finds it (src/invariant.rs).
    crate::invariant::stop_process_on_break();
    // Opened now so that a bad path fails the mount; used once the mount is live, so that
    // errors before that still reach whoever ran the mount.
    let log_file = match request.options.log.as_deref().map(open_log).transpose() {
        Ok(f) => f,
        Err(e) => {
            reporter.failed(&e.to_string());
            return 1;
        }
    };
    let Mounted {
        volume,
        ledger,
        session,
        dev,
    } = match mount(request, plan, fsname) {
        Ok(mounted) => mounted,
        Err(e) => {
            reporter.failed(&e.to_string());
            return 1;
        }
    };
    if let Some(dev) = dev {
        reach::set_live(Own::live(&request.mountpoint, dev));
    }
    reporter.ready();
    match log_file {
        Some(file) => redirect_stderr(file),
        None if !request.foreground => release_piped_stderr(),
        None => {}
    }
    let context = signals::Context {
        volume: volume.clone(),
        mountpoint: request.mountpoint.clone(),
        ours: Identity {
            dev,
            fsname: fsname.to_string(),
        },
        log: request.options.log.clone(),
    };
    if let Err(e) = signals::spawn(signals, context) {
        log::error!("cannot start the signal thread: {e}; stop with umount");
    }
    if ledger.registry().is_some() && !request.options.read_only {
        spawn_registry_sync(ledger.clone(), volume.clone());
    }
    spawn_monitor(volume.clone(), request);
    // A merge found in progress on disk goes on from where it stopped.
    volume.resume_merge();
    if let Err(e) = run_session(session) {
        log::error!("FUSE session ended with an error: {e}");
    }
    // From here on every moment keeps the devices from the next mount (which waits for them):
    // the teardown is timed, at debug level step by step.
    let ended = Instant::now();
    log::debug!("FUSE session ended (unmounted)");
    // Pauses a running merge after its current step (it resumes at the next mount) and makes
    // everything durable.
    // A notify hook still running would outlive the daemon (and its time bound).
    crate::lifecycle::kill_running_notify();
    let stopped = volume.shutdown();
    log::debug!("devices flushed in {} ms", ended.elapsed().as_millis());
    // A merge may have completed since the last look.
    ledger.sync(&volume);
    match stopped {
        Ok(()) => {
            let mp = request.mountpoint.display();
            let ms = ended.elapsed().as_millis();
            log::info!("{mp} unmounted; devices flushed ({ms} ms after the session ended)");
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
fn mount(request: &MountRequest, plan: Plan, fsname: &str) -> Result<Mounted, MountError> {
    let mp = request.mountpoint.display();
    // Checked before any device is opened: a new COW is formatted when the volume opens.
    if !request.mountpoint.is_dir() {
        return Err(MountError::NotADirectory(request.mountpoint.clone()));
    }
    let volume = Arc::new(open_volume(request, &plan)?);
    let options = &request.options;
    let ledger = Arc::new(Ledger::new(
        options.registry.clone(),
        options.read_only,
        plan,
    ));
    if let Some(log) = &options.log {
        ledger.set_log(log.clone());
    }
    if let Err(e) = ledger.opened(&volume) {
        // A new COW may have been formatted: make that durable like any other write.
        let _ = volume.flush_all();
        return Err(e.into());
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
        let denied = matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES));
        MountError::Fuse {
            mountpoint: request.mountpoint.clone(),
            error: e,
            privilege: denied && !has_capability(CAP_SYS_ADMIN),
        }
    })?;
    debug_assert!(initialised.load(Ordering::Acquire), "INIT was handled");
    let dev = connection_dev(&session, &request.mountpoint);
    log::info!(
        "{fsname} mounted on {mp} ({} snapshot(s){})",
        volume.snapshots().len(),
        if options.read_only { ", read-only" } else { "" }
    );
    Ok(Mounted {
        volume,
        ledger,
        session,
        dev,
    })
}

/// The device number of the mount's files: `0:N` for FUSE connection N (in the fdinfo of the
/// session's `/dev/fuse` descriptor), else the top mount on the mount point, read from the
/// mount table (never from the mount itself, whose requests nobody serves yet).
fn connection_dev(session: &fuser::Session<SnapFs>, mountpoint: &Path) -> Option<libc::dev_t> {
    let fd = session.as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).unwrap_or_default();
    let number = info
        .lines()
        .find_map(|l| l.strip_prefix("fuse_connection:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    if let Some(n) = number {
        return Some(libc::makedev(0, n));
    }
    let table = mountinfo::read();
    let top = mountinfo::top_at(&table, mountpoint).filter(|m| m.is_snapfs());
    if top.is_none() {
        log::warn!(
            "cannot find this mount's device number: the checks against using it as a COW are off"
        );
    }
    top.map(|m| m.dev)
}

/// Runs the FUSE session until the kernel ends it. fuser unmounts by path when its session
/// ends, whatever is mounted there by then (see [`teardown`]); its mount handle is therefore
/// kept from ever being dropped.
fn run_session(session: fuser::Session<SnapFs>) -> std::io::Result<()> {
    let background = std::mem::ManuallyDrop::new(session.spawn()?);
    // SAFETY: the join handle is read out of `background` once, and `background` is never used
    // or dropped again: the handle has exactly one owner, and the rest (fuser's mount handle,
    // which would unmount on drop) lives until the process exits.
    let guard = unsafe { std::ptr::read(&background.guard) };
    match guard.join() {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::other("the FUSE session thread panicked")),
    }
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

/// Usage warnings, notify events and autoextension (`crate::lifecycle`), checked once a second
/// from a thread of their own: nothing here runs on the I/O path. The thread ends with the
/// process.
fn spawn_monitor(volume: Arc<Volume>, request: &MountRequest) {
    let options = &request.options;
    let policy = options.policy();
    // A snapshot may carry its own autoextend (and one taken live comes later): only a
    // read-only mount with nothing to warn or notify has no use for the monitor.
    if policy.levels.levels().is_empty() && options.notify.is_none() && options.read_only {
        return;
    }
    let notifier = match &options.notify {
        Some(cmd) => match Notifier::spawn(cmd.clone(), request.mountpoint.clone()) {
            Ok(n) => Some(n),
            Err(e) => {
                log::error!(
                    "cannot start the notify thread ({e}): notify={} will not run",
                    cmd.display()
                );
                None
            }
        },
        None => None,
    };
    let monitor = Monitor::new(policy);
    let spawned = std::thread::Builder::new()
        .name("snapfs-monitor".to_string())
        .spawn(move || {
            loop {
                for event in monitor.check(&volume) {
                    if let Some(n) = &notifier {
                        n.send(event);
                    }
                }
                std::thread::sleep(lifecycle::CHECK_INTERVAL);
            }
        });
    if let Err(e) = spawned {
        log::error!(
            "cannot start the monitor thread ({e}): no usage warnings, notify or autoextend"
        );
    }
}

/// `log=PATH`: appended to, created 0640 if missing.
fn open_log(path: &Path) -> Result<File, MountError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
        .map_err(|error| MountError::Log {
            path: path.to_path_buf(),
            error,
        })
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
fn open_volume(request: &MountRequest, plan: &Plan) -> Result<Volume, MountError> {
    let options = &request.options;
    let mode = if options.read_only {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    let origin =
        FileDevice::open(&request.origin, mode).map_err(|e| MountError::Open(e.to_string()))?;
    let mut configs = Vec::with_capacity(plan.len());
    for (spec, source) in plan {
        let from = match source {
            Source::Registry => " (from the registry)",
            _ => "",
        };
        configs.push(
            spec.open(mode)
                .map_err(|e| MountError::Open(format!("snapshot {}{from}: {e}", spec.name)))?,
        );
    }
    let volume_options = VolumeOptions {
        read_only: options.read_only,
        origin_discard: options.origin_discard,
        writeback_bytes: options
            .writeback
            .unwrap_or(crate::volume::DEFAULT_WRITEBACK_BYTES),
    };
    Volume::open(Arc::new(origin), configs, volume_options)
        .map_err(|e| MountError::Open(e.to_string()))
}
