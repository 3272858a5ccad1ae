//! The persistent store's metadata writer: the one committing thread that holds the area
//! writes the queued batches' records (see the ordering rules in `persistent.rs`).

use super::{Area, PersistentStore, State};
use crate::store::StoreError;
use crate::store::format::{Record, area_chunk, records_per_area};

impl PersistentStore {
    /// A writer flush: numbered when it begins, noted when it completes, so that batches
    /// queued before it began count as covered afterwards. Called only by the writer.
    pub(super) fn writer_flush(&self) -> Result<(), StoreError> {
        let number = {
            let mut st = self.state.lock();
            st.flushes_begun += 1;
            st.flushes_begun
        };
        self.cow.flush()?;
        let mut st = self.state.lock();
        st.flushes_done = st.flushes_done.max(number);
        Ok(())
    }

    /// How many areas, counting from `area`, `records` more records fill: the areas after
    /// `area.index` up to that many must read as zeroes before the full ones are written.
    fn areas_filled(&self, area: &Area, records: usize) -> u64 {
        (area.used + records as u64) / records_per_area(self.chunk)
    }

    /// Whether area `index` lies on the COW as it is now; the commit's error if not (a write
    /// there would fail on a block device and silently grow a regular file).
    fn area_fits(&self, index: u64) -> Result<(), StoreError> {
        let now = self.cow_bytes();
        match self.fits(area_chunk(self.chunk, index), now) {
            true => Ok(()),
            false => Err(self.area_past_the_end(index, now)),
        }
    }

    /// Zeroes areas `from..=to` (not flushed), if every one lies on the COW; false (nothing
    /// written) if one does not.
    fn zero_areas(&self, from: u64, to: u64) -> Result<bool, StoreError> {
        let now = self.cow_bytes();
        if !(from..=to).all(|i| self.fits(area_chunk(self.chunk, i), now)) {
            return Ok(false);
        }
        let zeroes = vec![0u8; self.chunk.bytes() as usize];
        for i in from..=to {
            self.cow
                .write_at(&zeroes, self.chunk_offset(area_chunk(self.chunk, i)))?;
        }
        Ok(true)
    }

    /// Writes `records` into the area. The records' data is already durable; so are zeroes in
    /// every area up to `zeroed` (an area index; `area.index` or less when none is).
    ///
    /// The areas the records fill have the areas after them zeroed durably first (a loader
    /// reading a full area goes on to the next, which must never hold stale bytes); then every
    /// area written is flushed once, together: a crash in between leaves some of them, and a
    /// loader stops at the first area that was not written full, so it sees a prefix of the
    /// records, each pointing at durable data (the batch was not acknowledged).
    ///
    /// Nothing is written past the end of the COW: when an area to zero does not fit, the
    /// records go area by area as the kernel writes them, and the area before the one that
    /// does not fit fails the commit, as the kernel's zeroing write past the end fails it,
    /// without being written full.
    fn write_records(
        &self,
        area: &mut Area,
        records: &[Record],
        zeroed: u64,
    ) -> Result<(), StoreError> {
        let fills = self.areas_filled(area, records.len());
        let last = area.index + fills;
        // Area by area when an area to zero does not fit (near the COW's end): each full area's
        // successor zeroed durably before it, each area write flushed, as the kernel writes them.
        let by_area = if fills == 0 || zeroed >= last {
            false
        } else if self.zero_areas(zeroed.max(area.index) + 1, last)? {
            self.writer_flush()?;
            false
        } else {
            true
        };
        let e = records_per_area(self.chunk);
        let mut dirty = false;
        for r in records {
            r.encode(&mut area.buf, area.used as usize);
            area.used += 1;
            dirty = true;
            if area.used == e {
                if by_area {
                    self.area_fits(area.index + 1)?;
                    let next = area_chunk(self.chunk, area.index + 1);
                    self.cow
                        .write_at(&vec![0u8; area.buf.len()], self.chunk_offset(next))?;
                    self.writer_flush()?;
                }
                self.write_area(area)?;
                if by_area {
                    self.writer_flush()?;
                }
                area.index += 1;
                area.used = 0;
                area.buf.fill(0);
                dirty = false;
            }
        }
        if dirty {
            self.write_area(area)?;
        }
        if dirty || (fills > 0 && !by_area) {
            self.writer_flush()?;
        }
        Ok(())
    }

    /// Writes the area buffer in place (not flushed), if the area lies on the COW.
    fn write_area(&self, area: &Area) -> Result<(), StoreError> {
        self.area_fits(area.index)?;
        let at = self.chunk_offset(area_chunk(self.chunk, area.index));
        Ok(self.cow.write_at(&area.buf, at)?)
    }

    /// Runs as the writer (the area is free, batches are queued, the store is valid): makes
    /// the queued data durable unless a completed flush already covers some of it, writes the
    /// records of every covered batch, and publishes the outcome. Called with the state lock
    /// held; releases it during I/O.
    pub(super) fn write_queued(&self, st: &mut parking_lot::MutexGuard<'_, State>) {
        let mut area = st.area.take().expect("one writer at a time");
        let mut result = Ok(());
        // Areas known zero on the COW, durably: when this writer flushes the queued data, it
        // zeroes first the areas their records will fill, so that one flush serves both.
        let mut zeroed = area.index;
        if !st.queued.iter().any(|b| st.covers(b)) {
            let pending = st.queued.iter().map(|b| b.records.len()).sum();
            let last = area.index + self.areas_filled(&area, pending);
            result = parking_lot::MutexGuard::unlocked(st, || {
                if last > area.index && self.zero_areas(area.index + 1, last)? {
                    zeroed = last;
                }
                self.writer_flush()
            });
        }
        let mut taken = Vec::new();
        if result.is_ok() && st.valid {
            let (covered, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut st.queued)
                .into_iter()
                .partition(|b| st.covers(b));
            st.queued = rest;
            let mut records = Vec::new();
            for b in covered {
                taken.push(b.id);
                records.extend(b.records);
            }
            result = parking_lot::MutexGuard::unlocked(st, || {
                self.write_records(&mut area, &records, zeroed)
            });
        }
        st.current_area = area.index;
        st.area = Some(area);
        if let Err(e) = &result {
            log::error!("{}: metadata write failed: {e}", self.cow.name());
            st.valid = false;
        }
        for id in taken {
            st.finished.insert(id, result.is_ok());
        }
        if !st.valid {
            st.fail_queued();
        }
        self.batch_done.notify_all();
    }
}
