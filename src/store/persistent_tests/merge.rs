//! Merge (format document 4.1, 4.2, 5.1) and the merge marker.

use super::*;

// ------------------------------------------------------------------------------------------------
// Merge (4.1, 4.2, 5.1).

#[test]
fn merge_on_an_empty_store_offers_nothing() {
    let st = format(mem(vec![0; 16 * 4096]), 8);
    assert_eq!(st.prepare_merge().unwrap(), None);
    assert_eq!(usage(&st), "16/128 16");
}

#[test]
fn merge_worked_example_cs8() {
    let dev = Arc::new(MemDevice::new("cow", COW_204800));
    let st = format(dev.clone(), 8);
    let olds: Vec<u64> = (0..300).map(merge_old).collect();
    let list = commit_many(&st, &olds);
    assert_eq!(usage(&st), "2424/204800 24", "next_free 303, area 1");
    let reload = |n: usize| {
        let (st, loaded) = open(dev.clone(), 0);
        assert_eq!(loaded, list[..n], "reload after merging down to {n}");
        st
    };

    // Area 1 holds exceptions 256..300 (new 259..=302). Its tail run: 24 records, consecutive
    // in old and new. Record 19 (old 30275, new 278) continues the new chunks but not the old.
    let run = |last_old, last_new, count| {
        Some(MergeRun {
            last_old,
            last_new,
            count,
        })
    };
    assert_eq!(st.prepare_merge().unwrap(), run(40_299, 302, 24));
    st.commit_merge(24).unwrap();
    assert!(all_bytes(
        &read_bytes(&*dev, record_offset(8, 1, 20), 24 * 16),
        0
    ));
    assert_eq!(
        record_on(&*dev, 8, 1, 19),
        (30_275, 278),
        "records before the run stay"
    );
    // next_free = area 1 (258) + 20 remaining + 1.
    assert_eq!(usage(&st), "2232/204800 24");
    assert_eq!(usage(&reload(276)), "2232/204800 24");

    // A shorter commit than offered is allowed.
    assert_eq!(st.prepare_merge().unwrap(), run(30_275, 278, 20));
    st.commit_merge(5).unwrap();
    assert_eq!(usage(&st), "2192/204800 24", "next_free 258 + 15 + 1");
    assert_eq!(st.prepare_merge().unwrap(), run(30_270, 273, 15));
    st.commit_merge(15).unwrap();
    assert_eq!(usage(&st), "2072/204800 24", "area 1 empty: next_free 259");
    assert!(all_bytes(&chunk_on(&*dev, 8, 258), 0));
    reload(256);

    // Area 1 is empty: the next prepare steps back to area 0 and reads it from disk (the working
    // buffer was cleared when area 0 filled). next_free is not updated until commit_merge.
    assert_eq!(st.prepare_merge().unwrap(), run(20_255, 257, 100));
    assert_eq!(usage(&st), "2072/204800 16");
    st.commit_merge(100).unwrap();
    assert_eq!(usage(&st), "1264/204800 16", "next_free 1 + 156 + 1");
    assert_eq!(usage(&reload(156)), "1264/204800 16");

    assert_eq!(st.prepare_merge().unwrap(), run(10_155, 157, 156));
    st.commit_merge(156).unwrap();
    assert_eq!(usage(&st), "16/204800 16", "merged: allocated == metadata");
    assert_eq!(st.prepare_merge().unwrap(), None);
    assert!(all_bytes(&chunk_on(&*dev, 8, 1), 0));
    assert_eq!(usage(&reload(0)), "16/204800 16");

    // The empty store allocates from chunk 2 again.
    assert_eq!(commit(&st, &[5]), [2]);
}

