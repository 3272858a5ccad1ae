//! Exception stores: where a snapshot records which origin chunks it has copied, and where.
//!
//! The operations are the kernel's (`dm_exception_store_type`), adapted to blocking calls:
//! instead of a completion callback, [`ExceptionStore::commit_exceptions`] returns once the
//! records are durable (or failed). Two implementations: [`PersistentStore`] (`P`, `PO`), the
//! kernel's on-disk format byte for byte, and [`TransientStore`] (`N`), memory only.
//!
//! [`open`] is the one place a snapshot's store is made. Above it nothing names a store type:
//! what a store can do shows in its answers to the trait (as in the kernel, where a target
//! reads a store's abilities from its operations, never its type): [`ExceptionStore::supports_overflow`],
//! [`ExceptionStore::merge_resumable`], [`ExceptionStore::end`].

mod checks;
mod format;
mod persistent;
pub mod probe;
#[cfg(test)]
mod test_support;
mod transient;

pub use format::{
    AREA_RECORD_BYTES, DISK_VERSION, HEADER_MAGIC, HEADER_READ_BYTES, Header, MERGE_MARKER, Record,
    area_chunk, header_read_len, is_area_chunk, records_per_area,
};
pub use persistent::PersistentStore;
pub use transient::TransientStore;

use crate::device::Device;
use crate::units::{ChunkSize, ChunkSizeError};
use std::fmt;
use std::io;

/// The store type word of a table line, parsed as the kernel parses it: the first character
/// (any case) picks the type; for `P` a second character `O` (any case) asks for overflow
/// support and anything else after `P` is refused; for `N` the rest is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Persistent { overflow: bool },
    Transient,
}

impl StoreKind {
    pub fn parse(word: &str) -> Result<StoreKind, String> {
        let mut chars = word.chars();
        match chars.next().map(|c| c.to_ascii_uppercase()) {
            Some('P') => match chars.next().map(|c| c.to_ascii_uppercase()) {
                None => Ok(StoreKind::Persistent { overflow: false }),
                Some('O') => Ok(StoreKind::Persistent { overflow: true }),
                Some(_) => Err(format!(
                    "unsupported persistent store option in {word:?} (use P or PO)"
                )),
            },
            Some('N') => Ok(StoreKind::Transient),
            _ => Err(format!("exception store type {word:?} is not P, PO or N")),
        }
    }

    pub fn is_persistent(self) -> bool {
        matches!(self, StoreKind::Persistent { .. })
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StoreKind::Persistent { overflow: false } => "P",
            StoreKind::Persistent { overflow: true } => "PO",
            StoreKind::Transient => "N",
        })
    }
}

/// Space figures in 512-byte sectors, exactly as the kernel's `usage()` reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub allocated_sectors: u64,
    pub total_sectors: u64,
    pub metadata_sectors: u64,
}

impl fmt::Display for Usage {
    /// `<allocated>/<total> <metadata>`, the status word of `dmsetup status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{} {}",
            self.allocated_sectors, self.total_sectors, self.metadata_sectors
        )
    }
}

/// Chunks allocated by one `prepare_exceptions` call, in allocation order. Sequence numbers
/// `first_seq .. first_seq + new_chunks.len()` are unique per store (`first_seq` names the
/// batch).
#[derive(Debug)]
#[must_use = "every prepared exception must be committed (possibly as failed)"]
pub struct Prepared {
    pub first_seq: u64,
    pub new_chunks: Vec<u64>,
}

/// The tail run that `prepare_merge` offers (the kernel's answer to it): `count` records
/// ending at `(last_old, last_new)`, consecutive in both origin and COW chunk numbers. A merge
/// step moves origin chunks `first_old()..=last_old` from COW chunks `first_new()..=last_new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MergeRun {
    pub last_old: u64,
    pub last_new: u64,
    pub count: u64,
}

impl MergeRun {
    pub fn first_old(&self) -> u64 {
        self.last_old + 1 - self.count
    }

