//! snapshot: a read goes to the COW where the chunk has an exception and to the origin
//! elsewhere; a write to a chunk without an exception allocates one, fills it (old origin data
//! around the written bytes, or nothing to copy when the write covers the whole chunk), commits
//! it, and only then counts as done.

use super::mapping::{SnapshotReader, consecutive_runs, read_mapped};
use super::readahead::{READAHEAD_MIN_BYTES, Source};
use super::{Payload, Snapshot, Volume, VolumeError};
use crate::device::IoBuf;
use crate::rangelock::LockMode;
use crate::store::StoreError;
use std::sync::Arc;

impl Volume {
    pub fn read_snapshot(
        &self,
        snap: &Snapshot,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VolumeError> {
        snap.check_readable()?;
        self.check_range(offset, buf.len() as u64)?;
        read_mapped(&self.origin, &self.ranges, snap, offset, buf)?;
        // A failure of the store while we read means the data may be stale: report it.
        snap.check_readable()
    }

    /// [`Volume::read_snapshot`] into a buffer of the caller's that may be exchanged for a
    /// read-ahead buffer holding the same range (see `readahead.rs`): what FUSE reads use.
    pub fn read_snapshot_buf(
        &self,
        snap: &Arc<Snapshot>,
        offset: u64,
        buf: &mut IoBuf,
    ) -> Result<(), VolumeError> {
        if buf.len() < READAHEAD_MIN_BYTES {
            return self.read_snapshot(snap, offset, buf);
        }
        snap.check_readable()?;
        self.check_range(offset, buf.len() as u64)?;
        let source: Arc<dyn Source> = Arc::new(SnapshotReader {
            origin: self.origin.clone(),
            ranges: self.ranges.clone(),
            snap: snap.clone(),
        });
        snap.reads
            .read(&self.helpers, &source, offset, buf, self.size_bytes)?;
        // As in `read_snapshot`; also covers a read-ahead done before a failure.
        snap.check_readable()
    }

    /// Drops what was read ahead for `snap` (its file's last open handle was closed).
    pub fn forget_snapshot_reads(&self, snap: &Snapshot) {
        snap.reads.forget();
    }

    pub fn write_snapshot(
        &self,
        snap: &Snapshot,
        offset: u64,
        data: &[u8],
    ) -> Result<(), VolumeError> {
        snap.writes
            .track(|| self.write_snapshot_payload(snap, offset, Payload::Data(data), OnFull::Write))
    }

    /// `ZERO_RANGE`: the range reads back as zeroes, as if zeroes were written (exceptions
    /// allocated where needed; a full COW fails as a write does).
    pub fn zero_snapshot(&self, snap: &Snapshot, offset: u64, len: u64) -> Result<(), VolumeError> {
        snap.writes.track(|| {
            self.write_snapshot_payload(snap, offset, Payload::Zeroes(len), OnFull::Write)
        })
    }

    /// A punch of the snapshot file (`PUNCH_HOLE`, a loop device's discard or write-zeroes):
    /// the range reads zeroes afterwards in every configuration, since a file's punch
    /// promises it and snapfs cannot tell a discard from a write-zeroes. What the snapshot's
    /// features change (docs/discard.md):
    /// - none: as `zero_snapshot`, the COW's space kept allocated;
    /// - `discard_zeroes_cow`: the same, but the COW frees the space it zeroes (the kernel
    ///   zeroes the COW chunk of an exception; chunks without one get an exception of zeroes,
    ///   where the kernel would leave them reading the origin);
    /// - `discard_passdown_origin` (implies the first): exceptions are zeroed in the COW and
    ///   the whole range is punched on the origin device without copy-out, as the kernel passes
    ///   the discard down: no exception is allocated, but the origin file and every snapshot
    ///   that reads those chunks from the origin read zeroes there too.
    ///
    /// A punch never invalidates or overflows the snapshot: when the exceptions it needs do
    /// not fit, it fails with `NoSpace` having changed nothing.
    pub fn discard_snapshot(
        &self,
        snap: &Snapshot,
        offset: u64,
        len: u64,
    ) -> Result<(), VolumeError> {
        let features = snap.features;
        snap.writes.track(|| {
            if features.discard_passdown_origin {
                return self.punch_passdown(snap, offset, len);
            }
            let payload = if features.discard_zeroes_cow {
                Payload::Discard(len)
            } else {
                Payload::Zeroes(len)
            };
            self.write_snapshot_payload(snap, offset, payload, OnFull::Refuse)
        })
    }

    /// Plain `fallocate` (mode 0 or `KEEP_SIZE`) on the snapshot file: reserves COW space so
    /// that later writes to the range cannot fail for lack of it, as the call promises. Every
    /// chunk of the range without an exception gets one holding the origin's data (what the
    /// snapshot reads does not change). `NoSpace` when they do not fit, with nothing changed.
    pub fn reserve_snapshot(
        &self,
        snap: &Snapshot,
        offset: u64,
        len: u64,
    ) -> Result<(), VolumeError> {
        if self.options.read_only {
            return Err(VolumeError::ReadOnly);
        }
        let _list = self.snapshots.read();
        snap.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        if !snap.mapping(offset, end).touches_origin() {
            return Ok(());
        }
        let cs = snap.chunk.bytes();
        let _range =
            self.lock_settled(offset / cs * cs, end.div_ceil(cs) * cs, LockMode::Exclusive);
        let mapping = snap.mapping(offset, end);
        if mapping.missing.is_empty() {
            return Ok(());
        }
        self.fill_new_exceptions(snap, offset, end, &mapping.missing, None, OnFull::Refuse)
    }

    /// `discard_passdown_origin`: this snapshot's exceptions over the range are punched in its
    /// COW, and the whole range on the origin device, with no copy-out to any snapshot (the
    /// kernel sends the discard to the origin's device, bypassing snapshot-origin).
    fn punch_passdown(&self, snap: &Snapshot, offset: u64, len: u64) -> Result<(), VolumeError> {
        if self.options.read_only {
            return Err(VolumeError::ReadOnly);
        }
        let list = self.snapshots.read();
        snap.check_writable()?;
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        // Exclusive: no copy-out, merge step, snapshot read from the origin or new exception of
        // this snapshot is in flight over these bytes while they change.
        let cs = snap.chunk.bytes();
        let _range =
            self.lock_settled(offset / cs * cs, end.div_ceil(cs) * cs, LockMode::Exclusive);
        for seg in snap
            .mapping(offset, end)
            .segments
            .iter()
            .filter(|s| s.on_cow)
        {
            snap.cow.discard(seg.dev_offset, seg.len)?;
        }
        // The other snapshots that read these chunks from the origin change too: their
        // read-aheads must not serve what they read before.
        let others: Vec<&Arc<Snapshot>> = list
            .iter()
            .filter(|s| !std::ptr::eq(Arc::as_ptr(s), snap))
            .collect();
        track_all(&others, || self.origin.discard(offset, len))?;
        Ok(())
    }

    /// A write, zeroing or punch of the snapshot; the callers count it in `snap.writes` (it
    /// changes what the snapshot reads).
    fn write_snapshot_payload(
        &self,
        snap: &Snapshot,
        offset: u64,
        payload: Payload,
        on_full: OnFull,
    ) -> Result<(), VolumeError> {
        if self.options.read_only {
            return Err(VolumeError::ReadOnly);
        }
        // Held shared for the whole write so that a merge cannot start under it (it takes the
        // list exclusively and then refuses writes to the merging snapshot).
        let _list = self.snapshots.read();
        snap.check_writable()?;
        let len = payload.len();
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        let mut mapping = snap.mapping(offset, end);
        let _exclusive = if mapping.touches_origin() {
            let cs = snap.chunk.bytes();
            let guard =
                self.lock_settled(offset / cs * cs, end.div_ceil(cs) * cs, LockMode::Exclusive);
            mapping = snap.mapping(offset, end);
            if !mapping.missing.is_empty() {
                let missing = &mapping.missing;
                self.fill_new_exceptions(snap, offset, end, missing, Some(payload), on_full)?;
            }
            Some(guard)
        } else {
            None
        };
        for seg in mapping.segments.iter().filter(|s| s.on_cow) {
            payload.apply(&snap.cow, seg.dev_offset, seg.buf_offset, seg.len)?;
        }
        Ok(())
    }

    /// Allocates exceptions for `missing` chunks, fills them with the old origin data around
    /// the payload and the payload itself, and commits them. Data is in place before the
    /// records are committed, so a crash never exposes an unfilled chunk.
    fn fill_new_exceptions(
        &self,
        snap: &Snapshot,
        offset: u64,
        end: u64,
        missing: &[u64],
        payload: Option<Payload>,
        on_full: OnFull,
    ) -> Result<(), VolumeError> {
        let prepared = match snap.store.prepare_exceptions(missing.len()) {
            Ok(p) => p,
            // All or none: nothing was allocated.
            Err(StoreError::NoSpace) if on_full == OnFull::Refuse => {
                return Err(VolumeError::NoSpace);
            }
            Err(StoreError::NoSpace) if snap.store.supports_overflow() => {
                snap.set_overflowed();
                return Err(VolumeError::Overflow);
            }
            // Nothing was allocated, and a read-only COW is no reason to invalidate.
            Err(StoreError::ReadOnly) => return Err(VolumeError::ReadOnly),
            Err(e) => {
                snap.invalidate(&format!("unable to allocate exception: {e}"));
                return Err(VolumeError::Invalid);
            }
        };
        let fill = || -> std::io::Result<()> {
            for (old, new, n) in consecutive_runs(missing, &prepared.new_chunks) {
                let (run_start, _) = snap.chunk_range(old, self.size_bytes);
                let (_, run_end) = snap.chunk_range(old + n - 1, self.size_bytes);
                let cow_at = snap.cow_offset(new);
                let Some(payload) = payload else {
                    // A reservation: the chunks keep the origin's data.
                    self.copy_origin_to(run_start, run_end - run_start, &snap.cow, cow_at)?;
                    continue;
                };
                let (ws, we) = (run_start.max(offset), run_end.min(end));
                if run_start < ws {
                    self.copy_origin_to(run_start, ws - run_start, &snap.cow, cow_at)?;
                }
                if we < run_end {
                    let at = cow_at + (we - run_start);
                    self.copy_origin_to(we, run_end - we, &snap.cow, at)?;
                }
                payload.apply(&snap.cow, cow_at + (ws - run_start), ws - offset, we - ws)?;
            }
            Ok(())
        };
        let filled = fill();
        if let Err(e) = &filled {
            log::error!(
                "snapshot {}: filling a new exception failed: {e}",
                snap.name
            );
        }
        let new_chunks = prepared.new_chunks.clone();
        match snap
            .store
            .commit_exceptions(prepared, missing, filled.is_ok())
        {
            Ok(()) => snap.insert_committed(missing, &new_chunks),
            Err(e) => {
                snap.invalidate(&format!("error writing an exception: {e}"));
                Err(VolumeError::Invalid)
            }
        }
    }
}

/// What a snapshot write does when its COW cannot hold the exceptions it needs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnFull {
    /// As the kernel's write: `PO` overflows, `P` and `N` become invalid.
    Write,
    /// Fail with `NoSpace` and change nothing (a punch: a discard must not destroy a snapshot).
    Refuse,
}

/// Runs `f` counted as a write of every snapshot in `snaps` (their read-aheads are dropped).
fn track_all<T>(snaps: &[&Arc<Snapshot>], f: impl FnOnce() -> T) -> T {
    match snaps.split_first() {
        None => f(),
        Some((first, rest)) => first.writes.track(|| track_all(rest, f)),
    }
}
