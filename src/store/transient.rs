//! The transient exception store (`N`): no metadata, nothing survives the mount.
//!
//! Allocation starts at COW chunk 0 and goes up one chunk at a time; `next_free` is kept in
//! sectors as the kernel keeps it, so `usage()` prints the same figures (`<next_free>/<size> 0`).
//! Commits need no I/O.
//!
//! The kernel has no merge operations for this store; snapfs has, served from memory, so that
//! the volume merges every store the same way: the store keeps, for each allocated COW chunk,
//! the origin chunk committed into it (8 bytes an allocated chunk), and offers runs from the
//! highest COW chunk down (the newest first, the kernel's tail-first order). Nothing of a merge
//! survives the mount, so the merge cannot pause or resume (`merge_resumable` is false): the
//! volume finishes it before it stops.

use super::checks;
use super::{ExceptionStore, Loaded, MergeRun, Prepared, StoreError, StoreKind, Usage, probe};
use crate::device::Device;
use crate::units::{ChunkSize, ChunkSizeError, SECTOR_BYTES};
use parking_lot::Mutex;

/// `origin_of` entry of a chunk allocated and not (yet) committed.
const UNCOMMITTED: u64 = u64::MAX;

/// Longest run one merge step takes: a run holds its origin range locked while it is copied
/// back, and the table's runs (what this store's merges used to follow) are at most this long.
const MERGE_RUN_MAX: u64 = 256;

struct State {
    valid: bool,
    next_free_sectors: u64,
    next_seq: u64,
    /// `origin_of[new]`: the origin chunk committed into COW chunk `new`, or [`UNCOMMITTED`].
    /// Chunks are allocated upwards from 0, so the vector is dense; merged chunks are cut off
    /// its end (and never allocated again: a merging snapshot takes no new exceptions).
    origin_of: Vec<u64>,
}

pub struct TransientStore {
    cow: Device,
    chunk: ChunkSize,
    state: Mutex<State>,
}

impl TransientStore {
    /// `chunk_sectors` must be given (the kernel refuses `N 0`: "Chunk size not set").
    pub fn new(
        cow: Device,
        chunk_sectors: u64,
        origin_block_bytes: u32,
    ) -> Result<TransientStore, StoreError> {
        if chunk_sectors == 0 {
            return Err(StoreError::ChunkSize(ChunkSizeError::Zero));
        }
        let chunk = ChunkSize::new(
            chunk_sectors,
            &[cow.logical_block_size(), origin_block_bytes],
        )?;
        Ok(TransientStore {
            cow,
            chunk,
            state: Mutex::new(State {
                valid: true,
                next_free_sectors: 0,
                next_seq: 0,
                origin_of: Vec::new(),
            }),
        })
    }
}

impl ExceptionStore for TransientStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Transient
    }

    fn chunk_size(&self) -> ChunkSize {
        self.chunk
    }

    fn read_metadata(&mut self) -> Result<Loaded, StoreError> {
        Ok(Loaded::Valid(Vec::new()))
    }

    fn prepare_exceptions(&self, count: usize) -> Result<Prepared, StoreError> {
        let cow_sectors = self.cow.size_bytes() / SECTOR_BYTES;
        let cs = self.chunk.sectors();
        let mut st = self.state.lock();
        if !st.valid {
            return Err(StoreError::Invalid);
        }
        let needed = cs.saturating_mul(count as u64);
        if cow_sectors < st.next_free_sectors.saturating_add(needed) {
            return Err(StoreError::NoSpace);
        }
        let first = st.next_free_sectors / cs;
        st.next_free_sectors += needed;
        st.origin_of
            .resize((first + count as u64) as usize, UNCOMMITTED);
        let first_seq = st.next_seq;
        st.next_seq += count as u64;
        Ok(Prepared {
            first_seq,
            new_chunks: (first..first + count as u64).collect(),
        })
    }

    fn commit_exceptions(
        &self,
        prepared: Prepared,
        old_chunks: &[u64],
        copied: bool,
    ) -> Result<(), StoreError> {
        assert_eq!(prepared.new_chunks.len(), old_chunks.len());
        let mut st = self.state.lock();
        let next_free = st.next_free_sectors / self.chunk.sectors();
        checks::committed_below_next_free(next_free, &prepared.new_chunks);
        if !copied || !st.valid {
            st.valid = false;
            return Err(StoreError::Invalid);
        }
        for (&old, &new) in old_chunks.iter().zip(&prepared.new_chunks) {
            if st.origin_of.len() <= new as usize {
                st.origin_of.resize(new as usize + 1, UNCOMMITTED);
            }
            st.origin_of[new as usize] = old;
        }
        Ok(())
    }

    fn prepare_merge(&self) -> Result<Option<MergeRun>, StoreError> {
        let mut st = self.state.lock();
        if !st.valid {
            return Err(StoreError::Invalid);
        }
        // Chunks allocated for a batch that never committed hold nothing to merge.
        while st.origin_of.last() == Some(&UNCOMMITTED) {
            st.origin_of.pop();
        }
        let Some(&last_old) = st.origin_of.last() else {
            return Ok(None);
        };
        let last_new = st.origin_of.len() as u64 - 1;
        let mut count = 1;
        while count < MERGE_RUN_MAX.min(last_new + 1)
            && last_old >= count
            && st.origin_of[(last_new - count) as usize] == last_old - count
        {
            count += 1;
        }
        Ok(Some(MergeRun {
            last_old,
            last_new,
            count,
        }))
    }

    fn commit_merge(&self, count: u64) -> Result<(), StoreError> {
        let mut st = self.state.lock();
        if !st.valid {
            return Err(StoreError::Invalid);
        }
        let len = st.origin_of.len() as u64;
        assert!(count <= len, "commit_merge beyond the records in memory");
        st.origin_of.truncate((len - count) as usize);
        Ok(())
    }

    fn drop_snapshot(&self) {
        let mut st = self.state.lock();
        st.valid = false;
        // An invalid snapshot never merges: the list is of no more use.
        st.origin_of = Vec::new();
    }

    fn end(&self) -> std::io::Result<()> {
        probe::wipe(&self.cow, self.chunk.bytes())
    }

    fn usage(&self) -> Usage {
        Usage {
            allocated_sectors: self.state.lock().next_free_sectors,
            total_sectors: self.cow.size_bytes() / SECTOR_BYTES,
            metadata_sectors: 0,
        }
    }
}

#[cfg(test)]
#[path = "transient_merge_tests.rs"]
mod merge_tests;
#[cfg(test)]
#[path = "transient_tests.rs"]
mod tests;
