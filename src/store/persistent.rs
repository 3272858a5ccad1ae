//! The persistent exception store (`P`, `PO`): the kernel's on-disk format, byte for byte.
//!
//! Layout: see `format.rs` and docs/format.md. Behaviour that matters for compatibility and
//! safety:
//! - Allocation (`next_free`) steps over metadata-area chunks, after loading too (the
//!   CVE-2013-4299 lesson: a loaded `next_free` may land on an area).
//! - Commits are grouped, in the order batches arrive (as the kernel commits them: in the order
//!   their copies complete, not in allocation order). A batch is queued once its data is
//!   written; whichever committing thread finds queued batches and the area free becomes the
//!   writer, writes them with one area write, and the others wait for it. Order each record
//!   sees: its data flushed, then its area written, then flushed, then its writer released.
//! - Pipelining: writer flushes are numbered as they begin. A batch queued before a flush began
//!   has its data made durable by that flush once it completes ("covered"). The writer takes
//!   only covered batches when there are any, so under load each group costs one area write and
//!   one flush (which covers the batches queued meanwhile for the next group); only when no
//!   queued batch is covered does the writer flush first.
//! - An allocated chunk whose batch is lost in a crash is simply unused: the loader's
//!   `next_free` is the highest recorded chunk + 1, as in the kernel.
//! - When an area becomes full the next area is zeroed, durably, before the full area is written,
//!   so a loader never reads a stale next area. A batch that fills several areas zeroes all
//!   their successors first (with the data flush when the writer makes one), then writes its
//!   areas and flushes once: a group costs two flushes however many areas it fills.
//! - Allocation checks, as the kernel's does, only that the chunk itself fits. The last data chunk
//!   of an area whose next area lies (even in part) past the end of the COW is therefore
//!   allocated, and its commit fails the store: zeroing that area is a write past the end, which
//!   fails on a block device and would silently grow a regular file, so it is never attempted. A
//!   batch that reaches such a chunk and then runs out of room fails with that commit's error,
//!   not `NoSpace`, allocating nothing (the kernel, allocating chunk by chunk, has allocated that
//!   chunk when it runs out, and fails the store at its commit).
//! - A COW that is found smaller than it was (a truncated file) is reported as such, not as full.
//! - A failed copy or metadata write poisons the store: nothing more is written, the waiters are
//!   failed, and `drop_snapshot` marks the header invalid.

use super::checks::{self, CHUNK_NUMBER_LIMIT, RecordBounds};
use super::format::{
    AREA_RECORD_BYTES, DISK_VERSION, HEADER_MAGIC, HEADER_READ_BYTES, Header, Record, area_chunk,
    header_read_len, is_area_chunk, records_per_area,
};
use super::{
    ExceptionStore, Loaded, MergeRun, OriginGeometry, Prepared, StoreError, StoreKind, Usage,
};
use crate::device::Device;
use crate::units::{ChunkSize, SECTOR_BYTES};
use parking_lot::{Condvar, Mutex};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The area being filled: owned by the state, lent to the one writer while it does I/O.
struct Area {
    index: u64,
    /// Records in `buf` (the kernel's `current_committed`).
    used: u64,
    buf: Vec<u8>,
}

/// A batch whose data is written, waiting for a writer.
struct QueuedBatch {
    /// Its `Prepared::first_seq`: unique per store.
    id: u64,
    records: Vec<Record>,
    /// `flushes_begun` when it was queued: the flush numbered above this covers its data.
    queued_after: u64,
}

struct State {
    valid: bool,
    next_free: u64,
    /// Sequence number the next prepared exception gets (batch ids).
    next_seq: u64,
    queued: Vec<QueuedBatch>,
    /// Outcomes (durable or not) of written or failed batches, until their committer takes them.
    finished: HashMap<u64, bool>,
    /// Writer flushes begun and completed, numbered from 1; writer flushes run one at a time.
    flushes_begun: u64,
    flushes_done: u64,
    /// `None` while a writer has it.
    area: Option<Area>,
    /// Mirror of `area.index` for `usage()` while a writer holds the area.
    current_area: u64,
}