#[test]
fn merge_runs_stop_at_the_area_boundary_and_step_back_from_disk() {
    // cs = 8 (E = 256), hand-made (not in allocation order): area 0 records i < 255 are
    // (10000 + i, 2 + i), record 255 is (5000, 260); area 1 holds (5001, 261), (5002, 262).
    // Records 255 of area 0 and 0..2 of area 1 are consecutive in both old and new.
    let mut list: Vec<(u64, u64)> = (0..255).map(|i| (10_000 + i, 2 + i)).collect();
    list.extend([(5_000, 260), (5_001, 261), (5_002, 262)]);
    let world = SimWorld::new();
    let dev = world.device_from("cow", store_image(8, 300, &list), 512);
    let (st, loaded) = open(dev.clone(), 0);
    assert_eq!(loaded, list);
    assert_eq!(usage(&st), "2104/2400 24", "next_free 263");
    let run = |last_old, last_new, count| {
        Some(MergeRun {
            last_old,
            last_new,
            count,
        })
    };

    assert_eq!(
        st.prepare_merge().unwrap(),
        run(5_002, 262, 2),
        "not 3: one area only"
    );
    st.commit_merge(2).unwrap();
    assert_eq!(usage(&st), "2072/2400 24");

    // Stepping back reads area 0: a read error fails the step and changes nothing.
    dev.fail_reads(true);
    assert!(matches!(st.prepare_merge(), Err(StoreError::Io(_))));
    assert_eq!(usage(&st), "2072/2400 24");
    dev.fail_reads(false);
    assert_eq!(st.prepare_merge().unwrap(), run(5_000, 260, 1));
    assert_eq!(usage(&st), "2072/2400 16");
    st.commit_merge(1).unwrap();
    assert_eq!(usage(&st), "2056/2400 16", "next_free 1 + 255 + 1");
    assert_eq!(st.prepare_merge().unwrap(), run(10_254, 256, 255));
}

#[test]
fn merge_runs_need_consecutive_old_and_new_chunks() {
    let run = |last_old, last_new, count| {
        Some(MergeRun {
            last_old,
            last_new,
            count,
        })
    };
    // cs = 1, hand-made lists. Old chunks consecutive, new chunks not (3 -> 5): a run of 2.
    let list = [(100, 2), (101, 3), (102, 5), (103, 6)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(103, 6, 2));
    // New chunks consecutive, old chunks not (7 -> 9): a run of 2.
    let list = [(7, 2), (9, 3), (10, 4)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(10, 4, 2));
    // Descending old chunks are not a run.
    let list = [(9, 2), (8, 3)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(8, 3, 1));
    // Origin chunk 0 can end a run.
    let list = [(0, 2), (1, 3)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(1, 3, 2));
    st.commit_merge(1).unwrap();
    assert_eq!(st.prepare_merge().unwrap(), run(0, 2, 1));
}

#[test]
fn merge_on_an_invalid_store_fails() {
    let (st, _) = open(mem(one_record_image(8, 16, 5, 2)), 0);
    st.drop_snapshot();
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    assert!(matches!(st.commit_merge(1), Err(StoreError::Invalid)));
}

// ------------------------------------------------------------------------------------------------
// snapfs's merge marker: bytes 16..28 of chunk 0, ignored by the kernel (format.rs).

/// Header bytes 0..28 of a valid cs = 8 store with the merge marker set.
fn merging_header() -> [u8; 28] {
    let mut bytes = [0u8; 28];
    bytes[..16].copy_from_slice(&header_bytes(1, 8));
    bytes[16..24].copy_from_slice(b"snapfsMG"); // marker "snapfsMG"
    bytes[24..28].copy_from_slice(&[0x01, 0x00, 0x00, 0x00]); // marker version 1
    bytes
}

