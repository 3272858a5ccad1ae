//! The stores' share of the invariants in docs/ARCHITECTURE.md, checked in release builds
//! (see `crate::invariant` for what a broken one does, and why).
//!
//! One record check serves both directions: the loader refuses a COW holding a record that
//! fails it (input: an error), and a commit panics before queueing one (a bug: nothing of it
//! reaches the area).

use super::StoreError;
use super::format::{Record, is_area_chunk};
use crate::invariant::{self, ALLOCATED_NOT_METADATA, COMMITTED_BELOW_NEXT_FREE, RECORDS_VALID};
use crate::units::ChunkSize;

/// Chunk numbers must fit the kernel's 56-bit in-memory field (the top 8 bits count runs).
pub(super) const CHUNK_NUMBER_LIMIT: u64 = 1 << 56;

/// What a valid record may point at: data chunks of a COW of `cow_chunks` chunks, chunks of an
/// origin of `origin_chunks` chunks.
#[derive(Clone, Copy, Debug)]
pub(super) struct RecordBounds {
    pub(super) chunk: ChunkSize,
    pub(super) cow_chunks: u64,
    pub(super) origin_chunks: u64,
}

/// Why `r` is not a valid record, or `None` when it is.
pub(super) fn record_fault(r: &Record, bounds: &RecordBounds) -> Option<&'static str> {
    if r.new_chunk >= CHUNK_NUMBER_LIMIT {
        Some("has a COW chunk beyond 2^56")
    } else if r.new_chunk == 0 || is_area_chunk(bounds.chunk, r.new_chunk) {
        Some("points at a metadata chunk")
    } else if r.new_chunk >= bounds.cow_chunks {
        Some("points beyond the end of the COW")
    } else if r.old_chunk >= bounds.origin_chunks {
        Some("names an origin chunk beyond the end of the origin")
    } else {
        None
    }
}