impl State {
    /// Whether a completed flush began after `b` was queued (its data is durable).
    fn covers(&self, b: &QueuedBatch) -> bool {
        b.queued_after < self.flushes_done
    }

    /// Fails every queued batch (the store is invalid: nothing more is written).
    fn fail_queued(&mut self) {
        for b in self.queued.drain(..) {
            self.finished.insert(b.id, false);
        }
    }
}

pub struct PersistentStore {
    cow: Device,
    kind: StoreKind,
    requested_sectors: u64,
    origin: OriginGeometry,
    read_only: bool,
    chunk: ChunkSize,
    /// Set by `read_metadata` for a new store; `initialise` writes header and area 0.
    needs_format: bool,
    state: Mutex<State>,
    batch_done: Condvar,
    /// Header writes use their own buffer and lock (the kernel's 2008 fix: never share the
    /// header buffer with the area buffer). The lock guards the merge marker's value too.
    header: Mutex<HeaderState>,
    /// The largest size the COW has been seen with (loading, allocating, committing): a COW
    /// found smaller than this shrank under the store.
    cow_bytes_seen: AtomicU64,
}

struct HeaderState {
    merging: bool,
    merge_paused: bool,
}

impl PersistentStore {
    /// A store on `cow`. `requested_sectors == 0` means "use the header's, or the default".
    /// Nothing is read until `read_metadata`.
    pub fn new(
        cow: Device,
        overflow: bool,
        requested_sectors: u64,
        origin: OriginGeometry,
        read_only: bool,
    ) -> PersistentStore {
        PersistentStore {
            cow,
            kind: StoreKind::Persistent { overflow },
            requested_sectors,
            origin,
            read_only,
            // Replaced by read_metadata; 1 sector is always a valid placeholder.
            chunk: ChunkSize::new(1, &[]).unwrap(),
            needs_format: false,
            state: Mutex::new(State {
                valid: true,
                next_free: 2,
                next_seq: 0,
                queued: Vec::new(),
                finished: HashMap::new(),
                flushes_begun: 0,
                flushes_done: 0,
                area: None,
                current_area: 0,
            }),
            batch_done: Condvar::new(),
            header: Mutex::new(HeaderState {
                merging: false,
                merge_paused: false,
            }),
            cow_bytes_seen: AtomicU64::new(0),
        }
    }

    /// The COW's size now, noted as seen.
    fn cow_bytes(&self) -> u64 {
        let now = self.cow.size_bytes();
        self.cow_bytes_seen.fetch_max(now, Ordering::AcqRel);
        now
    }

    /// Why something does not fit a COW of `now` bytes: the COW shrank, if it was ever seen
    /// larger; otherwise `otherwise`.
    fn no_room(&self, now: u64, otherwise: impl FnOnce() -> StoreError) -> StoreError {
        let seen = self.cow_bytes_seen.load(Ordering::Acquire);
        if now < seen {
            StoreError::Io(std::io::Error::other(format!(
                "COW device {} shrank while in use: {seen} bytes expected, {now} found",
                self.cow.name()
            )))
        } else {
            otherwise()
        }
    }

    /// The error of a commit that must zero (or write) metadata area `area`, which lies past
    /// the end of a COW of `now` bytes.
    fn area_past_the_end(&self, area: u64, now: u64) -> StoreError {
        self.no_room(now, || {
            StoreError::Io(std::io::Error::other(format!(
                "COW device {} ({now} bytes) ends before metadata area {area} (chunk {}), \
                 which must be zeroed before area {} is written full",
                self.cow.name(),
                area_chunk(self.chunk, area),
                area.saturating_sub(1)
            )))
        })
    }

    fn block_sizes(&self) -> [u32; 2] {
        [self.cow.logical_block_size(), self.origin.block_bytes]
    }

    fn chunk_offset(&self, c: u64) -> u64 {
        self.chunk.start_of(c)
    }

