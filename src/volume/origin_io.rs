//! snapshot-origin: reads pass through; a write first copies the chunks it is about to change
//! into every snapshot that has not copied them yet, commits those exceptions, and only then
//! reaches the origin.
//!
//! The life of an origin write (the kernel's chain, as blocking steps):
//! plan (which snapshot lacks which chunk) -> lock the chunks -> re-plan under the lock ->
//! allocate in each store -> read the old data once -> write it to every COW -> commit each
//! store (each store groups the commits it is given) -> insert into the tables -> write the
//! origin -> unlock.
//!
//! With several snapshots and a large copy (at least [`PARALLEL_MIN_BYTES`]) the COW writes of
//! a piece, and then the commits, run in parallel, one scoped thread per extra snapshot: each is
//! device-bound (a commit is flushes), so the cost of a large first write grows far less than
//! linearly with the number of snapshots. Small copies stay on the request's thread, where a
//! thread start would cost more than it saves; with many requests in flight their commits
//! overlap across stores anyway. Commits need no order between stores: a commit waits only for
//! its own store's writer, and every batch is queued without waiting for anything in another
//! store (see `store/persistent.rs`).

use super::mapping::{consecutive_runs, merged_ranges, read_segments};
use super::{COPY_PIECE_BYTES, Payload, READAHEAD_MIN_BYTES, Snapshot, Volume, VolumeError};
use crate::device::IoBuf;
use crate::rangelock::LockMode;
use crate::store::{Prepared, StoreError};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Copies at least this large write and commit to several snapshots in parallel.
const PARALLEL_MIN_BYTES: u64 = 256 << 10;

/// Chunks one snapshot must copy before an origin write.
pub(super) struct CopyJob<'a> {
    snap: &'a Arc<Snapshot>,
    chunks: Vec<u64>,
    prepared: Option<Prepared>,
    copied: bool,
}

impl<'a> CopyJob<'a> {
    /// The snapshot and its chunks (write-back allocates and copies them itself).
    pub(super) fn parts(self) -> (&'a Arc<Snapshot>, Vec<u64>) {
        (self.snap, self.chunks)
    }
}

impl Volume {
    pub fn read_origin(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        self.check_range(offset, buf.len() as u64)?;
        let merging = match self.merging_snapshot() {
            Some(m) if !buf.is_empty() => m,
            _ => return Ok(self.read_overlaid(offset, buf)?),
        };
        // While merging, chunks still in the COW are the origin's content. No lock needed: a
        // chunk leaves the table only after its data is durable on the origin, and the merging
        // COW's chunks are never reused during the merge.
        let mapping = merging.mapping(offset, offset + buf.len() as u64);
        Ok(read_segments(
            &self.origin,
            &merging.cow,
            &mapping.segments,
            buf,
        )?)
    }

    /// [`Volume::read_origin`] into a buffer of the caller's that may be exchanged for a
    /// read-ahead buffer holding the same range (see `readahead.rs`): what FUSE reads use.
    pub fn read_origin_buf(&self, offset: u64, buf: &mut IoBuf) -> Result<(), VolumeError> {
        if buf.len() < READAHEAD_MIN_BYTES
            || self.merge_active.load(Ordering::Acquire)
            || self.writeback.any_held()
        {
            return self.read_origin(offset, buf);
        }
        self.check_range(offset, buf.len() as u64)?;
        Ok(self.origin_stream.read(
            &self.helpers,
            &self.origin_source,
            offset,
            buf,
            self.size_bytes,
        )?)
    }

    /// Drops what was read ahead for the origin (its file's last open handle was closed).
    pub fn forget_origin_reads(&self) {
        self.origin_stream.forget();
    }

    pub fn write_origin(&self, offset: u64, data: &[u8]) -> Result<(), VolumeError> {
        self.write_origin_payload(offset, Payload::Data(data))
    }

    /// Zeroes a range of the origin (copying out first, as any write).
    pub fn zero_origin(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        self.write_origin_payload(offset, Payload::Zeroes(len))
    }

    /// A punch of the origin file (`PUNCH_HOLE`, a loop device's discard): copied out to the
    /// snapshots first like any write, and the range reads zeroes afterwards. With the
    /// `origin_discard` option the origin device frees the space (a hole, an unmapping
    /// write-zeroes); without, it writes zeroes that stay allocated. See docs/discard.md.
    pub fn discard_origin(&self, offset: u64, len: u64) -> Result<(), VolumeError> {
        let payload = if self.options.origin_discard {
            Payload::Discard(len)
        } else {
            Payload::Zeroes(len)
        };
        self.write_origin_payload(offset, payload)
    }

