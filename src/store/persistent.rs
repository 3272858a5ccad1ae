//! The persistent exception store (`P`, `PO`): the kernel's on-disk format, byte for byte.
//!
//! Layout: see `format.rs` and docs/format.md. Behaviour that matters for compatibility and
//! safety:
//! - Allocation (`next_free`) steps over metadata-area chunks, after loading too (the
//!   CVE-2013-4299 lesson: a loaded `next_free` may land on an area).
//! - Commits happen in allocation order, grouped: whichever committing thread finds the head of
//!   the queue ready becomes the writer and writes every ready batch with one area write; the
//!   others wait for it. Order of each area write: flush (the copied data and any zeroed area are
//!   durable) -> write the area -> flush (the records are durable) -> release the waiters.
//! - Pipelining: a batch is queued only once its data is written, so the flush that follows an
//!   area write also makes durable the data of every batch queued before that flush began. The
//!   writer notes how far that goes (`data_flushed_upto`), and the next writer writes those
//!   batches' records without a flush of its own first. Under concurrent load a group costs one
//!   area write and one flush instead of two flushes; the order of writes and flushes each
//!   record sees is unchanged (its data flushed, then its area written, then flushed).
//! - When an area becomes full the next area is zeroed, durably, before the full area is written,
//!   so a loader never reads a stale next area.
//! - A failed copy or metadata write poisons the store: nothing more is written, the waiters are
//!   failed, and `drop_snapshot` marks the header invalid.

use super::format::{
    AREA_RECORD_BYTES, DISK_VERSION, HEADER_MAGIC, HEADER_READ_BYTES, Header, Record, area_chunk,
    is_area_chunk, records_per_area,
};
use super::{
    ExceptionStore, Loaded, MergeRun, OriginGeometry, Prepared, StoreError, StoreKind, Usage,
};
use crate::device::Device;
use crate::units::{ChunkSize, SECTOR_BYTES};
use parking_lot::{Condvar, Mutex};
use std::collections::BTreeMap;

/// Chunk numbers must fit the kernel's 56-bit in-memory field (the top 8 bits count runs).
const CHUNK_NUMBER_LIMIT: u64 = 1 << 56;

/// The area being filled: owned by the state, lent to the one writer while it does I/O.
struct Area {
    index: u64,
    /// Records in `buf` (the kernel's `current_committed`).
    used: u64,
    buf: Vec<u8>,
}

/// A batch whose data is copied, waiting for its predecessors.
struct ReadyBatch {
    records: Vec<Record>,
    copied: bool,
}

struct State {
    valid: bool,
    next_free: u64,
    /// Sequence number the next prepared exception gets.
    next_seq: u64,
    /// Every sequence number below this has been committed (durably or as failed).
    committed_seq: u64,
    /// Every sequence number below this was committed durably.
    durable_seq: u64,
    /// Batches ending at or below this sequence number were queued (their data written) before
    /// a flush that has completed: their data is durable, their area write needs no flush first.
    data_flushed_upto: u64,
    ready: BTreeMap<u64, ReadyBatch>,
    /// `None` while a writer has it.
    area: Option<Area>,
    /// Mirror of `area.index` for `usage()` while a writer holds the area.
    current_area: u64,
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
}