    /// Rewrites chunk 0 whole and flushes it.
    fn write_header(&self, valid: bool, hs: &HeaderState) -> Result<(), StoreError> {
        let buf = Header::new(valid, self.chunk)
            .with_merging(hs.merging)
            .with_merge_paused(hs.merge_paused)
            .encode_chunk(self.chunk);
        self.cow.write_at(&buf, 0)?;
        self.cow.flush()?;
        Ok(())
    }

    /// Accepts a COW whose first four bytes are zero as a new store; `initialise` writes it.
    fn accept_new(&mut self) -> Result<Loaded, StoreError> {
        let chunk = self.chunk;
        let cow_bytes = self.cow_bytes();
        // Two chunks activate a store, but only a third can hold data (LVM's minimum too).
        if cow_bytes < 3 * chunk.bytes() {
            return Err(StoreError::Corrupt(format!(
                "COW device {} has {cow_bytes} bytes; with chunk size {} sectors it needs at \
                 least 3 chunks ({} bytes)",
                self.cow.name(),
                chunk.sectors(),
                3 * chunk.bytes()
            )));
        }
        if self.read_only {
            return Err(StoreError::Corrupt(format!(
                "COW device {} is not initialised and the mount is read-only",
                self.cow.name()
            )));
        }
        self.needs_format = true;
        self.state.get_mut().area = Some(Area {
            index: 0,
            used: 0,
            buf: vec![0u8; chunk.bytes() as usize],
        });
        Ok(Loaded::Valid(Vec::new()))
    }

    /// Reads the record list, checking every record (the kernel checks none).
    fn load_exceptions(&mut self) -> Result<Loaded, StoreError> {
        let chunk = self.chunk;
        let e = records_per_area(chunk);
        let bounds = self.record_bounds(self.cow_bytes());
        let cow_chunks = bounds.cow_chunks;
        let corrupt = |why: String| StoreError::Corrupt(why);
        let mut exceptions = Vec::new();
        let mut next_free = 2u64;
        let mut buf = vec![0u8; chunk.bytes() as usize];
        let mut area = 0u64;
        let used = loop {
            let at = area_chunk(chunk, area);
            if at >= cow_chunks {
                return Err(corrupt(format!(
                    "metadata area {area} (chunk {at}) lies beyond the end of the COW \
                     ({cow_chunks} chunks)"
                )));
            }
            self.cow.read_at(&mut buf, self.chunk_offset(at))?;
            let mut used = e;
            for i in 0..e as usize {
                let r = Record::decode(&buf, i);
                if r.is_terminator() {
                    used = i as u64;
                    break;
                }
                let what = |why: &str| {
                    corrupt(format!(
                        "record {i} of area {area} (origin chunk {}, COW chunk {}) {why}",
                        r.old_chunk, r.new_chunk
                    ))
                };
                if let Some(why) = checks::record_fault(&r, &bounds) {
                    return Err(what(why));
                }
                next_free = next_free.max(r.new_chunk + 1);
                exceptions.push((r.old_chunk, r.new_chunk));
            }
            if used < e {
                break used;
            }
            area += 1;
        };
        checks::unique(&exceptions, |&(old, _)| old, "origin chunk")?;
        checks::unique(&exceptions, |&(_, new)| new, "COW chunk")?;
        // Whatever follows the terminator is ignored by every loader; keep it zero in memory
        // so our next write of this area cannot resurrect it.
        buf[used as usize * AREA_RECORD_BYTES..].fill(0);
        if is_area_chunk(chunk, next_free) {
            next_free += 1;
        }
        let st = self.state.get_mut();
        st.next_free = next_free;
        st.current_area = area;
        st.area = Some(Area {
            index: area,
            used,
            buf,
        });
        Ok(Loaded::Valid(exceptions))
    }

    /// What a valid record may point at, on a COW of `cow_bytes` bytes.
    fn record_bounds(&self, cow_bytes: u64) -> RecordBounds {
        RecordBounds {
            chunk: self.chunk,
            cow_chunks: cow_bytes / self.chunk.bytes(),
            origin_chunks: self.chunk.chunks_covering(self.origin.size_bytes),
        }
    }

