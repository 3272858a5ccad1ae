//! The FUSE layer: one directory holding `origin`, one file per snapshot, `status` and
//! `control`. It translates requests into volume calls and volume errors into errnos (in
//! [`errno`] only); all storage semantics live in the volume.
//!
//! Kernel settings, and why (see also docs on the loop-device case in the field notes):
//! - Every open answers `FOPEN_DIRECT_IO`: no FUSE page cache, so the origin and snapshot views
//!   are never stale relative to each other, and a snapshot taken "now" sees every acknowledged
//!   write. No `FUSE_WRITEBACK_CACHE`, for the same reason.
//! - `FUSE_ASYNC_DIO`, `max_write` 4 MiB (the kernel caps requests at `max_pages_limit`),
//!   `max_background` 128 and [`FUSE_THREADS`] request threads: a loop device in direct-I/O mode
//!   keeps several large requests in flight.
//! - `FOPEN_PARALLEL_DIRECT_WRITES` on data files: the volume orders overlapping writes itself
//!   (range locks), so the kernel need not serialise writers on the inode lock.
//! - Attribute and entry timeouts are zero: sizes never change, but snapshots come and go
//!   through `control` and `st_blocks` moves with every copy-out.

mod attr;
mod data;
mod errno;
mod handles;
mod inodes;
mod lograte;
mod ops;
pub mod request_buffers;
mod special;

/// The inode number of `origin` (its `st_ino`).
pub(crate) use inodes::ORIGIN_INO as ORIGIN_INODE;

use crate::options::MountOptions;
use crate::registry::Ledger;
use crate::volume::Volume;
use fuser::{Config, FopenFlags, KernelConfig, MountOption, SessionACL};
use inodes::{CONTROL_INO, Inodes, Node, ORIGIN_INO, ROOT_INO, STATUS_INO};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// Threads reading `/dev/fuse`. Each request blocks its thread for the whole volume operation
/// (a copy-out reads and writes several devices), so the count bounds requests in service:
/// 16 covers a loop device's queue of 8 in flight plus metadata and status traffic.
pub const FUSE_THREADS: usize = 16;

/// Largest write request asked of the kernel. The kernel clamps it to
/// `/proc/sys/fs/fuse/max_pages_limit` pages (1 MiB by default).
pub const MAX_WRITE_BYTES: u32 = 4 << 20;

/// Background (asynchronous) requests the kernel may queue: async direct I/O from a loop
/// device counts here. 128 keeps a 1 MiB x 8 loop queue busy with room to spare.
pub const MAX_BACKGROUND: u16 = 128;

/// Open flags of the data files (origin and snapshots): see the module documentation.
pub const DATA_OPEN_FLAGS: FopenFlags =
    FopenFlags::FOPEN_DIRECT_IO.union(FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES);

/// Sets what the kernel may do on a snapfs connection (INIT): async direct I/O, large writes, a
/// deep background queue. Never `FUSE_WRITEBACK_CACHE`. Public so that the benchmark's FUSE
/// floor (`examples/fuse_floor.rs`) negotiates exactly the same.
pub fn negotiate(config: &mut KernelConfig) {
    use fuser::InitFlags;
    if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO) {
        log::warn!("the kernel lacks {missing:?}: direct I/O requests are served one by one");
    }
    // O_TRUNC arrives with OPEN instead of as a truncating SETATTR, so that it can be a no-op
    // on the fixed-size files, as it is on a block device (`cp img MNT/origin` works).
    if let Err(missing) = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC) {
        log::debug!("the kernel lacks {missing:?}: O_TRUNC opens of data files fail EINVAL");
    }
    if let Err(nearest) = config.set_max_write(MAX_WRITE_BYTES) {
        let _ = config.set_max_write(nearest);
    }
    if let Err(nearest) = config.set_max_background(MAX_BACKGROUND) {
        let _ = config.set_max_background(nearest);
    }
    let _ = config.set_congestion_threshold(MAX_BACKGROUND / 4 * 3);
    log::debug!(
        "FUSE INIT: ABI {:?}, kernel capabilities {:?}",
        config.kernel_abi(),
        config.capabilities()
    );
}

/// The request threads of a session: [`FUSE_THREADS`], each with its own `/dev/fuse`
/// descriptor.
pub fn set_request_threads(config: &mut Config) {
    config.n_threads = Some(FUSE_THREADS);
    config.clone_fd = true;
}

/// Who owns the files and whether the mount is read-only.
#[derive(Clone, Copy, Debug)]
pub struct FsSettings {
    /// Files read-only (0400) and no `control` file; the volume refuses writes anyway.
    pub read_only: bool,
    /// Owner of every file.
    pub uid: u32,
    /// Group of every file.
    pub gid: u32,
}

