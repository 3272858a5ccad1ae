//! Unit tests of the transient store (format document 6): allocation from chunk 0 with no
//! metadata and no I/O, ENOSPC all or nothing, chunk-size rules, invalidation, no merge.

use super::*;
use crate::device::MemDevice;
use crate::store::test_support::*;
use crate::store::{ExceptionStore, StoreError, StoreKind};
use crate::units::ChunkSizeError;
use std::sync::Arc;

// ------------------------------------------------------------------------------------------------
// Transient store (6).

fn transient(dev: Device, cs: u64) -> TransientStore {
    match TransientStore::new(dev, cs, 512) {
        Ok(st) => st,
        Err(e) => panic!("transient store refused: {e}"),
    }
}

#[test]
fn transient_allocates_from_chunk_0_and_writes_nothing() {
    let dev = Recorder::new(vec![0; COW_204800 as usize]);
    let mut st = transient(dev.clone(), 8);
    assert!(valid_list(st.read_metadata()).is_empty());
    st.initialise().unwrap();
    assert_eq!(st.kind(), StoreKind::Transient);
    assert_eq!(st.chunk_size().sectors(), 8);
    assert_eq!(usage(&st), "0/204800 0");

    let p = st.prepare_exceptions(1).unwrap();
    assert_eq!((p.first_seq, p.new_chunks.as_slice()), (0, &[0][..]));
    st.commit_exceptions(p, &[7], true).unwrap();
    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!((p.first_seq, p.new_chunks.as_slice()), (1, &[1, 2][..]));
    st.commit_exceptions(p, &[8, 9], true).unwrap();
    assert_eq!(usage(&st), "24/204800 0");
    assert_eq!(dev.take_ops(), [], "no metadata, no I/O");
}

#[test]
fn transient_no_space_all_or_nothing() {
    // 20 sectors with cs = 8: two whole chunks.
    let st = transient(mem(vec![0; 20 * 512]), 8);
    assert!(matches!(st.prepare_exceptions(3), Err(StoreError::NoSpace)));
    assert_eq!(usage(&st), "0/20 0");
    assert_eq!(commit(&st, &[1, 2]), [0, 1]);
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
    assert_eq!(usage(&st), "16/20 0");
}

#[test]
fn transient_refuses_bad_chunk_sizes() {
    let err = |dev: Device, cs, origin_block| match TransientStore::new(dev, cs, origin_block) {
        Ok(_) => panic!("chunk size {cs} accepted"),
        Err(e) => e,
    };
    let cow = || -> Device { mem(vec![0; 64 * 4096]) };
    let e = err(cow(), 0, 512);
    assert!(matches!(e, StoreError::ChunkSize(ChunkSizeError::Zero)));
    assert!(e.to_string().contains("Chunk size not set"));
    assert!(matches!(
        err(cow(), 3, 512),
        StoreError::ChunkSize(ChunkSizeError::NotPowerOfTwo(3))
    ));
    assert!(matches!(
        err(cow(), 1 << 22, 512),
        StoreError::ChunkSize(ChunkSizeError::TooHigh(_))
    ));
    assert!(matches!(
        err(cow(), 4, 4096),
        StoreError::ChunkSize(ChunkSizeError::NotMultipleOfBlockSize { .. })
    ));
    let cow_4k: Device = Arc::new(MemDevice::with_block_size("cow", 64 * 4096, 4096));
    assert!(matches!(
        err(cow_4k.clone(), 4, 512),
        StoreError::ChunkSize(ChunkSizeError::NotMultipleOfBlockSize { .. })
    ));
    assert_eq!(transient(cow_4k, 8).chunk_size().sectors(), 8);
}

#[test]
fn transient_failed_copy_invalidates() {
    let st = transient(mem(vec![0; 64 * 4096]), 8);
    let first = st.prepare_exceptions(1).unwrap();
    let second = st.prepare_exceptions(1).unwrap();
    assert!(matches!(
        st.commit_exceptions(second, &[2], false),
        Err(StoreError::Invalid)
    ));
    assert!(matches!(
        st.commit_exceptions(first, &[1], true),
        Err(StoreError::Invalid)
    ));
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
}

#[test]
fn transient_drop_is_in_memory() {
    let dev = Recorder::new(vec![0; 64 * 4096]);
    let st = transient(dev.clone(), 8);
    commit(&st, &[1]);
    st.drop_snapshot();
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert_eq!(dev.take_ops(), []);
}

#[test]
fn transient_store_has_no_merge_marker() {
    let dev = Recorder::new(vec![0; 64 * 4096]);
    let st = transient(dev.clone(), 8);
    st.set_merge_marker(true).unwrap();
    assert!(!st.merge_marker());
    assert_eq!(dev.take_ops(), []);
}