    fn write_origin_payload(&self, offset: u64, payload: Payload) -> Result<(), VolumeError> {
        if self.options.read_only {
            return Err(VolumeError::ReadOnly);
        }
        let len = payload.len();
        self.check_range(offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let end = offset + len;
        // Held shared until the write is done: the snapshot set cannot change under it.
        let list = self.snapshots.read();
        let targets: Vec<&Arc<Snapshot>> = list.iter().filter(|s| s.takes_copies()).collect();
        let merging = list.iter().find(|s| s.is_merging());
        if targets.is_empty() && merging.is_none() && !self.writeback.any_held() {
            payload.apply(&self.origin, offset, 0, len)?;
            return Ok(());
        }
        loop {
            let needed = self.copy_needed(&targets, offset, end);
            let (lock_start, lock_end, mode) = if needed.is_empty() {
                (offset, end, LockMode::Shared)
            } else {
                let widest = targets.iter().map(|s| s.chunk.bytes()).max().unwrap();
                (
                    offset / widest * widest,
                    end.div_ceil(widest) * widest,
                    LockMode::Exclusive,
                )
            };
            // Write-back room is taken before the range lock, never waited for under it.
            let room = match payload {
                Payload::Data(_) if mode == LockMode::Exclusive && merging.is_none() => {
                    self.writeback.reserve(lock_end - lock_start + len)
                }
                _ => None,
            };
            let _range = self.lock_settled(lock_start, lock_end, mode);
            // Another writer may have copied these chunks while we waited.
            let needed = self.copy_needed(&targets, offset, end);
            if !needed.is_empty() {
                if mode == LockMode::Shared {
                    continue;
                }
                if let (Some(room), Payload::Data(data)) = (room, payload) {
                    return self.hold_write(room, needed, offset, data, (lock_start, lock_end));
                }
                self.copy_out(needed);
            }
            match merging {
                None => payload.apply(&self.origin, offset, 0, len)?,
                Some(m) => self.write_while_merging(m, offset, payload)?,
            }
            return Ok(());
        }
    }

    /// An origin write during a merge: chunks still in the merging COW are written there (the
    /// merge copies them back later); the rest go to the origin. Zeroings and punches too: a
    /// punch must read zeroes, so unlike the kernel's snapshot-merge target (where a discard
    /// has no effect) it zeroes the merging chunk. The caller holds the range lock, so no merge
    /// step runs on these chunks meanwhile.
    fn write_while_merging(
        &self,
        merging: &Snapshot,
        offset: u64,
        payload: Payload,
    ) -> Result<(), VolumeError> {
        let mapping = merging.mapping(offset, offset + payload.len());
        for seg in mapping.segments {
            let dev = if seg.on_cow {
                &merging.cow
            } else {
                &self.origin
            };
            payload.apply(dev, seg.dev_offset, seg.buf_offset, seg.len)?;
        }
        Ok(())
    }

    /// For each target, the chunks of `[offset, end)` it has no exception for.
    pub(super) fn copy_needed<'a>(
        &self,
        targets: &[&'a Arc<Snapshot>],
        offset: u64,
        end: u64,
    ) -> Vec<CopyJob<'a>> {
        let mut jobs = Vec::new();
        for &snap in targets {
            if !snap.takes_copies() {
                continue;
            }
            let last = snap.chunk.chunk_of(end - 1);
            let mut c = snap.chunk.chunk_of(offset);
            let mut chunks = Vec::new();
            while c <= last {
                match snap.table.lookup_run(c) {
                    Some(m) => c += m.len,
                    None => {
                        chunks.push(c);
                        c += 1;
                    }
                }
            }
            if !chunks.is_empty() {
                jobs.push(CopyJob {
                    snap,
                    chunks,
                    prepared: None,
                    copied: true,
                });
            }
        }
        jobs
    }

