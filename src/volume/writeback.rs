//! Write-back of origin first writes (the `writeback=SIZE` mount option; docs/performance.md).
//!
//! A block device may complete a write before the write is durable: only a flush must wait for
//! it. An origin write that needs a copy-out is therefore answered once, under the exclusive
//! range lock of its chunks, the stores have allocated its exceptions and its new data is held
//! (an [`Entry`]). A worker thread (there are [`WORKERS`], so that two groups overlap) then
//! takes every entry held so far as a group: it reads the group's old data ([`OLD_READERS`]
//! reads at once), writes it to each COW in large writes of consecutive chunks, commits each
//! store once for the whole group (one pair of flushes for many writes), inserts the
//! exceptions into the tables, writes each entry's new data to the origin, and retires the
//! group's entries together.
//!
//! Invariants:
//! - An entry's footprint (its range rounded out to the widest chunk, the range its writer
//!   locked) is held until the entry is retired (its new data written to the origin device). Any
//!   write that would change bytes of a held footprint on the origin or create exceptions there
//!   waits for the retirement ([`Volume::lock_settled`]). Entries are only added under their
//!   footprint's exclusive range lock, so a thread holding a range lock that overlaps no held
//!   footprint sees none appear under it.
//! - Until an entry is retired the origin device still holds the old data of its footprint:
//!   snapshot reads served from the origin stay right, and so does the worker's copy.
//! - Origin reads lay held new data over what the device returns ([`Volume::read_overlaid`]),
//!   and every held entry counts as an origin write in progress for the read-ahead
//!   (`WriteCounts`), so reads see every acknowledged write.
//! - The origin receives an entry's new data only after every store's commit of its chunks
//!   returned: the old copy and its record are durable first, as without write-back.
//! - [`Volume::drain`] returns once every entry held when it was called is retired. Flushes
//!   (fsync, FLUSH through loop, close), snapshot creation and removal, merge start, pause and
//!   resume, status and shutdown drain first.
//! - Memory: the bytes held (old + new) never exceed the budget. A writer waits for room before
//!   it takes its range lock, never while holding one; a write that could need more than the
//!   budget takes the synchronous path. Besides: reused buffers (at most the budget's worth) and
//!   gather buffers (1 MiB each, one per snapshot being copied; at most 16 kept).
//! - An origin write that fails after its acknowledgement is counted in an error sequence (as
//!   the kernel's errseq): every file handle reports it once, at its next fsync or flush, and
//!   a handle opened after it does too until an fsync (not a close) has reported it.

use super::origin_io::{CopyJob, run_parallel, run_parallel_on};
use super::readahead::WriteCounts;
use super::{Snapshot, Volume, VolumeError};
use crate::device::{Device, IoBuf};
use crate::rangelock::{LockMode, RangeGuard, RangeLock};
use crate::store::{Prepared, StoreError};
use parking_lot::{Condvar, Mutex};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::thread::JoinHandle;

#[path = "writeback_copy.rs"]
mod copy;
use copy::{BufPool, old_buffers, read_old};

/// The budget when the mount gives none (`writeback=` in docs/cli.md).
pub const DEFAULT_WRITEBACK_BYTES: u64 = 64 << 20;

/// Worker threads. Each takes every entry queued when it looks, so with two, one group's old
/// data is read and copied while the other's commit flushes and origin writes run: groups are
/// independent (their footprints are disjoint, and a store commits batches in any order).
const WORKERS: usize = 2;

/// Held bytes (old + new) of the entries a worker retires at once after writing them to the
/// origin: one large write alone, or up to 128 writes of 4 KiB.
const RETIRE_SLICE_BYTES: u64 = 1 << 20;

/// Threads a worker reads a group's old data with: held entries are answered before their old
/// data is read, so the reads of many writes are in flight at once (a request thread waited
/// for its own read; measured in docs/performance.md).
const OLD_READERS: usize = 32;

/// One snapshot's share of an entry: the chunks it copies and where its store put them.
struct Held {
    snap: Arc<Snapshot>,
    chunks: Vec<u64>,
    prepared: Prepared,
    /// False once the old data could not be read: the commit then invalidates the store.
    copied: bool,
}

