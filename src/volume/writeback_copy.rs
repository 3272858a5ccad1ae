//! The copy half of a write-back group: buffers, the old data's reads, and the COW writes of
//! each snapshot's share (see `writeback.rs` for the group's whole life).

use super::{Copied, Held, Inner};
use crate::device::IoBuf;
use crate::volume::Snapshot;
use crate::volume::mapping::merged_ranges;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The largest COW write of a group's copy (consecutive chunks gathered into one buffer).
const COW_WRITE_MAX_BYTES: usize = 1 << 20;

/// Runs of the COW copy smaller than this are gathered with the runs that follow them on the
/// COW (the direct I/O threshold of `FileDevice`); larger ones are written from their buffer.
const GATHER_BELOW_BYTES: usize = 64 << 10;

/// Gather buffers kept for reuse: one per snapshot copied at once by each worker, up to 8
/// snapshots (more are allocated while needed and freed).
const GATHER_BUFFERS_KEPT: usize = 16;

/// Buffers kept for reuse, by length, and their total (kept within the budget).
#[derive(Default)]
pub(super) struct BufPool {
    by_len: BTreeMap<usize, Vec<IoBuf>>,
    bytes: usize,
}

impl BufPool {
    fn take(&mut self, len: usize) -> Option<IoBuf> {
        let buf = self.by_len.get_mut(&len)?.pop()?;
        self.bytes -= len;
        Some(buf)
    }

    /// Keeps `buf` unless that would pass `limit` bytes (false: dropped).
    fn keep(&mut self, buf: IoBuf, limit: u64) -> bool {
        if (self.bytes + buf.len()) as u64 > limit {
            return false;
        }
        self.bytes += buf.len();
        self.by_len.entry(buf.len()).or_default().push(buf);
        true
    }
}

impl Inner {
    /// A buffer of `len` bytes: a pooled one if there is one of that size.
    pub(super) fn buffer(&self, len: usize) -> IoBuf {
        let taken = self.pool.lock().take(len);
        taken.unwrap_or_else(|| IoBuf::new(len))
    }

    /// Keeps retired entries' buffers for reuse, within the budget.
    pub(super) fn recycle(&self, bufs: impl Iterator<Item = IoBuf>) {
        let mut pool = self.pool.lock();
        for b in bufs {
            if !pool.keep(b, self.limit) {
                break;
            }
        }
    }

    /// Writes one snapshot's share of a group to its COW: what [`Inner::commit`] records.
    pub(super) fn copy(&self, snap: Arc<Snapshot>, list: Vec<(&[(u64, IoBuf)], Held)>) -> Copied {
        let mut copied = list.iter().all(|(_, h)| h.copied);
        let mut old_chunks = Vec::new();
        let mut new_chunks = Vec::new();
        let mut pieces: Vec<Piece> = Vec::new();
        let first_seq = list.iter().map(|(_, h)| h.prepared.first_seq).min();
        for (old, held) in &list {
            for (&c, &new) in held.chunks.iter().zip(&held.prepared.new_chunks) {
                let (start, end) = snap.chunk_range(c, self.size_bytes);
                match old
                    .iter()
                    .find(|(at, buf)| *at <= start && end <= at + buf.len() as u64)
                {
                    Some((at, buf)) => pieces.push(Piece {
                        new,
                        buf,
                        from: (start - at) as usize,
                        len: (end - start) as usize,
                    }),
                    None if copied => {
                        log::error!(
                            "snapshot {}: held old data misses {start}..{end}",
                            snap.name
                        );
                        copied = false;
                    }
                    None => {}
                }
            }
            old_chunks.extend_from_slice(&held.chunks);
            new_chunks.extend_from_slice(&held.prepared.new_chunks);
        }
        copied = copied && self.write_cow(&snap, pieces);
        Copied {
            snap,
            first_seq,
            old_chunks,
            new_chunks,
            copied,
        }
    }

