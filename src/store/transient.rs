//! The transient exception store (`N`): no metadata, nothing survives the mount.
//!
//! Allocation starts at COW chunk 0 and goes up one chunk at a time; `next_free` is kept in
//! sectors as the kernel keeps it, so `usage()` prints the same figures (`<next_free>/<size> 0`).
//! Commits need no I/O. The kernel has no merge operations for this store; snapfs merges a
//! transient snapshot from its in-memory table instead (see the volume's merge).

use super::{ExceptionStore, Loaded, MergeRun, Prepared, StoreError, StoreKind, Usage};
use crate::device::Device;
use crate::units::{ChunkSize, ChunkSizeError, SECTOR_BYTES};
use parking_lot::Mutex;

struct State {
    valid: bool,
    next_free_sectors: u64,
    next_seq: u64,
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
        let first_seq = st.next_seq;
        st.next_seq += count as u64;
        Ok(Prepared {
            first_seq,
            new_chunks: (first..first + count as u64).collect(),
        })
    }

    fn commit_exceptions(
        &self,
        _prepared: Prepared,
        _old_chunks: &[u64],
        copied: bool,
    ) -> Result<(), StoreError> {
        if copied && self.state.lock().valid {
            Ok(())
        } else {
            self.state.lock().valid = false;
            Err(StoreError::Invalid)
        }
    }

    fn prepare_merge(&self) -> Result<Option<MergeRun>, StoreError> {
        Err(StoreError::Unsupported(
            "the transient store keeps no list to merge from",
        ))
    }

    fn commit_merge(&self, _count: u64) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "the transient store keeps no list to merge from",
        ))
    }

    fn drop_snapshot(&self) {
        self.state.lock().valid = false;
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
#[path = "transient_tests.rs"]
mod tests;
