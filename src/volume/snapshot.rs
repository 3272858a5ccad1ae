//! One snapshot of the origin: its exception store, its table, and its failure states.
//!
//! States follow the kernel: `invalid` (persisted as header `valid = 0` by the store's
//! `drop_snapshot`; all snapshot I/O fails; origin writes no longer copy into it),
//! `overflowed` (`PO` only, in memory: snapshot writes fail, reads work), `merge_failed`.

use super::VolumeError;
use super::readahead::{Stream, WriteCounts};
use crate::device::Device;
use crate::features::SnapshotFeatures;
use crate::invariant::{self, TABLE_INSERTS_FRESH};
use crate::store::{ExceptionStore, StoreKind, Usage};
use crate::table::ExceptionTable;
use crate::units::ChunkSize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

pub struct Snapshot {
    pub(super) name: String,
    pub(super) cow: Device,
    pub(super) store: Box<dyn ExceptionStore>,
    pub(super) chunk: ChunkSize,
    pub(super) table: ExceptionTable,
    /// The kernel's optional features (what a discard does: docs/discard.md).
    pub(super) features: SnapshotFeatures,
    /// Set once the store has made the snapshot invalid durably (see `invalidate`).
    invalid: AtomicBool,
    /// Held while the snapshot is being invalidated: one invalidation at a time, the others
    /// wait for it.
    invalidating: parking_lot::Mutex<()>,
    overflowed: AtomicBool,
    merge_failed: AtomicBool,
    attached: AtomicBool,
    /// Being merged into the origin: hidden, takes no copies, serves the origin's view.
    merging: AtomicBool,
    /// The merge is paused (`pause NAME`): the merged view holds, no chunk moves.
    merge_paused: AtomicBool,
    /// Chunks left when the merge (or its resumption) started, for progress figures.
    merge_start_chunks: AtomicU64,
    /// The highest usage warning level crossed (percent), 0 for none: set by the monitor
    /// (`crate::lifecycle`), shown in the status file.
    warning_level: AtomicU8,
    /// Writes, zeroings and discards of the snapshot (what can change its content), counted
    /// for its read-ahead.
    pub(super) writes: Arc<WriteCounts>,
    /// Sequential reads of the snapshot file: see `readahead.rs`.
    pub(super) reads: Stream,
}

impl Snapshot {
    pub(super) fn new(
        name: String,
        cow: Device,
        store: Box<dyn ExceptionStore>,
        table: ExceptionTable,
        features: SnapshotFeatures,
        invalid: bool,
    ) -> Snapshot {
        let writes = Arc::new(WriteCounts::default());
        Snapshot {
            name,
            cow,
            chunk: store.chunk_size(),
            store,
            table,
            features,
            invalid: AtomicBool::new(invalid),
            invalidating: parking_lot::Mutex::new(()),
            overflowed: AtomicBool::new(false),
            merge_failed: AtomicBool::new(false),
            attached: AtomicBool::new(true),
            merging: AtomicBool::new(false),
            merge_paused: AtomicBool::new(false),
            merge_start_chunks: AtomicU64::new(0),
            warning_level: AtomicU8::new(0),
            writes: writes.clone(),
            reads: Stream::new(writes),
        }
    }

    /// Writes a new store's metadata (see `ExceptionStore::initialise`).
    pub(super) fn initialise(&mut self) -> Result<(), super::OpenError> {
        let cow = self.cow.name();
        self.store
            .initialise()
            .map_err(|e| super::OpenError::store(&self.name, &cow, e))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn features(&self) -> SnapshotFeatures {
        self.features
    }

    pub fn kind(&self) -> StoreKind {
        self.store.kind()
    }

    pub fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }

    pub fn cow_name(&self) -> String {
        self.cow.name()
    }

    pub fn usage(&self) -> Usage {
        self.store.usage()
    }

    /// The COW device (the monitor grows a file COW through it).
    pub fn cow_device(&self) -> Device {
        self.cow.clone()
    }

    /// The highest usage warning level crossed, in percent; 0 for none.
    pub fn warning_level(&self) -> u8 {
        self.warning_level.load(Ordering::Relaxed)
    }

    pub fn set_warning_level(&self, level: u8) {
        self.warning_level.store(level, Ordering::Relaxed);
    }

    /// Origin chunks (in this snapshot's chunk size) that have an exception.
    pub fn exceptions(&self) -> u64 {
        self.table.len()
    }

    pub fn is_invalid(&self) -> bool {
        self.invalid.load(Ordering::Acquire)
    }