struct HeaderState {
    merging: bool,
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
                committed_seq: 0,
                durable_seq: 0,
                data_flushed_upto: 0,
                ready: BTreeMap::new(),
                area: None,
                current_area: 0,
            }),
            batch_done: Condvar::new(),
            header: Mutex::new(HeaderState { merging: false }),
        }
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
            .encode_chunk(self.chunk);
        self.cow.write_at(&buf, 0)?;
        self.cow.flush()?;
        Ok(())
    }

    /// Accepts a COW whose first four bytes are zero as a new store; `initialise` writes it.
    fn accept_new(&mut self) -> Result<Loaded, StoreError> {
        let chunk = self.chunk;
        let cow_bytes = self.cow.size_bytes();
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
        let cow_bytes = self.cow.size_bytes();
        let cow_chunks = cow_bytes / chunk.bytes();
        let origin_chunks = chunk.chunks_covering(self.origin.size_bytes);
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
                if r.new_chunk >= CHUNK_NUMBER_LIMIT {
                    return Err(what("has a COW chunk beyond 2^56"));
                }
                if r.new_chunk == 0 || is_area_chunk(chunk, r.new_chunk) {
                    return Err(what("points at a metadata chunk"));
                }
                if r.new_chunk >= cow_chunks {
                    return Err(what("points beyond the end of the COW"));
                }
                if r.old_chunk >= origin_chunks {
                    return Err(what("names an origin chunk beyond the end of the origin"));
                }
                next_free = next_free.max(r.new_chunk + 1);
                exceptions.push((r.old_chunk, r.new_chunk));
            }
            if used < e {
                break used;
            }
            area += 1;
        };
        check_unique(&exceptions, |&(old, _)| old, "origin chunk")?;
        check_unique(&exceptions, |&(_, new)| new, "COW chunk")?;
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

    /// Whether allocating chunk `c` fits: the chunk itself, and when it is the last data chunk
    /// of its area, the next area too (the area is zeroed when this one fills; the kernel does
    /// not check this and fails the store when the zeroing write runs off the end).
    fn fits(&self, c: u64, cow_bytes: u64) -> bool {
        let mut end = c + 1;
        if is_area_chunk(self.chunk, end) {
            end += 1;
        }
        end.checked_mul(self.chunk.bytes())
            .is_some_and(|bytes| bytes <= cow_bytes)
            && c < CHUNK_NUMBER_LIMIT
    }

    /// Writes the records of ready batches into the area, area by area; see the module comment
    /// for the order of writes and flushes. `data_flush`: flush first (false when a completed
    /// flush already covers the batches' data). `before_flush` runs before each flush that
    /// follows an area write (with the state lock free), to note what that flush will cover.
    fn write_records(
        &self,
        area: &mut Area,
        records: &[Record],
        data_flush: bool,
        before_flush: &mut dyn FnMut(),
    ) -> Result<(), StoreError> {
        let e = records_per_area(self.chunk);
        // Data of every batch being committed is made durable first.
        if data_flush {
            self.cow.flush()?;
        }
        let mut dirty = false;
        for r in records {
            r.encode(&mut area.buf, area.used as usize);
            area.used += 1;
            dirty = true;
            if area.used == e {
                let next = area_chunk(self.chunk, area.index + 1);
                self.cow
                    .write_at(&vec![0u8; area.buf.len()], self.chunk_offset(next))?;
                self.cow.flush()?;
                self.cow.write_at(
                    &area.buf,
                    self.chunk_offset(area_chunk(self.chunk, area.index)),
                )?;
                before_flush();
                self.cow.flush()?;
                area.index += 1;
                area.used = 0;
                area.buf.fill(0);
                dirty = false;
            }
        }
        if dirty {
            self.cow.write_at(
                &area.buf,
                self.chunk_offset(area_chunk(self.chunk, area.index)),
            )?;
            before_flush();
            self.cow.flush()?;
        }
        Ok(())
    }

    /// Runs as the writer: takes every batch that is ready in sequence order, writes them, and
    /// publishes the outcome. Called with the state lock held; releases it during I/O.
    fn write_ready_batches(&self, st: &mut parking_lot::MutexGuard<'_, State>) {
        // Batches whose data a completed flush covers go first, on their own: they need no
        // flush before their area write (and the ones behind them will be covered by ours).
        let covered = st.valid && st.data_flushed_upto > st.committed_seq;
        let limit = if covered {
            st.data_flushed_upto
        } else {
            u64::MAX
        };
        let mut records = Vec::new();
        let mut copied = true;
        let mut end = st.committed_seq;
        while end < limit {
            let Some(batch) = st.ready.remove(&end) else {
                break;
            };
            end += batch.records.len() as u64;
            copied &= batch.copied;
            records.extend(batch.records);
        }
        if !copied {
            st.valid = false;
        }
        let ok = if st.valid {
            let mut area = st.area.take().expect("one writer at a time");
            let mut flushed_upto = 0;
            let mut note_ready = || {
                // Queued now = data written now: the coming flush covers these batches.
                let st = self.state.lock();
                let mut at = end;
                while let Some(b) = st.ready.get(&at) {
                    at += b.records.len() as u64;
                }
                flushed_upto = at;
            };
            let result = parking_lot::MutexGuard::unlocked(st, || {
                self.write_records(&mut area, &records, !covered, &mut note_ready)
            });
            st.current_area = area.index;
            st.area = Some(area);
            match &result {
                Err(e) => {
                    log::error!("{}: metadata write failed: {e}", self.cow.name());
                    st.valid = false;
                }
                Ok(()) => st.data_flushed_upto = st.data_flushed_upto.max(flushed_upto),
            }
            result.is_ok()
        } else {
            false
        };
        st.committed_seq = end;
        if ok {
            st.durable_seq = end;
        }
        self.batch_done.notify_all();
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

/// Fails when two exceptions share a key (sorting a copy of the keys: O(n log n), 8 bytes each).
fn check_unique(
    exceptions: &[(u64, u64)],
    key: impl Fn(&(u64, u64)) -> u64,
    what: &str,
) -> Result<(), StoreError> {
    let mut keys: Vec<u64> = exceptions.iter().map(key).collect();
    keys.sort_unstable();
    match keys.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(StoreError::Corrupt(format!(
            "{what} {} appears in two records",
            w[0]
        ))),
        None => Ok(()),
    }
}

