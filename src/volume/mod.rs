//! The volume: one origin and its snapshots, with the kernel's snapshot-origin and snapshot
//! semantics. Knows nothing about FUSE.
//!
//! Concurrency design (details in docs/ARCHITECTURE.md):
//! - The snapshot list sits behind a read-write lock that origin writes hold shared for their
//!   whole duration: adding or removing a snapshot takes it exclusively, which waits for the
//!   writes in flight and holds new ones back (dm's suspend), so a snapshot is atomic with
//!   respect to origin writes.
//! - Byte ranges of the origin are locked through [`RangeLock`]: copy-outs exclusively,
//!   snapshot reads served from the origin shared.
//! - Each snapshot's table is sharded; each store orders its own commits.
//! - Copy buffers are bounded by a permit budget.

mod budget;
mod error;
mod mapping;
mod merge;
mod origin_io;
mod readahead;
mod snapshot;
mod snapshot_io;
mod writeback;

pub use error::{OpenError, VolumeError};
pub use merge::MergeError;
pub use snapshot::Snapshot;
pub use writeback::DEFAULT_WRITEBACK_BYTES;

use crate::device::{Device, IoBuf};
use crate::features::SnapshotFeatures;
use crate::rangelock::RangeLock;
use crate::store::{self, Loaded, OriginGeometry, StoreKind};
use crate::table::ExceptionTable;
use crate::units::SECTOR_BYTES;
use budget::Budget;
use parking_lot::{Mutex, RwLock};
use readahead::{DeviceSource, Helpers, READAHEAD_MIN_BYTES, Source, Stream, Tracked, WriteCounts};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Largest piece of data copied with one read and one write per COW. 4 MiB keeps large copies
/// efficient while bounding each buffer.
const COPY_PIECE_BYTES: u64 = 4 << 20;

/// Copy pieces in flight at once. 16 x 4 MiB = 64 MiB of copy buffers at most, whatever the
/// number of request threads: enough to keep a device queue busy from 2 cores, and a hard cap on
/// memory in the write path (the kernel caps copy jobs the same way: snapshot_cow_threshold).
const COPIES_IN_FLIGHT_MAX: usize = 16;

