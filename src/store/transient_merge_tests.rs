//! The transient store's merge from memory, its capabilities, and the store factory.

use super::*;
use crate::device::{BlockDevice, MemDevice};
use crate::store::{OriginGeometry, open};
use std::sync::Arc;

fn cow(bytes: u64) -> Arc<MemDevice> {
    Arc::new(MemDevice::new("cow", bytes))
}

fn store(dev: &Arc<MemDevice>) -> TransientStore {
    TransientStore::new(dev.clone(), 8, 512).unwrap()
}

fn commit(st: &TransientStore, olds: &[u64]) -> Vec<u64> {
    let p = st.prepare_exceptions(olds.len()).unwrap();
    let chunks = p.new_chunks.clone();
    st.commit_exceptions(p, olds, true).unwrap();
    chunks
}

/// Every run `prepare_merge` offers until the list is empty, each committed whole.
fn merge_all(st: &TransientStore) -> Vec<MergeRun> {
    let mut runs = Vec::new();
    while let Some(run) = st.prepare_merge().unwrap() {
        st.commit_merge(run.count).unwrap();
        runs.push(run);
    }
    runs
}

fn run(last_old: u64, last_new: u64, count: u64) -> MergeRun {
    MergeRun {
        last_old,
        last_new,
        count,
    }
}

#[test]
fn merge_offers_runs_newest_chunk_first_until_the_list_is_empty() {
    let st = store(&cow(1 << 20));
    assert_eq!(commit(&st, &[10, 11, 12]), [0, 1, 2]);
    assert_eq!(commit(&st, &[5]), [3]);
    assert_eq!(commit(&st, &[6, 40]), [4, 5]);
    let runs = merge_all(&st);
    assert_eq!(
        runs,
        [run(40, 5, 1), run(6, 4, 2), run(12, 2, 3)],
        "tail first; runs consecutive in both numbers"
    );
    assert_eq!((runs[1].first_old(), runs[1].first_new()), (5, 3));
    assert_eq!((runs[2].first_old(), runs[2].first_new()), (10, 0));
    assert_eq!(st.prepare_merge().unwrap(), None);
}

#[test]
fn merge_commits_part_of_a_run_and_offers_the_rest_again() {
    let st = store(&cow(1 << 20));
    commit(&st, &[3, 4, 5, 6]);
    assert_eq!(st.prepare_merge().unwrap(), Some(run(6, 3, 4)));
    st.commit_merge(1).unwrap();
    assert_eq!(st.prepare_merge().unwrap(), Some(run(5, 2, 3)));
}

#[test]
fn merge_skips_chunks_whose_batch_never_committed() {
    let st = store(&cow(1 << 20));
    commit(&st, &[7]);
    let pending = st.prepare_exceptions(2).unwrap();
    assert_eq!(pending.new_chunks, [1, 2]);
    // A commit that never came (its snapshot stopped taking copies): nothing to merge there.
    assert_eq!(merge_all(&st), [run(7, 0, 1)]);
    drop(pending);
}

#[test]
fn merge_runs_are_bounded() {
    let st = store(&cow(8 << 20));
    let olds: Vec<u64> = (100..100 + 300).collect();
    commit(&st, &olds);
    let runs = merge_all(&st);
    assert_eq!(runs, [run(399, 299, 256), run(143, 43, 44)]);
}

#[test]
fn usage_stays_while_merging_and_nothing_is_written() {
    let dev = cow(1 << 20);
    let st = store(&dev);
    commit(&st, &[1, 2]);
    let before = st.usage();
    merge_all(&st);
    assert_eq!(st.usage(), before, "merged chunks are not allocated again");
    assert!(dev.contents().iter().all(|&b| b == 0));
}

#[test]
fn an_invalid_store_offers_no_merge() {
    let st = store(&cow(1 << 20));
    commit(&st, &[1]);
    st.drop_snapshot();
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    assert!(matches!(st.commit_merge(1), Err(StoreError::Invalid)));
}

#[test]
fn end_zeroes_the_head_so_the_device_probes_blank() {
    let dev = cow(1 << 20);
    dev.write_at(&[0xab; 4096], 0).unwrap();
    let st = store(&dev);
    st.end().unwrap();
    assert_eq!(
        probe::probe(&(dev.clone() as crate::device::Device), 4096).unwrap(),
        probe::Content::Blank
    );
}

#[test]
#[should_panic(
    expected = "snapfs invariant broken: committed chunks are below next_free: \
                           chunk 5 is committed, next_free is 2"
)]
fn committing_a_chunk_never_allocated_panics() {
    let st = store(&cow(1 << 20));
    commit(&st, &[1, 2]);
    let forged = Prepared {
        first_seq: 9,
        new_chunks: vec![5],
    };
    let _ = st.commit_exceptions(forged, &[3], true);
}

#[test]
fn open_makes_each_kind_with_its_capabilities() {
    let geometry = OriginGeometry {
        size_bytes: 1 << 20,
        block_bytes: 512,
    };
    let make = |kind: StoreKind, chunk_sectors| {
        open(kind, cow(1 << 20), chunk_sectors, geometry, false).map(|st| {
            (
                st.kind(),
                st.supports_overflow(),
                st.merge_resumable(),
                st.merge_marker(),
            )
        })
    };
    let p = StoreKind::Persistent { overflow: false };
    let po = StoreKind::Persistent { overflow: true };
    assert_eq!(make(p, 0).unwrap(), (p, false, true, false));
    assert_eq!(make(po, 8).unwrap(), (po, true, true, false));
    let n = StoreKind::Transient;
    assert_eq!(make(n, 8).unwrap(), (n, false, false, false));
    assert!(matches!(
        make(n, 0),
        Err(StoreError::ChunkSize(crate::units::ChunkSizeError::Zero))
    ));
}