impl ExceptionStore for PersistentStore {
    fn kind(&self) -> StoreKind {
        self.kind
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
        self.cow.read_at(&mut head, 0).map_err(|e| {
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
        let cow_bytes = self.cow.size_bytes();
        let mut st = self.state.lock();
        if !st.valid {
            return Err(StoreError::Invalid);
        }
        if self.read_only {
            return Err(StoreError::Unsupported("the store is read-only"));
        }
        let mut next = st.next_free;
        let mut new_chunks = Vec::with_capacity(count);
        for _ in 0..count {
            if !self.fits(next, cow_bytes) {
                return Err(StoreError::NoSpace);
            }
            new_chunks.push(next);
            next += 1;
            if is_area_chunk(self.chunk, next) {
                next += 1;
            }
        }
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
        let end = prepared.first_seq + old_chunks.len() as u64;
        let records = old_chunks
            .iter()
            .zip(&prepared.new_chunks)
            .map(|(&old_chunk, &new_chunk)| Record {
                old_chunk,
                new_chunk,
            })
            .collect();
        let mut st = self.state.lock();
        st.ready
            .insert(prepared.first_seq, ReadyBatch { records, copied });
        loop {
            if st.committed_seq >= end {
                return if st.durable_seq >= end {
                    Ok(())
                } else {
                    Err(StoreError::Invalid)
                };
            }
            let head = st.committed_seq;
            // An invalid store writes nothing, so it needs no area to fail the batches.
            if st.ready.contains_key(&head) && (st.area.is_some() || !st.valid) {
                self.write_ready_batches(&mut st);
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
            return Err(StoreError::Unsupported("the store is read-only"));
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
            return Err(StoreError::Unsupported("the store is read-only"));
        }
        let mut hs = self.header.lock();
        if !self.state.lock().valid {
            return Err(StoreError::Invalid);
        }
        let old = hs.merging;
        hs.merging = merging;
        let result = self.write_header(true, &hs);
        if result.is_err() {
            hs.merging = old;
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

#[cfg(test)]
#[path = "persistent_tests.rs"]
mod tests;