/// An acknowledged origin write waiting for its copy-out.
struct Entry {
    id: u64,
    footprint: (u64, u64),
    offset: u64,
    data: Arc<IoBuf>,
    /// Old data of the chunks to copy: `(origin offset, bytes)`, sorted, disjoint; read by the
    /// worker (empty until then).
    old: Vec<(u64, IoBuf)>,
    held: Vec<Held>,
    /// Budget taken (released at retirement).
    bytes: u64,
}

/// A snapshot's share of a group: each held job with the old data of its entry.
type Share<'a> = (Arc<Snapshot>, Vec<(&'a [(u64, IoBuf)], Held)>);

/// What readers and waiting writers see of a held entry.
struct Visible {
    footprint: (u64, u64),
    offset: u64,
    data: Arc<IoBuf>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    /// Entries not yet taken by the worker, in id order.
    queue: Vec<Entry>,
    /// Every entry acknowledged and not retired, by id.
    visible: BTreeMap<u64, Visible>,
    /// The same entries by footprint start, `(start, id)`: the requests that check for held
    /// writes over their range (every write that copies out, every origin read while anything
    /// is held) look at the few entries that can reach it, not at all of them.
    by_start: BTreeSet<(u64, u64)>,
    /// The longest footprint held so far (it never shrinks): an entry reaching `[start, end)`
    /// starts after `start - max_span`.
    max_span: u64,
    /// Budget taken: by held entries and by writers' reservations.
    bytes: u64,
    /// Origin writes failed after their acknowledgement, and the last one's error.
    errors: u64,
    /// `errors` as of the last fsync that reported one: a handle opened now starts here, so
    /// an error no fsync has reported yet reaches it (the kernel's errseq `SEEN` flag). A
    /// close reports to its caller without moving this: most programs ignore close's result.
    fsync_reported: u64,
    last_error: Option<(std::io::ErrorKind, String)>,
    stop: bool,
    /// Groups taken by the workers so far (the next group's number).
    groups_taken: u64,
}

struct Inner {
    limit: u64,
    /// Buffers of retired entries, for the next held writes and old-data reads: a fresh 1 MiB
    /// buffer costs about 0.4 ms of page faults here, as much as reading it from the device.
    /// At most the budget's worth is kept (so memory stays below twice the budget).
    pool: Mutex<BufPool>,
    /// Buffers of 1 MiB (`copy::COW_WRITE_MAX_BYTES`) that a copy gathers a run of chunks in
    /// (at most `copy::GATHER_BUFFERS_KEPT` kept, outside the budget).
    gather: Mutex<Vec<IoBuf>>,
    state: Mutex<State>,
    /// Notified when an entry is queued, retired or a reservation returned, and at stop.
    changed: Condvar,
    /// The number of the group whose commits may run now: groups commit in the order they
    /// were taken, so each COW's records follow the order its exceptions were allocated in,
    /// as the kernel writes them for writes that come one after the other.
    commit_turn: Mutex<u64>,
    turn_changed: Condvar,
    origin: Device,
    ranges: Arc<RangeLock>,
    writes: Arc<WriteCounts>,
    size_bytes: u64,
}

/// The write-back budget of a volume and its worker (none when the budget is 0).
pub(super) struct WriteBack {
    inner: Arc<Inner>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

/// Budget reserved by a writer before its range lock; returned on drop unless an entry took it.
pub(super) struct Room<'a> {
    wb: &'a WriteBack,
    bytes: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.wb.inner.state.lock().bytes -= self.bytes;
            self.wb.inner.changed.notify_all();
        }
    }
}

impl WriteBack {
    pub(super) fn new(
        limit: u64,
        origin: Device,
        ranges: Arc<RangeLock>,
        writes: Arc<WriteCounts>,
        size_bytes: u64,
    ) -> WriteBack {
        let inner = Arc::new(Inner {
            limit,
            pool: Mutex::new(BufPool::default()),
            gather: Mutex::new(Vec::new()),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            commit_turn: Mutex::new(0),
            turn_changed: Condvar::new(),
            origin,
            ranges,
            writes,
            size_bytes,
        });
        let mut workers = Vec::new();
        for i in 0..if limit > 0 { WORKERS } else { 0 } {
            let inner = inner.clone();
            match std::thread::Builder::new()
                .name(format!("snapfs-wb{i}"))
                .spawn(move || inner.run())
            {
                Ok(w) => workers.push(w),
                Err(e) => log::warn!("write-back thread {i} not started: {e}"),
            }
        }
        if limit > 0 && workers.is_empty() {
            log::warn!("no write-back thread: origin first writes stay synchronous");
        }
        WriteBack {
            inner,
            workers: Mutex::new(workers),
        }
    }

