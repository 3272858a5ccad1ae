//! The mapping of a snapshot: which bytes of a range are in its COW (chunks with an exception)
//! and which are still on the origin. The origin path (reads and writes during a merge), the
//! snapshot path and the merge all stand on it; none of them borrows from another.
//!
//! - [`Snapshot::mapping`] maps a byte range through the table into [`Segment`]s.
//! - [`read_mapped`] reads a snapshot's content under the range lock that keeps origin writes
//!   from changing the origin bytes it reads; [`SnapshotReader`] is the same read for the
//!   snapshot read-aheads.
//! - [`read_segments`] reads segments of two devices with few requests.
//! - [`consecutive_runs`] groups new exceptions into runs to copy with one request each.

use super::Snapshot;
use super::readahead::Source;
use crate::device::{Device, IoBuf};
use crate::rangelock::{LockMode, RangeLock};
use std::sync::Arc;

/// Segments of one device at most this far apart are read as one span.
const SPAN_GAP_MAX: u64 = 64 << 10;
/// Largest span read at once.
const SPAN_BYTES_MAX: u64 = 4 << 20;

/// A piece of a request: `len` bytes at `buf_offset` in the request, at `dev_offset` on the COW
/// (`on_cow`) or on the origin.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub(super) on_cow: bool,
    pub(super) dev_offset: u64,
    pub(super) buf_offset: u64,
    pub(super) len: u64,
}

/// How a request over `[offset, end)` maps: its segments in request order (adjacent ones of
/// one device joined), and the chunks without exception (`missing`, ascending), whose segments
/// are on the origin.
pub(super) struct Mapping {
    pub(super) segments: Vec<Segment>,
    pub(super) missing: Vec<u64>,
}

impl Mapping {
    pub(super) fn touches_origin(&self) -> bool {
        !self.missing.is_empty()
    }
}

impl Snapshot {
    /// Maps `[offset, end)` (non-empty) through the snapshot's table. The answer holds only as
    /// long as no exception is added or merged over the range: callers that act on it hold the
    /// range lock, or map again once they do.
    pub(super) fn mapping(&self, offset: u64, end: u64) -> Mapping {
        let cs = self.chunk;
        let mut mapping = Mapping {
            segments: Vec::new(),
            missing: Vec::new(),
        };
        let mut push = |seg: Segment| match mapping.segments.last_mut() {
            Some(last)
                if last.on_cow == seg.on_cow
                    && last.dev_offset + last.len == seg.dev_offset
                    && last.buf_offset + last.len == seg.buf_offset =>
            {
                last.len += seg.len
            }
            _ => mapping.segments.push(seg),
        };
        let last = cs.chunk_of(end - 1);
        let mut c = cs.chunk_of(offset);
        while c <= last {
            let (found, run_len) = match self.table.lookup_run(c) {
                Some(m) => (Some(m.new), m.len.min(last - c + 1)),
                None => (None, 1),
            };
            let lo = cs.start_of(c).max(offset);
            let hi = cs.start_of(c + run_len).min(end);
            let seg = match found {
                Some(new) => Segment {
                    on_cow: true,
                    dev_offset: self.cow_offset(new) + (lo - cs.start_of(c)),
                    buf_offset: lo - offset,
                    len: hi - lo,
                },
                None => {
                    mapping.missing.push(c);
                    Segment {
                        on_cow: false,
                        dev_offset: lo,
                        buf_offset: lo - offset,
                        len: hi - lo,
                    }
                }
            };
            push(seg);
            c += run_len;
        }
        mapping
    }
}

/// A snapshot's content, read as [`super::Volume::read_snapshot`] reads it: what snapshot
/// read-aheads run on their helper threads (they hold these pieces, never the volume).
pub(super) struct SnapshotReader {
    pub(super) origin: Device,
    pub(super) ranges: Arc<RangeLock>,
    pub(super) snap: Arc<Snapshot>,
}