/// A snapshot to attach: its name, COW device, store type and requested chunk size in sectors
/// (0 = the on-disk one, or the default).
pub struct SnapshotConfig {
    pub name: String,
    pub cow: Device,
    pub kind: StoreKind,
    pub chunk_sectors: u64,
    /// The kernel's optional features; checked when the snapshot is attached.
    pub features: SnapshotFeatures,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct VolumeOptions {
    /// Never write any device.
    pub read_only: bool,
    /// A punch of the origin file frees the origin device's space (a hole, an unmapping
    /// write-zeroes) instead of writing zeroes that stay allocated. Either way it is copied out
    /// first and reads zeroes afterwards (docs/discard.md).
    pub origin_discard: bool,
    /// Budget in bytes for origin first writes answered before their copy-out is durable
    /// (`writeback=SIZE`, see `writeback.rs`); 0 copies out before every answer.
    pub writeback_bytes: u64,
}

impl VolumeOptions {
    /// A volume that never writes any device (`origin_discard` only decides what a refused
    /// punch would have done).
    pub fn read_only(origin_discard: bool) -> VolumeOptions {
        VolumeOptions {
            read_only: true,
            origin_discard,
            ..VolumeOptions::default()
        }
    }
}

/// What a write puts into the range it covers.
#[derive(Clone, Copy)]
pub enum Payload<'a> {
    Data(&'a [u8]),
    /// The range reads back as zeroes; the device keeps the space allocated.
    Zeroes(u64),
    /// The range reads back as zeroes; the device frees the space where it can (a punch with
    /// `origin_discard` or `discard_zeroes_cow`: docs/discard.md).
    Discard(u64),
}

impl Payload<'_> {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Data(d) => d.len() as u64,
            Payload::Zeroes(n) | Payload::Discard(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies bytes `[from, from + len)` of the payload to `dev` at `dev_offset`.
    fn apply(&self, dev: &Device, dev_offset: u64, from: u64, len: u64) -> std::io::Result<()> {
        match self {
            Payload::Data(d) => dev.write_at(&d[from as usize..(from + len) as usize], dev_offset),
            Payload::Zeroes(_) => dev.write_zeroes(dev_offset, len),
            Payload::Discard(_) => dev.discard(dev_offset, len),
        }
    }
}

pub struct Volume {
    origin: Device,
    size_bytes: u64,
    options: VolumeOptions,
    snapshots: RwLock<Vec<Arc<Snapshot>>>,
    /// Shared with snapshot read-aheads, which lock what they read as any snapshot read does.
    ranges: Arc<RangeLock>,
    copies: Budget,
    /// Set while a snapshot is merging: origin I/O then consults its table.
    merge_active: AtomicBool,
    merge_worker: Mutex<Option<merge::MergeWorker>>,
    /// Sequential origin reads: see `readahead.rs` (the origin device counts its writes).
    origin_stream: Stream,
    origin_source: Arc<dyn Source>,
    /// Threads reading ahead for the origin and the snapshots.
    helpers: Helpers,
    /// Origin first writes answered before their copy-out (`writeback.rs`).
    writeback: writeback::WriteBack,
    /// The error sequence as seen by [`Volume::flush_origin`] (a handle of its own).
    flush_seen: Mutex<u64>,
}

impl Volume {
    /// Opens the origin and attaches `snapshots` in order. Any failure leaves every device as
    /// it was (a new persistent store is only initialised once it has passed every check).
    pub fn open(
        origin: Device,
        snapshots: Vec<SnapshotConfig>,
        options: VolumeOptions,
    ) -> Result<Volume, OpenError> {
        let raw = origin.size_bytes();
        let size_bytes = raw / SECTOR_BYTES * SECTOR_BYTES;
        if size_bytes == 0 {
            return Err(OpenError(format!(
                "origin {} is empty (size {raw} bytes)",
                origin.name()
            )));
        }
        if size_bytes != raw {
            log::warn!(
                "origin {}: size {raw} is not a multiple of 512; serving the first {size_bytes} bytes",
                origin.name()
            );
        }
        let writes = Arc::new(WriteCounts::default());
        let origin = Tracked::wrap(origin, writes.clone());
        let writeback_bytes = if options.read_only {
            0
        } else {
            options.writeback_bytes
        };
        let ranges = Arc::new(RangeLock::new());
        let mut volume = Volume {
            writeback: writeback::WriteBack::new(
                writeback_bytes,
                origin.clone(),
                ranges.clone(),
                writes.clone(),
                size_bytes,
            ),
            flush_seen: Mutex::new(0),
            origin_source: Arc::new(DeviceSource(origin.clone())),
            origin,
            size_bytes,
            options,
            snapshots: RwLock::new(Vec::new()),
            ranges,
            copies: Budget::new(COPIES_IN_FLIGHT_MAX),
            merge_active: AtomicBool::new(false),
            merge_worker: Mutex::new(None),
            origin_stream: Stream::new(writes),
            helpers: Helpers::new(),
        };
        // Validate everything before writing anything: a bad second COW must not leave the
        // first one freshly formatted.
        let mut loaded = Vec::new();
        for config in snapshots {
            if loaded.iter().any(|s: &Snapshot| s.name == config.name) {
                return Err(OpenError(format!(
                    "two snapshots are named {}",
                    config.name
                )));
            }
            loaded.push(volume.load_snapshot(config)?);
        }
        let merging: Vec<&str> = loaded
            .iter()
            .filter(|s| s.store.merge_marker() && !s.is_invalid())
            .map(|s| s.name())
            .collect();
        if merging.len() > 1 {
            return Err(OpenError(format!(
                "snapshots {} are all marked as merging into this origin; attach one of them",
                merging.join(", ")
            )));
        }
        for mut snap in loaded {
            snap.initialise()?;
            if snap.store.merge_marker() && !snap.is_invalid() {
                // The merged view holds from the first read: chunks still in the COW are
                // served from it. `resume_merge` restarts the copying.
                snap.set_merging();
                if snap.store.merge_paused() {
                    log::info!(
                        "snapshot {} was merging, paused: the merged view holds until resume {}",
                        snap.name(),
                        snap.name()
                    );
                    snap.set_merge_paused(true);
                } else {
                    log::info!("snapshot {} was merging: the merge resumes", snap.name());
                }
                volume.merge_active.store(true, Ordering::Release);
            } else if snap.store.merge_marker() {
                log::error!(
                    "snapshot {} was merging but is invalid: the merge cannot resume",
                    snap.name()
                );
            }
            volume.snapshots.get_mut().push(Arc::new(snap));
        }
        Ok(volume)
    }

    /// Loads a snapshot's store and table (no lock held: this reads the whole list).
    fn load_snapshot(&self, config: SnapshotConfig) -> Result<Snapshot, OpenError> {
        let SnapshotConfig {
            name,
            cow,
            kind,
            chunk_sectors,
            features,
        } = config;
        crate::names::check_snapshot_name(&name).map_err(OpenError)?;
        features.check().map_err(OpenError)?;
        let geometry = OriginGeometry {
            size_bytes: self.size_bytes,
            block_bytes: self.origin.logical_block_size(),
        };
        let cow_name = cow.name();
        let failed = |e| OpenError::store(&name, &cow_name, e);
        let mut store = store::open(
            kind,
            cow.clone(),
            chunk_sectors,
            geometry,
            self.options.read_only,
        )
        .map_err(failed)?;
        let loaded = store.read_metadata().map_err(failed)?;
        let (table, invalid) = match loaded {
            Loaded::Valid(pairs) => (ExceptionTable::from_pairs(pairs), false),
            Loaded::Invalid => {
                log::warn!("snapshot {name} ({cow_name}) is marked invalid");
                (ExceptionTable::new(), true)
            }
        };
        Ok(Snapshot::new(name, cow, store, table, features, invalid))
    }