    fn enabled(&self) -> bool {
        !self.workers.lock().is_empty()
    }

    /// Reserves `bytes` of budget, waiting for room; `None` when write-back is off or `bytes`
    /// could never fit (the caller then copies out synchronously).
    pub(super) fn reserve(&self, bytes: u64) -> Option<Room<'_>> {
        if bytes > self.inner.limit || !self.enabled() {
            return None;
        }
        let mut st = self.inner.state.lock();
        while st.bytes + bytes > self.inner.limit {
            self.inner.changed.wait(&mut st);
        }
        st.bytes += bytes;
        Some(Room { wb: self, bytes })
    }

    /// Whether any acknowledged write is still held.
    pub(super) fn any_held(&self) -> bool {
        !self.inner.state.lock().visible.is_empty()
    }

    fn overlaps(st: &State, start: u64, end: u64) -> bool {
        Self::near(st, start, end).any(|(_, v)| v.footprint.0 < end && start < v.footprint.1)
    }

    /// The held entries whose footprint may reach `[start, end)` (a superset of those that
    /// do), in footprint order.
    fn near(st: &State, start: u64, end: u64) -> impl Iterator<Item = (u64, &Visible)> {
        st.by_start
            .range((start.saturating_sub(st.max_span), 0)..(end, 0))
            .map(|&(_, id)| (id, &st.visible[&id]))
    }

    /// Waits until no held footprint overlaps `[start, end)`.
    fn wait_clear(&self, start: u64, end: u64) {
        let mut st = self.inner.state.lock();
        while Self::overlaps(&st, start, end) {
            self.inner.changed.wait(&mut st);
        }
    }

    /// Waits until every entry acknowledged before the call is retired.
    pub(super) fn drain(&self) {
        let mut st = self.inner.state.lock();
        let target = st.next_id;
        while st.visible.keys().next().is_some_and(|&id| id < target) {
            self.inner.changed.wait(&mut st);
        }
    }

    /// Where a handle opened now starts in the error sequence (how many origin writes failed
    /// after their acknowledgement): before every error no fsync has reported yet.
    pub(super) fn error_seq(&self) -> u64 {
        self.inner.state.lock().fsync_reported
    }

    /// The error to report to a handle that has seen `seen` errors so far (and the new count).
    /// `fsync`: an fsync reports it (handles opened later start past it), not a close.
    pub(super) fn error_since(&self, seen: u64, fsync: bool) -> Option<(u64, std::io::Error)> {
        let mut st = self.inner.state.lock();
        if st.errors == seen {
            return None;
        }
        if fsync {
            st.fsync_reported = st.errors;
        }
        let (kind, msg) = st.last_error.clone()?;
        Some((
            st.errors,
            std::io::Error::new(kind, format!("an acknowledged origin write failed: {msg}")),
        ))
    }

    fn push(&self, mut room: Room, mut entry: Entry) {
        let mut st = self.inner.state.lock();
        debug_assert_eq!(room.bytes, entry.bytes);
        room.bytes = 0;
        entry.id = st.next_id;
        st.next_id += 1;
        // Counted as an origin write in progress until retired: the read-ahead neither starts
        // nor serves what it read before (readahead.rs).
        self.inner.writes.begin();
        let (start, end) = entry.footprint;
        st.by_start.insert((start, entry.id));
        st.max_span = st.max_span.max(end - start);
        st.visible.insert(
            entry.id,
            Visible {
                footprint: entry.footprint,
                offset: entry.offset,
                data: entry.data.clone(),
            },
        );
        st.queue.push(entry);
        self.inner.changed.notify_all();
    }
}

impl Drop for WriteBack {
    /// Everything acknowledged reaches the devices before the volume goes.
    fn drop(&mut self) {
        self.inner.state.lock().stop = true;
        self.inner.changed.notify_all();
        for worker in self.workers.get_mut().drain(..) {
            let _ = worker.join();
        }
    }
}