    pub fn first_new(&self) -> u64 {
        self.last_new + 1 - self.count
    }
}

/// What `read_metadata` found.
#[derive(Debug)]
pub enum Loaded {
    /// A usable store and its exceptions as `(old_chunk, new_chunk)` in record order.
    Valid(Vec<(u64, u64)>),
    /// The header says the snapshot was invalidated: no exceptions were read.
    Invalid,
}

#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// No room on the COW device for another exception.
    NoSpace,
    /// The store has been invalidated; nothing more is written.
    Invalid,
    /// The store was opened read-only: nothing is written (the caller sees `EROFS`).
    ReadOnly,
    /// The operation does not exist for this store type, or not in its present state.
    Unsupported(&'static str),
    /// The chunk size (requested or on disk) breaks a kernel rule.
    ChunkSize(ChunkSizeError),
    /// The COW content is not a store snapfs can use; nothing was written.
    Corrupt(String),
    Io(io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NoSpace => write!(f, "COW device is full"),
            StoreError::Invalid => write!(f, "snapshot is invalid"),
            StoreError::ReadOnly => write!(f, "the store is read-only"),
            StoreError::Unsupported(what) => write!(f, "{what}"),
            StoreError::ChunkSize(e) => write!(f, "{e}"),
            StoreError::Corrupt(why) => write!(f, "invalid or corrupt snapshot COW: {why}"),
            StoreError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        StoreError::Io(e)
    }
}

impl From<ChunkSizeError> for StoreError {
    fn from(e: ChunkSizeError) -> StoreError {
        StoreError::ChunkSize(e)
    }
}

/// The geometry of the origin a store belongs to, for validating loaded records.
#[derive(Clone, Copy, Debug)]
pub struct OriginGeometry {
    pub size_bytes: u64,
    pub block_bytes: u32,
}

/// Makes the store `kind` names on `cow`: the one place snapshot stores are made.
/// `chunk_sectors == 0` asks for the on-disk chunk size (or the default of a new persistent
/// store; a transient store refuses it). Nothing is read or written until `read_metadata`.
pub fn open(
    kind: StoreKind,
    cow: Device,
    chunk_sectors: u64,
    origin: OriginGeometry,
    read_only: bool,
) -> Result<Box<dyn ExceptionStore>, StoreError> {
    Ok(match kind {
        StoreKind::Persistent { overflow } => Box::new(PersistentStore::new(
            cow,
            overflow,
            chunk_sectors,
            origin,
            read_only,
        )),
        StoreKind::Transient => {
            Box::new(TransientStore::new(cow, chunk_sectors, origin.block_bytes)?)
        }
    })
}

/// The kernel's exception-store operations. Implementations are shared between threads.
pub trait ExceptionStore: Send + Sync {
    /// The type word (`P`, `PO`, `N`), for status and the registry; behaviour never branches
    /// on it (the capabilities below say what the store can do).
    fn kind(&self) -> StoreKind;

    /// Whether a snapshot write that finds the COW full only overflows the snapshot (`PO`:
    /// writes fail, reads go on) instead of invalidating it.
    fn supports_overflow(&self) -> bool {
        false
    }

    /// Whether a merge keeps its state where the next open finds it, so that it can stop (an
    /// unmount, a pause, a crash) and resume later. A store that cannot must finish a merge
    /// once started, and cannot pause one.
    fn merge_resumable(&self) -> bool {
        false
    }

    /// The snapshot ends for good (its mount ends, or it is dropped) and nothing will open this
    /// store again: a store whose content means nothing afterwards clears its trace, so that
    /// the device reads as blank to the next snapshot made on it (`probe`). Never called on a
    /// read-only mount, nor while the snapshot is merging.
    fn end(&self) -> io::Result<()> {
        Ok(())
    }