impl Source for SnapshotReader {
    fn fill(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        read_mapped(&self.origin, &self.ranges, &self.snap, offset, buf)
    }
}

/// Reads `buf.len()` bytes of `snap` at `offset` (range checked by the caller): COW where a
/// chunk has an exception, origin elsewhere.
pub(super) fn read_mapped(
    origin: &Device,
    ranges: &RangeLock,
    snap: &Snapshot,
    offset: u64,
    buf: &mut [u8],
) -> std::io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let end = offset + buf.len() as u64;
    let mut mapping = snap.mapping(offset, end);
    // Origin bytes are read under a shared lock so that no origin write can change them before
    // their copy-out (it needs the range exclusively).
    let _shared = if mapping.touches_origin() {
        let guard = ranges.lock(offset, end, LockMode::Shared);
        mapping = snap.mapping(offset, end);
        Some(guard)
    } else {
        None
    };
    read_segments(origin, &snap.cow, &mapping.segments, buf)
}

/// Reads the segments of a mapping into `buf`. Segments of one device that lie close together
/// (a snapshot read over interleaved chunks: half in the COW, half on the origin, say) are
/// read with one request per span and copied out, instead of one small synchronous request
/// each; the gaps read along are at most [`SPAN_GAP_MAX`] bytes.
pub(super) fn read_segments(
    origin: &Device,
    cow: &Device,
    segments: &[Segment],
    buf: &mut [u8],
) -> std::io::Result<()> {
    for on_cow in [true, false] {
        let dev = if on_cow { cow } else { origin };
        let mut segs: Vec<&Segment> = segments.iter().filter(|s| s.on_cow == on_cow).collect();
        segs.sort_unstable_by_key(|s| s.dev_offset);
        let mut i = 0;
        while i < segs.len() {
            let start = segs[i].dev_offset;
            let mut end = start + segs[i].len;
            let mut j = i + 1;
            while j < segs.len()
                && segs[j].dev_offset >= end
                && segs[j].dev_offset - end <= SPAN_GAP_MAX
                && segs[j].dev_offset + segs[j].len - start <= SPAN_BYTES_MAX
            {
                end = segs[j].dev_offset + segs[j].len;
                j += 1;
            }
            if j == i + 1 {
                let seg = segs[i];
                let range = seg.buf_offset as usize..(seg.buf_offset + seg.len) as usize;
                dev.read_at(&mut buf[range], seg.dev_offset)?;
            } else {
                let mut span = IoBuf::new((end - start) as usize);
                dev.read_at(&mut span, start)?;
                for seg in &segs[i..j] {
                    let from = (seg.dev_offset - start) as usize;
                    let range = seg.buf_offset as usize..(seg.buf_offset + seg.len) as usize;
                    buf[range].copy_from_slice(&span[from..from + seg.len as usize]);
                }
            }
            i = j;
        }
    }
    Ok(())
}

/// Runs of `(old, new)` pairs consecutive in both numbers: `(first old, first new, length)`.
pub(super) fn consecutive_runs(olds: &[u64], news: &[u64]) -> Vec<(u64, u64, u64)> {
    let mut runs: Vec<(u64, u64, u64)> = Vec::new();
    for (&o, &n) in olds.iter().zip(news) {
        match runs.last_mut() {
            Some((ro, rn, len)) if *ro + *len == o && *rn + *len == n => *len += 1,
            _ => runs.push((o, n, 1)),
        }
    }
    runs
}

/// Byte ranges `(start, end)`, sorted, with overlapping and touching ones merged: the origin
/// spans a group of copy-outs must read.
pub(super) fn merged_ranges(ranges: impl Iterator<Item = (u64, u64)>) -> Vec<(u64, u64)> {
    let mut ranges: Vec<(u64, u64)> = ranges.collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in ranges {
        match merged.last_mut() {
            Some((_, me)) if s <= *me => *me = (*me).max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}