/// One snapshot's share of a group, copied to its COW and waiting for its commit.
struct Copied {
    snap: Arc<Snapshot>,
    first_seq: Option<u64>,
    old_chunks: Vec<u64>,
    new_chunks: Vec<u64>,
    copied: bool,
}

/// A group's turn to commit: waits until every group taken before it has committed, and
/// passes the turn on when dropped (also if the commits panic, so later groups never wait
/// forever).
struct CommitTurn<'a> {
    inner: &'a Inner,
}

impl<'a> CommitTurn<'a> {
    fn wait(inner: &'a Inner, number: u64) -> CommitTurn<'a> {
        let mut turn = inner.commit_turn.lock();
        while *turn != number {
            inner.turn_changed.wait(&mut turn);
        }
        CommitTurn { inner }
    }
}

impl Drop for CommitTurn<'_> {
    fn drop(&mut self) {
        *self.inner.commit_turn.lock() += 1;
        self.inner.turn_changed.notify_all();
    }
}

impl Inner {
    fn run(&self) {
        loop {
            let group = {
                let mut st = self.state.lock();
                while st.queue.is_empty() && !st.stop {
                    self.changed.wait(&mut st);
                }
                if st.queue.is_empty() {
                    return;
                }
                st.groups_taken += 1;
                (st.groups_taken - 1, std::mem::take(&mut st.queue))
            };
            self.write_group(group.0, group.1);
        }
    }

    /// Reads a group's old data, copies and commits its chunks for every snapshot, then writes
    /// the new data to the origin and retires the entries.
    fn write_group(&self, number: u64, mut group: Vec<Entry>) {
        // Buffers are taken here, by the worker, and only filled by the reader threads: memory
        // allocated by a short-lived thread lands in an allocator arena of its own, and a
        // flood of first writes then grew the daemon by several budgets.
        let reads: Vec<(&mut Entry, Vec<(u64, IoBuf)>)> = group
            .iter_mut()
            .map(|e| {
                let bufs = old_buffers(self, &e.held, self.size_bytes);
                (e, bufs)
            })
            .collect();
        run_parallel_on(OLD_READERS, reads, |(entry, mut bufs)| {
            read_old(self, &mut entry.held, &mut bufs);
            entry.old = bufs;
        });
        let helds: Vec<(usize, Held)> = group
            .iter_mut()
            .enumerate()
            .flat_map(|(i, e)| e.held.drain(..).map(move |h| (i, h)))
            .collect();
        let mut shares: Vec<Share> = Vec::new();
        for (i, held) in helds {
            let old = &group[i].old[..];
            match shares.iter_mut().find(|(s, _)| Arc::ptr_eq(s, &held.snap)) {
                Some((_, list)) => list.push((old, held)),
                None => shares.push((held.snap.clone(), vec![(old, held)])),
            }
        }
        // Snapshots are independent (a commit waits only for its own store): up to one thread
        // each besides this one, so N stores' flushes overlap. A thread that cannot start
        // leaves its share to the others, never undone: the origin writes below must follow
        // every share's commit.
        let copied: Vec<Copied> = {
            let out = Mutex::new(Vec::new());
            run_parallel(shares, |(snap, list)| {
                let done = self.copy(snap, list);
                out.lock().push(done);
            });
            out.into_inner()
        };
        {
            let _turn = CommitTurn::wait(self, number);
            run_parallel(copied, |done| self.commit(done));
        }
        // Retired a slice at a time: one pass under the state lock and one wake-up of the
        // writers waiting for room or for these footprints per slice, not per entry (a group of
        // thousands of 4 KiB writes woke every waiting writer thousands of times), while the
        // room of large writes still comes back as each is written.
        // (Taken from one iterator: draining each slice off the front of the group moved the
        // rest of it every time.)
        let mut entries = group.into_iter().peekable();
        while entries.peek().is_some() {
            let mut bytes = 0;
            let mut slice = Vec::new();
            while let Some(entry) = entries.next_if(|e| {
                let first = bytes == 0;
                bytes += e.bytes;
                first || bytes <= RETIRE_SLICE_BYTES
            }) {
                slice.push(entry);
            }
            let results = slice
                .iter()
                .map(|entry| {
                    let (start, end) = entry.footprint;
                    let _range = self.ranges.lock(start, end, LockMode::Exclusive);
                    self.origin.write_at(&entry.data, entry.offset)
                })
                .collect();
            self.retire(&slice, results);
            let mut spare = Vec::with_capacity(slice.len() * 2);
            for mut entry in slice {
                spare.extend(std::mem::take(&mut entry.old).into_iter().map(|(_, b)| b));
                // The data buffer is shared with readers' view until retired; usually free now.
                spare.extend(Arc::try_unwrap(entry.data).ok());
            }
            self.recycle(spare.into_iter());
        }
    }