    pub fn is_overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }

    pub fn is_merge_failed(&self) -> bool {
        self.merge_failed.load(Ordering::Acquire)
    }

    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Acquire)
    }

    pub fn is_merging(&self) -> bool {
        self.merging.load(Ordering::Acquire)
    }

    /// Whether the merge of this snapshot is paused (see `Volume::pause_merge`).
    pub fn is_merge_paused(&self) -> bool {
        self.is_merging() && self.merge_paused.load(Ordering::Acquire)
    }

    pub(super) fn set_merge_paused(&self, paused: bool) {
        self.merge_paused.store(paused, Ordering::Release);
    }

    /// `(chunks left, chunks when the merge started)` while merging.
    pub fn merge_progress(&self) -> Option<(u64, u64)> {
        self.is_merging().then(|| {
            let left = self.table.len();
            (
                left,
                self.merge_start_chunks.load(Ordering::Relaxed).max(left),
            )
        })
    }

    pub(super) fn set_merging(&self) {
        self.merge_start_chunks
            .store(self.table.len(), Ordering::Relaxed);
        self.merging.store(true, Ordering::Release);
    }

    /// The origin chunks with an exception, as `(first chunk, count)` runs in no particular
    /// order (the changed-chunk map, `crate::changes`). While merging: those not merged yet.
    pub fn exception_runs(&self) -> Vec<(u64, u64)> {
        self.table.chunk_runs()
    }

    /// Bytes of COW space holding data (exceptions), for st_blocks.
    pub fn data_bytes(&self) -> u64 {
        self.table.len() * self.chunk.bytes()
    }

    /// The status word of `dmsetup status`, tested in the kernel's order.
    pub fn status_word(&self) -> String {
        if self.is_invalid() {
            "Invalid".to_string()
        } else if self.is_merge_failed() {
            "Merge failed".to_string()
        } else if self.is_overflowed() {
            "Overflow".to_string()
        } else {
            self.usage().to_string()
        }
    }

    /// Makes the snapshot invalid, once, durably for a persistent store.
    ///
    /// The flag that lets origin writes skip their copy (`takes_copies`) is set only once the
    /// store has written the invalid header and flushed it: an origin write that skipped its
    /// copy earlier could reach the device first, and a crash would then bring back a valid
    /// snapshot over changed origin data. Meanwhile the store refuses new exceptions, so the
    /// writers that still try to copy come here too, and wait for the header, before they
    /// write the origin. Returns once the snapshot is invalid.
    pub(super) fn invalidate(&self, why: &str) {
        let _one = self.invalidating.lock();
        if self.is_invalid() {
            return;
        }
        log::error!("Invalidating snapshot {}: {why}", self.name);
        self.store.drop_snapshot();
        self.invalid.store(true, Ordering::Release);
    }

    pub(super) fn set_overflowed(&self) {
        if !self.overflowed.swap(true, Ordering::AcqRel) {
            log::error!(
                "Snapshot {} overflowed: unable to allocate exception",
                self.name
            );
        }
    }

    pub(super) fn set_merge_failed(&self) {
        self.merge_failed.store(true, Ordering::Release);
    }

    pub(super) fn detach(&self) {
        self.attached.store(false, Ordering::Release);
    }

    /// Whether origin writes must copy into this snapshot.
    pub(super) fn takes_copies(&self) -> bool {
        self.is_attached() && !self.is_invalid() && !self.is_merging()
    }

    /// Checks that the snapshot may be read: attached, not merging, valid.
    pub(super) fn check_readable(&self) -> Result<(), VolumeError> {
        if !self.is_attached() || self.is_merging() {
            Err(VolumeError::Detached)
        } else if self.is_invalid() {
            Err(VolumeError::Invalid)
        } else {
            Ok(())
        }
    }

    /// Checks that the snapshot may be written: readable, and not overflowed.
    pub(super) fn check_writable(&self) -> Result<(), VolumeError> {
        self.check_readable()?;
        if self.is_overflowed() {
            Err(VolumeError::Overflow)
        } else {
            Ok(())
        }
    }

    /// Adds to the table the exceptions `olds[i] -> news[i]` of a commit that has just become
    /// durable. Each must be new (invariant: table inserts are fresh): the chunks were found
    /// without exception under the range lock that the caller still holds, so nobody else can
    /// have added them. One that already had an exception means two records for it are on disk
    /// now; the snapshot is invalidated, durably, so that neither this mount nor a later one
    /// reads it again, and the error names the invariant.
    pub(super) fn insert_committed(&self, olds: &[u64], news: &[u64]) -> Result<(), VolumeError> {
        for (&old, &new) in olds.iter().zip(news) {
            if !self.table.insert(old, new) {
                let found = format!(
                    "origin chunk {old} was committed to COW chunk {new} but already had an \
                     exception (COW chunk {:?})",
                    self.table.lookup(old)
                );
                self.invalidate(&invariant::message(TABLE_INSERTS_FRESH, found));
                return Err(VolumeError::Invalid);
            }
        }
        Ok(())
    }

    /// Byte range `[start, end)` of chunk `c` on the origin, clipped to `volume_bytes`.
    pub(super) fn chunk_range(&self, c: u64, volume_bytes: u64) -> (u64, u64) {
        let start = self.chunk.start_of(c);
        (start, (start + self.chunk.bytes()).min(volume_bytes))
    }

    /// Byte offset of COW chunk `new`.
    pub(super) fn cow_offset(&self, new: u64) -> u64 {
        self.chunk.start_of(new)
    }
}

#[cfg(test)]
mod tests {
    use crate::device::MemDevice;
    use crate::store::StoreKind;
    use crate::volume::{SnapshotConfig, Volume, VolumeError, VolumeOptions};
    use std::sync::Arc;

    #[test]
    fn a_stale_table_insert_invalidates_the_snapshot_naming_the_invariant() {
        let origin = Arc::new(MemDevice::new("origin", 1 << 20));
        let config = SnapshotConfig {
            name: "s".to_string(),
            cow: Arc::new(MemDevice::new("cow", 1 << 20)),
            kind: StoreKind::parse("PO").unwrap(),
            chunk_sectors: 8,
            features: Default::default(),
        };
        let volume = Volume::open(origin, vec![config], VolumeOptions::default()).unwrap();
        volume.write_origin(0, &[1; 4096]).unwrap();
        let snap = volume.snapshot("s").unwrap();
        assert_eq!(snap.table.lookup(0), Some(2));
        assert!(snap.insert_committed(&[1], &[3]).is_ok(), "a fresh insert");
        assert!(matches!(
            snap.insert_committed(&[5, 0], &[4, 5]),
            Err(VolumeError::Invalid)
        ));
        assert!(snap.is_invalid(), "invalidated, not served");
        assert_eq!(snap.status_word(), "Invalid");
        let mut buf = [0u8; 16];
        assert!(matches!(
            volume.read_snapshot(&snap, 0, &mut buf),
            Err(VolumeError::Invalid)
        ));
    }
}