/// The filesystem served over FUSE. Shares the volume with the daemon, which flushes it at
/// teardown.
pub struct SnapFs {
    volume: Arc<Volume>,
    /// What the mount serves and where it is recorded: `control` updates it, `status` shows it.
    ledger: Arc<Ledger>,
    settings: FsSettings,
    inodes: RwLock<Inodes>,
    /// Text of `status` (or the answer `control` gave) per open handle, so one `cat` sees one
    /// consistent text.
    status_texts: Mutex<HashMap<u64, Vec<u8>>>,
    /// Open handles per data-file inode (opens minus releases), for commands that must know
    /// whether a file is in use (merge).
    open_handles: Mutex<HashMap<u64, u64>>,
    next_fh: AtomicU64,
    /// Open handles of the data files (`handles.rs`).
    data_handles: Mutex<HashMap<u64, handles::DataHandle>>,
    /// Answer to the last control command. Held while a command runs: commands run one at a
    /// time.
    control: Mutex<String>,
    /// Answers kept per `control` handle that wrote a command: that handle reads its own
    /// answer, whatever other handles run meanwhile (a write then a read on one handle is one
    /// transaction).
    handle_answers: Mutex<HashMap<u64, Vec<u8>>>,
    started: SystemTime,
    /// Set once the kernel's INIT has been handled.
    initialised: Arc<AtomicBool>,
}

impl SnapFs {
    /// A filesystem over `volume`. `initialised` is set when the kernel's INIT arrives.
    pub fn new(
        volume: Arc<Volume>,
        ledger: Arc<Ledger>,
        settings: FsSettings,
        initialised: Arc<AtomicBool>,
    ) -> SnapFs {
        let mut inodes = Inodes::new();
        inodes.sync(&volume.snapshots());
        SnapFs {
            volume,
            ledger,
            settings,
            inodes: RwLock::new(inodes),
            status_texts: Mutex::new(HashMap::new()),
            open_handles: Mutex::new(HashMap::new()),
            // Handles 0 and 1 mean read-only and writable on data files (see `ops::open`).
            next_fh: AtomicU64::new(2),
            data_handles: Mutex::new(HashMap::new()),
            control: Mutex::new("ok no command yet".to_string()),
            handle_answers: Mutex::new(HashMap::new()),
            started: SystemTime::now(),
            initialised,
        }
    }

    /// What inode `ino` stands for, if it exists now.
    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT_INO => Some(Node::Root),
            ORIGIN_INO => Some(Node::Origin),
            STATUS_INO => Some(Node::Status),
            CONTROL_INO if !self.settings.read_only => Some(Node::Control),
            _ => self.inodes.read().snapshot(ino).map(Node::Snapshot),
        }
    }

    fn count_open(&self, ino: u64) {
        *self.open_handles.lock().entry(ino).or_default() += 1;
    }

    /// Called for every release; inodes that were never counted are ignored. Returns the
    /// handles still open on `ino`.
    fn count_release(&self, ino: u64) -> u64 {
        let mut counts = self.open_handles.lock();
        let Some(n) = counts.get_mut(&ino) else {
            return 0;
        };
        *n -= 1;
        let left = *n;
        if left == 0 {
            counts.remove(&ino);
        }
        left
    }

    /// Open handles on `origin` or on the snapshot file `name`.
    fn open_handles_of(&self, name: &str) -> u64 {
        let ino = match name {
            "origin" => ORIGIN_INO,
            _ => match self.inodes.read().by_name(name) {
                Some((ino, _)) => ino,
                None => return 0,
            },
        };
        self.open_handles.lock().get(&ino).copied().unwrap_or(0)
    }

    /// Re-reads the volume's snapshot list (after a control command, and before name lookups
    /// and listings, so that changes made inside the volume show too).
    fn sync_inodes(&self) {
        let current = self.volume.snapshots();
        self.inodes.write().sync(&current);
    }

    /// Sets what the kernel may do on this connection ([`negotiate`]) and notes that INIT
    /// arrived.
    fn configure_kernel(&self, config: &mut KernelConfig) {
        negotiate(config);
        self.initialised.store(true, Ordering::Release);
    }
}

/// The fuser configuration for a mount: kernel options (`fsname` = the origin as given, so
/// `/proc/mounts` shows it as the source; type `fuse.snapfs`; `default_permissions` always),
/// access control and request threads.
pub fn session_config(origin_as_given: &str, options: &MountOptions) -> Config {
    let mut mount_options = vec![
        MountOption::FSName(origin_as_given.to_string()),
        // `Subtype` is dropped on the direct mount path; the kernel takes it as an option.
        MountOption::CUSTOM("subtype=snapfs".to_string()),
        MountOption::DefaultPermissions,
    ];
    if options.read_only {
        mount_options.push(MountOption::RO);
    }
    let mut config = Config::default();
    config.mount_options = mount_options;
    config.acl = if options.allow_other {
        SessionACL::All
    } else if options.allow_root {
        SessionACL::RootAndOwner
    } else {
        SessionACL::Owner
    };
    set_request_threads(&mut config);
    config
}