    /// Writes chunks to the COW; false on an error. Chunks consecutive on the COW and together
    /// in one buffer (a large write's) go as one write from that buffer; small such runs that
    /// follow each other on the COW (4 KiB writes to scattered chunks: a group's new chunks
    /// are mostly consecutive) are gathered into one write of up to [`COW_WRITE_MAX_BYTES`].
    /// Either way a write is large enough for direct I/O, and the data skips the page cache
    /// and its write-back at the commit's flush.
    fn write_cow(&self, snap: &Snapshot, mut pieces: Vec<Piece>) -> bool {
        pieces.sort_unstable_by_key(|p| p.new);
        let chunk_bytes = snap.chunk.bytes() as usize;
        // Whether piece `i` continues the COW run of piece `i - 1`: the next COW chunk, after a
        // whole one (a short last chunk of the origin ends a run).
        let follows =
            |i: usize| pieces[i].new == pieces[i - 1].new + 1 && pieces[i - 1].len == chunk_bytes;
        // Segments: pieces that follow each other on the COW and lie together in one buffer (a
        // large held write's chunks): written straight from that buffer.
        let mut segments: Vec<(usize, usize, usize)> = Vec::new();
        for i in 0..pieces.len() {
            let together = i > 0
                && follows(i)
                && std::ptr::eq(pieces[i].buf, pieces[i - 1].buf)
                && pieces[i - 1].from + pieces[i - 1].len == pieces[i].from;
            match segments.last_mut() {
                Some((_, end, bytes)) if together => {
                    *end = i + 1;
                    *bytes += pieces[i].len;
                }
                _ => segments.push((i, i + 1, pieces[i].len)),
            }
        }
        // Runs: a large segment alone; small ones that follow each other on the COW gathered
        // into one write of up to COW_WRITE_MAX_BYTES.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        let mut gathering = false;
        for (start, end, bytes) in segments {
            let small = bytes < GATHER_BELOW_BYTES;
            match runs.last_mut() {
                Some((_, run_end, run_bytes))
                    if gathering
                        && small
                        && *run_end == start
                        && follows(start)
                        && *run_bytes + bytes <= COW_WRITE_MAX_BYTES =>
                {
                    *run_end = end;
                    *run_bytes += bytes;
                }
                _ => {
                    runs.push((start, end, bytes));
                    gathering = small;
                }
            }
        }
        for (start, end, bytes) in runs {
            if let Err(e) = self.write_run(snap, &pieces[start..end], bytes) {
                log::error!("snapshot {}: COW write failed: {e}", snap.name);
                return false;
            }
        }
        true
    }

    /// Writes a run of consecutive COW chunks (`bytes` in all) with one write.
    fn write_run(&self, snap: &Snapshot, run: &[Piece], bytes: usize) -> std::io::Result<()> {
        let first = &run[0];
        let at = snap.cow_offset(first.new);
        let together = run
            .windows(2)
            .all(|w| std::ptr::eq(w[0].buf, w[1].buf) && w[0].from + w[0].len == w[1].from);
        if together {
            return snap
                .cow
                .write_at(&first.buf[first.from..first.from + bytes], at);
        }
        // Always a whole gather buffer, of one size: buffers of the runs' many sizes, pooled
        // and freed, grew a flood's daemon by 100 MiB over an 8 MiB budget.
        let mut buf = self
            .gather
            .lock()
            .pop()
            .unwrap_or_else(|| IoBuf::new(COW_WRITE_MAX_BYTES));
        let mut to = 0;
        for p in run {
            buf[to..to + p.len].copy_from_slice(&p.buf[p.from..p.from + p.len]);
            to += p.len;
        }
        let result = snap.cow.write_at(&buf[..bytes], at);
        let mut kept = self.gather.lock();
        if kept.len() < GATHER_BUFFERS_KEPT {
            kept.push(buf);
        }
        result
    }
}

/// One chunk of a share to copy: COW chunk `new` gets `buf[from..from + len]` (old data).
struct Piece<'a> {
    new: u64,
    buf: &'a [u8],
    from: usize,
    len: usize,
}

/// Buffers for the old data of every held chunk: `(origin offset, buffer)`, sorted, disjoint.
pub(super) fn old_buffers(inner: &Inner, held: &[Held], volume_bytes: u64) -> Vec<(u64, IoBuf)> {
    chunk_ranges(held, volume_bytes)
        .into_iter()
        .map(|(start, end)| (start, inner.buffer((end - start) as usize)))
        .collect()
}

/// Reads the old data of every held chunk into `old` (from [`old_buffers`]); a failed read
/// marks the copies failed (their commit then invalidates the snapshots, and the origin write
/// goes ahead, as without write-back).
pub(super) fn read_old(inner: &Inner, held: &mut [Held], old: &mut [(u64, IoBuf)]) {
    for (start, buf) in old.iter_mut() {
        if let Err(e) = inner.origin.read_at(buf, *start) {
            log::error!("origin read for copy-out at {start} failed: {e}");
            held.iter_mut().for_each(|h| h.copied = false);
            return;
        }
    }
}

/// The origin byte ranges of every held chunk, merged and sorted.
fn chunk_ranges(held: &[Held], volume_bytes: u64) -> Vec<(u64, u64)> {
    merged_ranges(held.iter().flat_map(|h| {
        h.chunks
            .iter()
            .map(|&c| h.snap.chunk_range(c, volume_bytes))
    }))
}