    /// Retires `entries` (their origin writes returned `results`): no longer held.
    fn retire(&self, entries: &[Entry], results: Vec<std::io::Result<()>>) {
        let mut st = self.state.lock();
        for (entry, result) in entries.iter().zip(results) {
            if let Err(e) = result {
                log::error!(
                    "origin write {}+{} failed after its acknowledgement: {e}; reported at the next fsync",
                    entry.offset,
                    entry.data.len()
                );
                st.errors += 1;
                st.last_error = Some((e.kind(), e.to_string()));
            }
            st.visible.remove(&entry.id);
            st.by_start.remove(&(entry.footprint.0, entry.id));
            st.bytes -= entry.bytes;
            self.writes.end();
        }
        self.changed.notify_all();
    }

    /// Commits one snapshot's share of a group as one batch. A failed write or commit
    /// invalidates the snapshot, as a synchronous copy-out does; the origin writes go ahead
    /// regardless.
    fn commit(&self, done: Copied) {
        let Copied {
            snap,
            first_seq,
            old_chunks,
            new_chunks,
            copied,
        } = done;
        let Some(first_seq) = first_seq else { return };
        // One batch for the group: several allocations, each unique, committed together (the
        // records are independent; the batch id only has to be unique in the store).
        let prepared = Prepared {
            first_seq,
            new_chunks: new_chunks.clone(),
        };
        match snap.store.commit_exceptions(prepared, &old_chunks, copied) {
            Ok(()) => {
                for (&old, &new) in old_chunks.iter().zip(&new_chunks) {
                    let fresh = snap.table.insert(old, new);
                    debug_assert!(fresh, "a chunk was copied twice");
                }
            }
            Err(e) => snap.invalidate(&format!("error copying or committing an exception: {e}")),
        }
    }
}