    /// Attaches a snapshot. Taken while origin writes are held back, so every origin write
    /// acknowledged before this returns is in the snapshot and none after.
    pub fn attach_snapshot(&self, config: SnapshotConfig) -> Result<Arc<Snapshot>, OpenError> {
        if self.merge_active.load(Ordering::Acquire) {
            return Err(OpenError(
                "a merge is running on this origin: take the snapshot after it completes"
                    .to_string(),
            ));
        }
        if self.snapshot(&config.name).is_some() {
            return Err(OpenError(format!(
                "a snapshot named {} already exists",
                config.name
            )));
        }
        let mut snap = self.load_snapshot(config)?;
        snap.initialise()?;
        let snap = Arc::new(snap);
        let mut list = self.snapshots.write();
        // Every acknowledged origin write is copied to the existing snapshots and on the
        // origin before the new snapshot sees the origin.
        self.drain();
        if self.merge_active.load(Ordering::Acquire) {
            return Err(OpenError("a merge started on this origin".to_string()));
        }
        if list.iter().any(|s| s.name == snap.name) {
            return Err(OpenError(format!(
                "a snapshot named {} already exists",
                snap.name
            )));
        }
        list.push(snap.clone());
        Ok(snap)
    }

    /// Detaches a snapshot: it takes no more copies and its I/O fails; its COW stays as it is
    /// (everything committed is already durable).
    pub fn detach_snapshot(&self, name: &str) -> Option<Arc<Snapshot>> {
        let mut list = self.snapshots.write();
        self.drain();
        let pos = list
            .iter()
            .position(|s| s.name == name && !s.is_merging())?;
        let snap = list.remove(pos);
        snap.detach();
        Some(snap)
    }

    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    pub fn is_read_only(&self) -> bool {
        self.options.read_only
    }

    pub fn origin_name(&self) -> String {
        self.origin.name()
    }

    /// Bytes the origin device really allocates, where it can tell.
    pub fn origin_allocated_bytes(&self) -> Option<u64> {
        self.origin.allocated_bytes()
    }

    pub fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        self.snapshots.read().clone()
    }

    pub fn snapshot(&self, name: &str) -> Option<Arc<Snapshot>> {
        self.snapshots
            .read()
            .iter()
            .find(|s| s.name == name)
            .cloned()
    }

    /// Makes every origin write that returned durable, and reports (once) the acknowledged
    /// writes that failed since the last call: [`Volume::sync_origin`] with a handle of its own.
    pub fn flush_origin(&self) -> Result<(), VolumeError> {
        let mut seen = self.flush_seen.lock();
        self.sync_origin(&mut seen)
    }

    fn flush_origin_device(&self) -> Result<(), VolumeError> {
        if self.options.read_only {
            return Ok(());
        }
        Ok(self.origin.flush()?)
    }

    /// Makes every write to the snapshot that returned durable (its exceptions already are).
    pub fn flush_snapshot(&self, snap: &Snapshot) -> Result<(), VolumeError> {
        self.drain();
        if self.options.read_only {
            return Ok(());
        }
        Ok(snap.cow.flush()?)
    }

    /// Orderly stop (unmount, SIGTERM): pauses a running merge after its current step (it
    /// resumes at the next mount) and makes everything durable.
    pub fn shutdown(&self) -> Result<(), VolumeError> {
        self.stop_merge();
        self.flush_all()?;
        for s in self.snapshots() {
            self.end_transient(&s)?;
        }
        Ok(())
    }

    /// A snapshot ends with its mount (or its `drop`): a store that nothing can read again (a
    /// transient one) zeroes its head, and the next transient snapshot on that device finds it
    /// blank instead of refused as holding data (`store::probe`); see `ExceptionStore::end`.
    /// One still merging is left alone.
    pub fn end_transient(&self, snap: &Snapshot) -> Result<(), VolumeError> {
        if self.options.read_only || snap.is_merging() {
            return Ok(());
        }
        Ok(snap.store.end()?)
    }

    /// Flushes the origin and every COW (unmount, sync).
    pub fn flush_all(&self) -> Result<(), VolumeError> {
        self.drain();
        self.flush_origin_device()?;
        for s in self.snapshots() {
            if !s.is_invalid() {
                self.flush_snapshot(&s)?;
            }
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size_bytes => Ok(()),
            _ => Err(VolumeError::OutOfRange {
                offset,
                len,
                size: self.size_bytes,
            }),
        }
    }

    /// Copies `len` bytes from the origin at `from` to `dev` at `to`, in bounded pieces.
    fn copy_origin_to(&self, from: u64, len: u64, dev: &Device, to: u64) -> std::io::Result<()> {
        self.copy_between(&self.origin, from, len, dev, to)
    }

    /// Copies `len` bytes between devices in pieces, each under a copy permit.
    fn copy_between(
        &self,
        src: &Device,
        from: u64,
        len: u64,
        dst: &Device,
        to: u64,
    ) -> std::io::Result<()> {
        let mut done = 0;
        while done < len {
            let n = (len - done).min(COPY_PIECE_BYTES);
            let _permit = self.copies.acquire();
            let mut buf = IoBuf::new(n as usize);
            src.read_at(&mut buf, from + done)?;
            dst.write_at(&buf, to + done)?;
            done += n;
        }
        Ok(())
    }
}