    /// Copies the planned chunks into their snapshots and commits them. Failures invalidate the
    /// snapshot concerned (as the kernel does); the origin write goes ahead regardless.
    pub(super) fn copy_out(&self, mut jobs: Vec<CopyJob>) {
        for job in &mut jobs {
            match job.snap.store.prepare_exceptions(job.chunks.len()) {
                Ok(p) => job.prepared = Some(p),
                Err(StoreError::NoSpace) => job
                    .snap
                    .invalidate("unable to allocate exception: the COW device is full"),
                Err(e) => job
                    .snap
                    .invalidate(&format!("unable to allocate exception: {e}")),
            }
        }
        jobs.retain(|j| j.prepared.is_some());
        let ranges = union_of_chunks(&jobs, self.size_bytes);
        let parallel = ranges.iter().map(|(s, e)| e - s).sum::<u64>() >= PARALLEL_MIN_BYTES;
        for (start, end) in ranges {
            let mut at = start;
            while at < end {
                let n = (end - at).min(COPY_PIECE_BYTES);
                self.copy_piece(&mut jobs, at, n);
                at += n;
            }
        }
        let commit = |job: CopyJob| {
            let prepared = job.prepared.unwrap();
            let new_chunks = prepared.new_chunks.clone();
            match job
                .snap
                .store
                .commit_exceptions(prepared, &job.chunks, job.copied)
            {
                // A stale insert invalidates the snapshot; the origin write goes on, as after
                // any failure of one snapshot.
                Ok(()) => drop(job.snap.insert_committed(&job.chunks, &new_chunks)),
                Err(e) => job
                    .snap
                    .invalidate(&format!("error copying or committing an exception: {e}")),
            }
        };
        if parallel {
            run_parallel(jobs, commit);
        } else {
            jobs.into_iter().for_each(commit);
        }
    }

    /// Reads origin bytes `[at, at + n)` once and writes each job's share to its COW.
    fn copy_piece(&self, jobs: &mut [CopyJob], at: u64, n: u64) {
        let _permit = self.copies.acquire();
        let mut buf = IoBuf::new(n as usize);
        if let Err(e) = self.origin.read_at(&mut buf, at) {
            log::error!("origin read for copy-out at {at} failed: {e}");
            for job in jobs.iter_mut() {
                job.copied = false;
            }
            return;
        }
        let buf = &buf[..];
        let write = |job: &mut CopyJob| {
            let snap = job.snap;
            let new_chunks = &job.prepared.as_ref().unwrap().new_chunks;
            for (run_old, run_new, run_len) in consecutive_runs(&job.chunks, new_chunks) {
                let (s, _) = snap.chunk_range(run_old, self.size_bytes);
                let (_, e) = snap.chunk_range(run_old + run_len - 1, self.size_bytes);
                let (lo, hi) = (s.max(at), e.min(at + n));
                if lo >= hi {
                    continue;
                }
                let slice = &buf[(lo - at) as usize..(hi - at) as usize];
                let cow_at = snap.cow_offset(run_new) + (lo - s);
                if let Err(e) = snap.cow.write_at(slice, cow_at) {
                    log::error!("snapshot {}: COW write failed: {e}", snap.name);
                    job.copied = false;
                    break;
                }
            }
        };
        let live = jobs.iter_mut().filter(|j| j.copied);
        if n < PARALLEL_MIN_BYTES {
            live.for_each(write);
        } else {
            run_parallel(live.collect(), write);
        }
    }
}

/// Runs `f` on every item, on up to one scoped thread per item besides the caller's. Items are
/// taken from a shared queue that the caller works too, so every item is done even when a
/// thread cannot be started.
pub(super) fn run_parallel<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync) {
    let threads = items.len();
    run_parallel_on(threads, items, f)
}

/// [`run_parallel`] on at most `threads` threads (this one included).
pub(super) fn run_parallel_on<T: Send>(threads: usize, items: Vec<T>, f: impl Fn(T) + Sync) {
    let helpers = threads.min(items.len()).saturating_sub(1);
    let queue = parking_lot::Mutex::new(items);
    let work = || {
        loop {
            // Not `while let`: its scrutinee's guard would live through `f`, one item at a time.
            let next = queue.lock().pop();
            let Some(item) = next else { break };
            f(item);
        }
    };
    std::thread::scope(|s| {
        for _ in 0..helpers {
            if std::thread::Builder::new().spawn_scoped(s, work).is_err() {
                break;
            }
        }
        work();
    });
}

/// The origin byte ranges the jobs need, merged and sorted.
fn union_of_chunks(jobs: &[CopyJob], volume_bytes: u64) -> Vec<(u64, u64)> {
    merged_ranges(jobs.iter().flat_map(|j| {
        j.chunks
            .iter()
            .map(|&c| j.snap.chunk_range(c, volume_bytes))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn run_parallel_does_every_item_once() {
        for n in [0usize, 1, 2, 9] {
            let done = AtomicU64::new(0);
            let seen = parking_lot::Mutex::new(Vec::new());
            run_parallel((0..n).collect(), |i| {
                done.fetch_add(1, Ordering::SeqCst);
                seen.lock().push(i);
            });
            let mut seen = seen.into_inner();
            seen.sort_unstable();
            assert_eq!(seen, (0..n).collect::<Vec<_>>());
            assert_eq!(done.load(Ordering::SeqCst), n as u64);
        }
    }
}