impl Volume {
    /// [`RangeLock::lock`], once no held write-back entry overlaps the range: what every path
    /// that changes origin bytes, or creates exceptions over them, locks with.
    pub(super) fn lock_settled(&self, start: u64, end: u64, mode: LockMode) -> RangeGuard<'_> {
        loop {
            let guard = self.ranges.lock(start, end, mode);
            if !WriteBack::overlaps(&self.writeback.inner.state.lock(), start, end) {
                return guard;
            }
            drop(guard);
            self.writeback.wait_clear(start, end);
        }
    }

    /// Holds an origin write that needs the copy-outs `jobs` and answers it: the stores
    /// allocate now (a full COW invalidates its snapshot now, as without write-back); the worker
    /// does the rest. The caller holds `footprint` exclusively.
    pub(super) fn hold_write(
        &self,
        room: Room,
        jobs: Vec<CopyJob>,
        offset: u64,
        data: &[u8],
        footprint: (u64, u64),
    ) -> Result<(), VolumeError> {
        let mut held = Vec::new();
        for job in jobs {
            let (snap, chunks) = job.parts();
            match snap.store.prepare_exceptions(chunks.len()) {
                Ok(prepared) => held.push(Held {
                    snap: snap.clone(),
                    chunks,
                    prepared,
                    copied: true,
                }),
                Err(StoreError::NoSpace) => {
                    snap.invalidate("unable to allocate exception: the COW device is full")
                }
                Err(e) => snap.invalidate(&format!("unable to allocate exception: {e}")),
            }
        }
        if held.is_empty() {
            // Nothing to copy any more (every target failed): a plain write.
            return Ok(self.origin.write_at(data, offset)?);
        }
        // Near its end a store may allocate a chunk whose commit must fail (an area that would
        // lie past the end: see `PersistentStore`); the allocation shows it as usage beyond the
        // COW. Such a write is copied out before its answer, so that the invalidation is seen
        // with the answer, as without write-back (and in the kernel).
        if held.iter().any(|h| {
            let u = h.snap.usage();
            u.allocated_sectors > u.total_sectors
        }) {
            // The writes held before this one commit first, so the records keep the order of
            // their allocations (the worker takes no range lock that overlaps this one's, and
            // never the snapshot list).
            self.writeback.drain();
            let inner = &self.writeback.inner;
            let mut old = old_buffers(inner, &held, self.size_bytes);
            read_old(inner, &mut held, &mut old);
            for h in held {
                let snap = h.snap.clone();
                inner.commit(inner.copy(snap, vec![(&old[..], h)]));
            }
            drop(room);
            return Ok(self.origin.write_at(data, offset)?);
        }
        // The old data is left to the worker, which reads a whole group's at once: the origin
        // keeps those bytes until the worker itself writes them (the footprint is held).
        let inner = &self.writeback.inner;
        let mut new = inner.buffer(data.len());
        new.copy_from_slice(data);
        let bytes = room.bytes;
        self.writeback.push(
            room,
            Entry {
                id: 0,
                footprint,
                offset,
                data: Arc::new(new),
                old: Vec::new(),
                held,
                bytes,
            },
        );
        Ok(())
    }

    /// Reads the origin device with every held write laid over it.
    pub(super) fn read_overlaid(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        let wb = &self.writeback.inner;
        loop {
            let before: Vec<u64> = {
                let st = wb.state.lock();
                WriteBack::near(&st, offset, end)
                    .filter(|(_, v)| v.offset < end && offset < v.offset + v.data.len() as u64)
                    .map(|(id, _)| id)
                    .collect()
            };
            self.origin.read_at(buf, offset)?;
            if before.is_empty() {
                // Nothing acknowledged was held when the read began.
                return Ok(());
            }
            let st = wb.state.lock();
            if before.iter().any(|id| !st.visible.contains_key(id)) {
                // Retired meanwhile: on the device now, perhaps after the read. Read again.
                continue;
            }
            // The held data lies inside its footprint, so `near` finds every entry to lay;
            // laid in answer order (footprints are disjoint, but the order costs nothing).
            let mut near: Vec<(u64, &Visible)> = WriteBack::near(&st, offset, end).collect();
            near.sort_unstable_by_key(|&(id, _)| id);
            for (_, v) in near {
                let (vs, ve) = (v.offset, v.offset + v.data.len() as u64);
                let (lo, hi) = (vs.max(offset), ve.min(end));
                if lo < hi {
                    buf[(lo - offset) as usize..(hi - offset) as usize]
                        .copy_from_slice(&v.data[(lo - vs) as usize..(hi - vs) as usize]);
                }
            }
            return Ok(());
        }
    }

    /// Waits until every origin write acknowledged before the call has reached the devices.
    pub fn drain(&self) {
        self.writeback.drain();
    }

    /// Where a file handle opened now starts in the error sequence (origin writes that failed
    /// after their acknowledgement): it passes it to [`Volume::sync_origin`]. An error that no
    /// fsync has reported yet is still ahead of it, as with the kernel's errseq.
    pub fn origin_error_seq(&self) -> u64 {
        self.writeback.error_seq()
    }

    /// fsync of one origin handle: drains, flushes the origin, and reports an error once per
    /// handle for acknowledged writes that failed since `seen` (updated), as the kernel's page
    /// cache does.
    pub fn sync_origin(&self, seen: &mut u64) -> Result<(), VolumeError> {
        self.sync_origin_as(seen, true)
    }

    /// A writer's close, or an fsync of the mount's directory: as [`Volume::sync_origin`], but
    /// an error it reports stays pending for handles opened later (a close's result is commonly
    /// ignored; `sync FILE` must still see it).
    pub fn sync_origin_keeping(&self, seen: &mut u64) -> Result<(), VolumeError> {
        self.sync_origin_as(seen, false)
    }

    fn sync_origin_as(&self, seen: &mut u64, fsync: bool) -> Result<(), VolumeError> {
        self.drain();
        self.flush_origin_device()?;
        match self.writeback.error_since(*seen, fsync) {
            Some((now, e)) => {
                *seen = now;
                Err(VolumeError::Io(e))
            }
            None => Ok(()),
        }
    }
}