    /// The chunk size in use. Only meaningful after `read_metadata` succeeded (an existing
    /// persistent store's header overrides the requested size).
    fn chunk_size(&self) -> ChunkSize;

    /// Called once, before any other operation: validates the COW device and returns the
    /// exceptions it holds. Writes nothing: a corrupt store is refused; a new persistent store
    /// (first four bytes zero) is accepted and written by `initialise`.
    fn read_metadata(&mut self) -> Result<Loaded, StoreError>;

    /// Called once after `read_metadata` succeeded for every snapshot being attached: writes a
    /// new store's header and empty area 0 (durably). A no-op for an existing store.
    fn initialise(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Allocates `count` COW chunks, all or none. `NoSpace` when they do not fit, `Invalid` once
    /// the store has failed. The caller then copies data into the chunks and must call
    /// `commit_exceptions` exactly once for the result, also when the copy failed.
    fn prepare_exceptions(&self, count: usize) -> Result<Prepared, StoreError>;

    /// Records `old_chunks[i] -> prepared.new_chunks[i]`, blocking until they are durable (data
    /// first, then the metadata with a barrier after it). Batches commit in the order they
    /// arrive, grouped, not in allocation order (as in the kernel): a batch never waits for
    /// one prepared earlier that has not arrived. `copied == false` (the copy failed) poisons
    /// the store. Returns `Ok` only when the records are durable.
    fn commit_exceptions(
        &self,
        prepared: Prepared,
        old_chunks: &[u64],
        copied: bool,
    ) -> Result<(), StoreError>;

    /// Offers the run of records at the tail of the list to merge next; `None` when the list
    /// is empty (the merge is complete). Every store can merge: one without metadata keeps its
    /// list in memory.
    fn prepare_merge(&self) -> Result<Option<MergeRun>, StoreError>;

    /// Removes the last `count` records (at most the count `prepare_merge` offered) durably.
    /// The caller must have made the merged data durable on the origin first.
    fn commit_merge(&self, count: u64) -> Result<(), StoreError>;

    /// Marks the store invalid, durably where the store has metadata (header `valid = 0`).
    fn drop_snapshot(&self);

    /// Whether the store was found (or since marked) in the middle of a merge.
    fn merge_marker(&self) -> bool {
        false
    }

    /// Records durably that a merge is (or is no longer) in progress. Stores without metadata
    /// cannot resume a merge and accept this as a no-op.
    fn set_merge_marker(&self, _merging: bool) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether the recorded merge is paused (the marker's paused flag).
    fn merge_paused(&self) -> bool {
        false
    }

    /// Records durably (flushed before the return) that the merge is paused or running again.
    /// Stores without metadata cannot keep it.
    fn set_merge_paused(&self, _paused: bool) -> Result<(), StoreError> {
        Err(StoreError::Unsupported(
            "this store keeps no merge state on disk",
        ))
    }

    fn usage(&self) -> Usage;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_words_as_the_kernel_parses_them() {
        let p = StoreKind::Persistent { overflow: false };
        let po = StoreKind::Persistent { overflow: true };
        assert_eq!(StoreKind::parse("P"), Ok(p));
        assert_eq!(StoreKind::parse("p"), Ok(p));
        for w in ["PO", "po", "pO", "POxyz"] {
            assert_eq!(StoreKind::parse(w), Ok(po), "{w}");
        }
        for w in ["N", "n", "NO", "Nfoo"] {
            assert_eq!(StoreKind::parse(w), Ok(StoreKind::Transient), "{w}");
        }
        for w in ["persistent", "PX", "", "X", "transient"] {
            assert!(StoreKind::parse(w).is_err(), "{w:?} must be refused");
        }
        assert_eq!(po.to_string(), "PO");
    }

    #[test]
    fn usage_prints_like_dmsetup() {
        let u = Usage {
            allocated_sectors: 16,
            total_sectors: 204800,
            metadata_sectors: 16,
        };
        assert_eq!(u.to_string(), "16/204800 16");
    }
}