#[test]
fn merge_marker_is_written_durably_and_reloaded() {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[10, 11]);
    let areas = dev.contents()[4096..].to_vec();
    assert!(!st.merge_marker());
    dev.take_ops();

    st.set_merge_marker(true).unwrap();
    assert!(st.merge_marker());
    assert_eq!(dev.take_ops(), [write_op(0, 4096, false), Op::Flush]);
    let header = chunk_on(&*dev, 8, 0);
    assert_eq!(&header[..28], &merging_header());
    assert!(all_bytes(&header[28..], 0));
    assert!(dev.contents()[4096..] == areas[..], "only chunk 0 written");
    let (reopened, list) = open(dev.clone(), 0);
    assert!(reopened.merge_marker());
    assert_eq!(list, [(10, 2), (11, 3)]);
    drop(reopened);

    st.set_merge_marker(false).unwrap();
    assert!(!st.merge_marker());
    assert!(all_bytes(&chunk_on(&*dev, 8, 0)[16..], 0), "marker cleared");
    assert!(!open(dev, 0).0.merge_marker());
}

#[test]
fn drop_snapshot_keeps_the_merge_marker() {
    let dev = mem(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    st.set_merge_marker(true).unwrap();
    st.drop_snapshot();
    let header = chunk_on(&*dev, 8, 0);
    assert_eq!(&header[4..8], &[0, 0, 0, 0], "valid = 0");
    assert_eq!(&header[..4], &merging_header()[..4]);
    assert_eq!(
        &header[8..28],
        &merging_header()[8..28],
        "rest of the header intact"
    );
    assert!(matches!(
        st.set_merge_marker(false),
        Err(StoreError::Invalid)
    ));
    assert_eq!(&chunk_on(&*dev, 8, 0)[16..28], &merging_header()[16..28]);
    // An invalid store still reports its marker.
    let mut reopened = persistent(dev, 0);
    assert!(matches!(reopened.read_metadata(), Ok(Loaded::Invalid)));
    assert!(reopened.merge_marker());
}

#[test]
fn merge_marker_needs_its_exact_bytes() {
    // A marker with version 2, or a misspelt one, is not a marker.
    for (at, byte) in [(24, 2), (16, b'S')] {
        let mut img = store_image(8, 16, &[(5, 2)]);
        img[..28].copy_from_slice(&merging_header());
        img[at] = byte;
        let (st, list) = open(mem(img), 0);
        assert!(!st.merge_marker(), "byte {at} = {byte}");
        assert_eq!(list, [(5, 2)]);
    }
    // A new store (magic 0) ignores stale marker bytes, and initialise clears them.
    let mut img = vec![0u8; 16 * 4096];
    img[..28].copy_from_slice(&merging_header());
    img[..4].fill(0);
    let dev = mem(img);
    let st = format(dev.clone(), 8);
    assert!(!st.merge_marker());
    assert!(all_bytes(&chunk_on(&*dev, 8, 0)[16..], 0));
}

#[test]
fn failed_merge_marker_write_leaves_the_marker_unchanged() {
    let world = SimWorld::new();
    let dev = world.device("cow", 16 * 4096);
    let st = format(dev.clone(), 8);
    dev.fail_writes(true);
    assert!(matches!(st.set_merge_marker(true), Err(StoreError::Io(_))));
    assert!(!st.merge_marker(), "the marker is not set in memory either");
    dev.fail_writes(false);
    st.set_merge_marker(true).unwrap();
    dev.fail_flushes(true);
    assert!(st.set_merge_marker(false).is_err());
    assert!(
        st.merge_marker(),
        "a clear that did not become durable is not a clear"
    );
}

#[test]
fn merge_marker_on_a_read_only_store_is_read_not_written() {
    let mut img = store_image(8, 16, &[(5, 2)]);
    img[..28].copy_from_slice(&merging_header());
    let dev = mem(img.clone());
    let mut st = PersistentStore::new(dev.clone(), false, 0, geometry(BIG_ORIGIN), true);
    valid_list(st.read_metadata());
    assert!(st.merge_marker());
    assert!(matches!(
        st.set_merge_marker(false),
        Err(StoreError::ReadOnly)
    ));
    assert!(st.merge_marker());
    assert!(dev.contents() == img);
}