/// Fails when two exceptions share a key (sorting a copy of the keys: O(n log n), 8 bytes each).
pub(super) fn unique(
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

/// Panics unless every record about to be queued for an area write is valid.
pub(super) fn records_valid(records: &[Record], bounds: &RecordBounds) {
    for r in records {
        if let Some(why) = record_fault(r, bounds) {
            invariant::broken(
                RECORDS_VALID,
                format_args!(
                    "the record of origin chunk {} in COW chunk {} {why} ({bounds:?})",
                    r.old_chunk, r.new_chunk
                ),
            );
        }
    }
}

/// Panics when allocation handed out the header or a metadata area.
pub(super) fn allocated_not_metadata(chunk: ChunkSize, new_chunks: &[u64]) {
    if let Some(c) = new_chunks
        .iter()
        .find(|&&c| c == 0 || is_area_chunk(chunk, c))
    {
        invariant::broken(
            ALLOCATED_NOT_METADATA,
            format_args!("chunk {c} was allocated (chunk size {chunk})"),
        );
    }
}

/// Panics when a commit names a chunk at or above `next_free` (in chunks): one that was never
/// allocated.
pub(super) fn committed_below_next_free(next_free: u64, new_chunks: &[u64]) {
    if let Some(c) = new_chunks.iter().find(|&&c| c >= next_free) {
        invariant::broken(
            COMMITTED_BELOW_NEXT_FREE,
            format_args!("chunk {c} is committed, next_free is {next_free}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::format::area_chunk;

    fn cs8() -> ChunkSize {
        ChunkSize::new(8, &[512]).unwrap()
    }

    fn bounds() -> RecordBounds {
        RecordBounds {
            chunk: cs8(),
            cow_chunks: 1000,
            origin_chunks: 100,
        }
    }

    fn record(old_chunk: u64, new_chunk: u64) -> Record {
        Record {
            old_chunk,
            new_chunk,
        }
    }

    #[test]
    fn record_faults_name_what_is_wrong() {
        let b = bounds();
        let area1 = area_chunk(cs8(), 1);
        assert_eq!(record_fault(&record(5, 2), &b), None);
        assert_eq!(record_fault(&record(99, 999), &b), None);
        for (r, why) in [
            (record(5, 0), "points at a metadata chunk"),
            (record(5, 1), "points at a metadata chunk"),
            (record(5, area1), "points at a metadata chunk"),
            (record(5, 1000), "points beyond the end of the COW"),
            (
                record(100, 2),
                "names an origin chunk beyond the end of the origin",
            ),
            (record(5, CHUNK_NUMBER_LIMIT), "has a COW chunk beyond 2^56"),
        ] {
            assert_eq!(record_fault(&r, &b), Some(why), "{r:?}");
        }
    }

    #[test]
    fn valid_records_and_allocations_pass() {
        records_valid(&[record(0, 2), record(99, 999)], &bounds());
        allocated_not_metadata(cs8(), &[2, 3, area_chunk(cs8(), 1) + 1]);
        committed_below_next_free(10, &[2, 9]);
    }

    #[test]
    #[should_panic(
        expected = "snapfs invariant broken: records are valid before an area is written: \
                    the record of origin chunk 100 in COW chunk 2 names an origin chunk"
    )]
    fn an_invalid_record_stops_the_write() {
        records_valid(&[record(1, 3), record(100, 2)], &bounds());
    }

    #[test]
    #[should_panic(
        expected = "snapfs invariant broken: no allocated chunk is a metadata area: chunk 258"
    )]
    fn an_allocated_area_stops_the_allocation() {
        // Chunk size 8 sectors: 256 records an area, so area 1 is chunk 1 + 257.
        assert_eq!(area_chunk(cs8(), 1), 258);
        allocated_not_metadata(cs8(), &[256, 257, 258]);
    }

    #[test]
    #[should_panic(expected = "no allocated chunk is a metadata area: chunk 0")]
    fn an_allocated_header_stops_the_allocation() {
        allocated_not_metadata(cs8(), &[0]);
    }

    #[test]
    #[should_panic(
        expected = "snapfs invariant broken: committed chunks are below next_free: \
                               chunk 10 is committed, next_free is 10"
    )]
    fn a_chunk_never_allocated_stops_the_commit() {
        committed_below_next_free(10, &[9, 10]);
    }

    /// The checks in place: a commit naming a chunk the store never allocated, or one that
    /// would write an invalid record, panics before anything reaches the COW, and leaves the
    /// store as it was.
    #[test]
    fn a_forged_commit_panics_and_writes_nothing() {
        use crate::device::MemDevice;
        use crate::store::{ExceptionStore, OriginGeometry, PersistentStore, Prepared};
        use std::panic::{AssertUnwindSafe, catch_unwind};
        use std::sync::Arc;
        let dev = Arc::new(MemDevice::new("cow", 64 * 4096));
        let origin = OriginGeometry {
            size_bytes: 100 * 4096,
            block_bytes: 512,
        };
        let mut st = PersistentStore::new(dev.clone(), false, 8, origin, false);
        st.read_metadata().unwrap();
        st.initialise().unwrap();
        let p = st.prepare_exceptions(2).unwrap();
        assert_eq!(p.new_chunks, [2, 3]);
        st.commit_exceptions(p, &[5, 6], true).unwrap();
        let image = dev.contents();
        let forged = |new_chunks: Vec<u64>, old: u64| {
            let prepared = Prepared {
                first_seq: 99,
                new_chunks,
            };
            let result = catch_unwind(AssertUnwindSafe(|| {
                st.commit_exceptions(prepared, &[old], true)
            }));
            let payload = result.expect_err("the commit must panic");
            payload.downcast_ref::<String>().cloned().unwrap()
        };
        let why = forged(vec![4], 7);
        assert!(why.contains(COMMITTED_BELOW_NEXT_FREE), "{why}");
        let why = forged(vec![1], 7);
        assert!(
            why.contains(RECORDS_VALID) && why.contains("metadata chunk"),
            "{why}"
        );
        let why = forged(vec![3], 100);
        assert!(
            why.contains(RECORDS_VALID) && why.contains("origin chunk"),
            "{why}"
        );
        assert!(dev.contents() == image, "nothing was written");
        let p = st.prepare_exceptions(1).unwrap();
        assert_eq!(p.new_chunks, [4]);
        st.commit_exceptions(p, &[7], true).unwrap();
    }
}