    /// Whether chunk `c` lies wholly on a COW of `cow_bytes` bytes. Allocation asks only this,
    /// as the kernel does (`(next_free + 1) * cs <= size`): not whether the next area fits when
    /// `c` is the last data chunk of its area (see `write_records`).
    fn fits(&self, c: u64, cow_bytes: u64) -> bool {
        (c + 1)
            .checked_mul(self.chunk.bytes())
            .is_some_and(|bytes| bytes <= cow_bytes)
            && c < CHUNK_NUMBER_LIMIT
    }

    /// Waits until no writer holds the area (merge steps run between commits).
    fn area_guard(&self) -> Result<parking_lot::MutexGuard<'_, State>, StoreError> {
        let mut st = self.state.lock();
        loop {
            if !st.valid {
                return Err(StoreError::Invalid);
            }
            if st.area.is_some() {
                return Ok(st);
            }
            self.batch_done.wait(&mut st);
        }
    }
}

impl ExceptionStore for PersistentStore {
    fn kind(&self) -> StoreKind {
        self.kind
    }

    fn supports_overflow(&self) -> bool {
        self.kind == StoreKind::Persistent { overflow: true }
    }

    fn merge_resumable(&self) -> bool {
        true
    }

    fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }

    fn read_metadata(&mut self) -> Result<Loaded, StoreError> {
        let blocks = self.block_sizes();
        let requested = match self.requested_sectors {
            0 => None,
            s => Some(ChunkSize::new(s, &blocks)?),
        };
        let mut head = [0u8; HEADER_READ_BYTES];
        let len = header_read_len(self.cow.size_bytes());
        self.cow.read_at(&mut head[..len], 0).map_err(|e| {
            StoreError::Corrupt(format!(
                "cannot read the header of {}: {e}",
                self.cow.name()
            ))
        })?;
        let header = Header::decode(&head);
        if header.magic == 0 {
            // A new store: the requested size, or the kernel's default of 16 KiB (or one
            // logical block of the COW if that is larger).
            let default = (self.cow.logical_block_size() as u64 / SECTOR_BYTES).max(32);
            self.chunk = match requested {
                Some(c) => c,
                None => ChunkSize::new(default, &blocks)?,
            };
            return self.accept_new();
        }
        if header.magic != HEADER_MAGIC {
            return Err(StoreError::Corrupt(format!(
                "{} has no snapshot header (magic {:#010x}, expected {HEADER_MAGIC:#010x} \"SnAp\")",
                self.cow.name(),
                header.magic
            )));
        }
        self.chunk = ChunkSize::new(header.chunk_sectors as u64, &blocks)
            .map_err(|e| StoreError::Corrupt(format!("invalid on-disk chunk size: {e}")))?;
        if let Some(req) = requested
            && req != self.chunk
        {
            log::warn!(
                "{}: chunk size {} on disk overrides the requested {}",
                self.cow.name(),
                self.chunk,
                req
            );
        }
        if header.version != DISK_VERSION {
            return Err(StoreError::Corrupt(format!(
                "unable to handle snapshot disk version {}",
                header.version
            )));
        }
        if self.cow.size_bytes() < 2 * self.chunk.bytes() {
            return Err(StoreError::Corrupt(format!(
                "COW device {} is smaller than two chunks of {} sectors",
                self.cow.name(),
                self.chunk.sectors()
            )));
        }
        self.header.get_mut().merging = header.merging;
        self.header.get_mut().merge_paused = header.merge_paused;
        if header.valid == 0 {
            self.state.get_mut().valid = false;
            return Ok(Loaded::Invalid);
        }
        self.load_exceptions()
    }

    fn initialise(&mut self) -> Result<(), StoreError> {
        if !std::mem::take(&mut self.needs_format) {
            return Ok(());
        }
        let chunk = self.chunk;
        // Area 0 is zeroed durably before the header makes the COW a store: otherwise a crash
        // could keep the header and lose the zeroing, and a reused COW's stale area 0 would load
        // as this snapshot's exceptions. (The kernel writes both and relies on the next area
        // write's preflush; it has the same window.)
        self.cow
            .write_at(&vec![0u8; chunk.bytes() as usize], self.chunk_offset(1))?;
        self.cow.flush()?;
        self.cow
            .write_at(&Header::new(true, chunk).encode_chunk(chunk), 0)?;
        self.cow.flush()?;
        Ok(())
    }

    fn prepare_exceptions(&self, count: usize) -> Result<Prepared, StoreError> {
        let cow_bytes = self.cow_bytes();
        let mut st = self.state.lock();
        if !st.valid {
            return Err(StoreError::Invalid);
        }
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut next = st.next_free;
        let mut new_chunks = Vec::with_capacity(count);
        // The area past the end that this batch would have to zero (it fills the area before
        // it): the batch's commit would fail.
        let mut doomed = None;
        for _ in 0..count {
            if !self.fits(next, cow_bytes) {
                // The kernel, allocating chunk by chunk, would have allocated the chunks before
                // this one and failed the store at the commit of the doomed area: not `NoSpace`
                // (which lets a PO snapshot merely overflow) but the error that commit would
                // give. A COW that shrank is not "full" either: what was cut off may have held
                // exceptions. Either way nothing is allocated; the caller fails the snapshot.
                return Err(self.no_room(cow_bytes, || match doomed {
                    Some(area) => self.area_past_the_end(area, cow_bytes),
                    None => StoreError::NoSpace,
                }));
            }
            new_chunks.push(next);
            next += 1;
            if is_area_chunk(self.chunk, next) {
                if doomed.is_none() && !self.fits(next, cow_bytes) {
                    doomed = Some((next - 1) / (records_per_area(self.chunk) + 1));
                }
                next += 1;
            }
        }
        checks::allocated_not_metadata(self.chunk, &new_chunks);
        st.next_free = next;
        let first_seq = st.next_seq;
        st.next_seq += count as u64;
        Ok(Prepared {
            first_seq,
            new_chunks,
        })
    }

    fn commit_exceptions(
        &self,
        prepared: Prepared,
        old_chunks: &[u64],
        copied: bool,
    ) -> Result<(), StoreError> {
        assert_eq!(prepared.new_chunks.len(), old_chunks.len());
        if old_chunks.is_empty() {
            return Ok(());
        }
        let records: Vec<Record> = old_chunks
            .iter()
            .zip(&prepared.new_chunks)
            .map(|(&old_chunk, &new_chunk)| Record {
                old_chunk,
                new_chunk,
            })
            .collect();
        // Allocation checked each chunk against the COW's size then: the largest size seen.
        let seen = self.cow_bytes_seen.load(Ordering::Acquire);
        checks::records_valid(&records, &self.record_bounds(seen));
        let id = prepared.first_seq;
        let mut st = self.state.lock();
        checks::committed_below_next_free(st.next_free, &prepared.new_chunks);
        if !copied {
            // The chunk holds no copy: nothing more may be recorded in this store.
            st.valid = false;
        }
        let queued_after = st.flushes_begun;
        st.queued.push(QueuedBatch {
            id,
            records,
            queued_after,
        });
        loop {
            if let Some(durable) = st.finished.remove(&id) {
                return if durable {
                    Ok(())
                } else {
                    Err(StoreError::Invalid)
                };
            }
            if !st.valid {
                // An invalid store writes nothing; a writer in progress publishes its own. Ours
                // may be with that writer: wait for it (never spin here, holding the lock the
                // writer needs to publish).
                st.fail_queued();
                self.batch_done.notify_all();
                if !st.finished.contains_key(&id) {
                    self.batch_done.wait(&mut st);
                }
            } else if st.area.is_some() && !st.queued.is_empty() {
                self.write_queued(&mut st);
            } else {
                self.batch_done.wait(&mut st);
            }
        }
    }

    fn prepare_merge(&self) -> Result<Option<MergeRun>, StoreError> {
        let mut st = self.area_guard()?;
        let e = records_per_area(self.chunk);
        let mut area = st.area.take().unwrap();
        if area.used == 0 {
            if area.index == 0 {
                st.area = Some(area);
                return Ok(None);
            }
            let prev = area_chunk(self.chunk, area.index - 1);
            if let Err(err) = self.cow.read_at(&mut area.buf, self.chunk_offset(prev)) {
                st.area = Some(area);
                return Err(err.into());
            }
            area.index -= 1;
            area.used = e;
            st.current_area = area.index;
        }
        let last = Record::decode(&area.buf, area.used as usize - 1);
        let mut count = 1;
        while count < area.used {
            let r = Record::decode(&area.buf, (area.used - 1 - count) as usize);
            if r.old_chunk != last.old_chunk.wrapping_sub(count)
                || r.new_chunk != last.new_chunk.wrapping_sub(count)
            {
                break;
            }
            count += 1;
        }
        st.area = Some(area);
        Ok(Some(MergeRun {
            last_old: last.old_chunk,
            last_new: last.new_chunk,
            count,
        }))
    }

    fn commit_merge(&self, count: u64) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut st = self.area_guard()?;
        let area = st.area.as_mut().unwrap();
        assert!(
            count <= area.used,
            "commit_merge beyond the records in the area"
        );
        let from = (area.used - count) as usize * AREA_RECORD_BYTES;
        let to = area.used as usize * AREA_RECORD_BYTES;
        area.buf[from..to].fill(0);
        let at = self.chunk_offset(area_chunk(self.chunk, area.index));
        let result = self
            .cow
            .flush()
            .and_then(|()| self.cow.write_at(&area.buf, at))
            .and_then(|()| self.cow.flush());
        if let Err(e) = result {
            st.valid = false;
            return Err(e.into());
        }
        area.used -= count;
        let next_free = area_chunk(self.chunk, area.index) + area.used + 1;
        st.next_free = next_free;
        Ok(())
    }

    fn drop_snapshot(&self) {
        // Invalidated under the header lock, so a concurrent marker write cannot rewrite
        // `valid = 1` after this.
        let hs = self.header.lock();
        self.state.lock().valid = false;
        if self.read_only {
            return;
        }
        if let Err(e) = self.write_header(false, &hs) {
            log::error!(
                "{}: could not mark the snapshot invalid: {e}",
                self.cow.name()
            );
        }
    }

    fn merge_marker(&self) -> bool {
        self.header.lock().merging
    }

    fn set_merge_marker(&self, merging: bool) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut hs = self.header.lock();
        if !self.state.lock().valid {
            return Err(StoreError::Invalid);
        }
        let old = (hs.merging, hs.merge_paused);
        // A new merge starts running; a finished one has no flags.
        (hs.merging, hs.merge_paused) = (merging, false);
        let result = self.write_header(true, &hs);
        if result.is_err() {
            (hs.merging, hs.merge_paused) = old;
        }
        result
    }

    fn merge_paused(&self) -> bool {
        let hs = self.header.lock();
        hs.merging && hs.merge_paused
    }

    fn set_merge_paused(&self, paused: bool) -> Result<(), StoreError> {
        if self.read_only {
            return Err(StoreError::ReadOnly);
        }
        let mut hs = self.header.lock();
        if !self.state.lock().valid {
            return Err(StoreError::Invalid);
        }
        if !hs.merging {
            return Err(StoreError::Unsupported(
                "no merge is recorded on this store",
            ));
        }
        let old = hs.merge_paused;
        hs.merge_paused = paused;
        let result = self.write_header(true, &hs);
        if result.is_err() {
            hs.merge_paused = old;
        }
        result
    }

    fn usage(&self) -> Usage {
        let st = self.state.lock();
        let cs = self.chunk.sectors();
        Usage {
            allocated_sectors: st.next_free * cs,
            total_sectors: self.cow.size_bytes() / SECTOR_BYTES,
            metadata_sectors: (st.current_area + 2) * cs,
        }
    }
}

#[path = "persistent_areas.rs"]
mod areas;

#[cfg(test)]
#[path = "persistent_tests/mod.rs"]
mod tests;
