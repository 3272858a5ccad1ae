//! Failures and a full COW: copy and metadata I/O errors poison the store (3.2 step 1, 3.4);
//! ENOSPC (2.6, 3.4).

use super::*;

// ------------------------------------------------------------------------------------------------
// Failures: copy errors and metadata I/O errors poison the store (3.2 step 1, 3.4).

#[test]
fn failed_copy_poisons_the_store_and_writes_nothing() {
    let (st, dev, before) = store_of_three();

    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!(p.new_chunks, [5, 6]);
    assert!(matches!(
        st.commit_exceptions(p, &[20, 21], false),
        Err(StoreError::Invalid)
    ));
    assert_eq!(dev.take_ops(), [], "no flush, no area write");
    assert!(dev.contents() == before);
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert_eq!(
        open(dev, 0).1,
        [(10, 2), (11, 3), (12, 4)],
        "list as before"
    );
}

#[test]
fn failed_copy_fails_it_and_every_batch_not_yet_written() {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    dev.take_ops();
    let good = st.prepare_exceptions(1).unwrap();
    let bad = st.prepare_exceptions(1).unwrap();
    let late = st.prepare_exceptions(1).unwrap();
    // The failed copy poisons the store at once: prepared earlier or later, nothing more is
    // recorded.
    assert!(matches!(
        st.commit_exceptions(bad, &[2], false),
        Err(StoreError::Invalid)
    ));
    for (p, old) in [(good, 1), (late, 3)] {
        assert!(matches!(
            st.commit_exceptions(p, &[old], true),
            Err(StoreError::Invalid)
        ));
    }
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert_eq!(dev.take_ops(), []);
    assert!(open(dev, 0).1.is_empty());
}

#[test]
fn metadata_write_or_flush_failure_poisons_the_store() {
    for fail_flush in [false, true] {
        let world = SimWorld::new();
        let dev = world.device("cow", 32 * 4096);
        let st = format(dev.clone(), 8);
        commit(&st, &[10]);
        if fail_flush {
            dev.fail_flushes(true);
        } else {
            dev.fail_writes(true);
        }
        let p = st.prepare_exceptions(1).unwrap();
        assert!(matches!(
            st.commit_exceptions(p, &[11], true),
            Err(StoreError::Invalid)
        ));
        assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
        let durable = world.durable_images().remove(0);
        assert_eq!(
            open(mem(durable), 0).1,
            [(10, 2)],
            "flush failure {fail_flush}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// ENOSPC (2.6, 3.4).

#[test]
fn no_space_when_the_chunk_does_not_fit() {
    // cs = 8, 5 whole chunks and half a chunk: data chunks 2, 3 and 4 fit.
    let dev = mem(vec![0; 5 * 4096 + 2048]);
    let st = format(dev, 8);
    assert_eq!(commit(&st, &[1, 2, 3]), [2, 3, 4]);
    assert_eq!(usage(&st), "40/44 16");
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
    assert_eq!(usage(&st), "40/44 16", "nothing allocated");
}

/// A store on a new COW of `cow_bytes` bytes (a device that grows when written past its end,
/// as a regular file does; 0xEE everywhere but the magic), loaded and initialised.
fn sprawling_store(cs: u64, cow_bytes: u64, overflow: bool) -> (PersistentStore, Arc<Sprawling>) {
    let mut img = vec![0xEE; cow_bytes as usize];
    img[..4].fill(0);
    let dev = Arc::new(Wrapped::around(
        Arc::new(MemDevice::from_bytes("cow", img, 512)),
        Sprawl,
    ));
    let mut st = PersistentStore::new(dev.clone(), overflow, cs, geometry(BIG_ORIGIN), false);
    assert!(valid_list(st.read_metadata()).is_empty());
    st.initialise().unwrap();
    (st, dev)
}

/// The bytes a test puts in COW chunk `c` before committing it (as the volume fills a chunk).
fn fill_chunk(dev: &dyn BlockDevice, cs: u64, c: u64) {
    let byte = 0x40 | (c as u8 & 0x3F);
    dev.write_at(&vec![byte; chunk_bytes(cs) as usize], c * chunk_bytes(cs))
        .unwrap();
}

/// One exception at a time, as the kernel's single-chunk writes make them: prepare, fill,
/// commit. Returns the chunk.
/// [`sprawling_store`] (overflow on) with `records` records committed one by one, old chunks
/// `0..records`.
fn sprawling_store_with(
    cs: u64,
    cow_bytes: u64,
    records: u64,
) -> (PersistentStore, Arc<Sprawling>) {
    let (st, dev) = sprawling_store(cs, cow_bytes, true);
    for k in 0..records {
        commit_one(&st, &*dev, cs, k);
    }
    (st, dev)
}

fn commit_one(st: &PersistentStore, dev: &dyn BlockDevice, cs: u64, old: u64) -> u64 {
    let p = st.prepare_exceptions(1).unwrap();
    let c = p.new_chunks[0];
    fill_chunk(dev, cs, c);
    st.commit_exceptions(p, &[old], true).unwrap();
    c
}

/// The sequence (issue 13, item 11): cs = 1 (E = 32), a COW of 34 sectors (header,
/// area 0, data chunks 2..=33), 32 single-chunk exceptions. The kernel only checks that a chunk
/// itself fits, so the 32nd is allocated (chunk 33, the last data chunk of area 0); its commit
/// fills area 0, zeroing area 1 (chunk 34, past the end) fails, area 0 is not written, and the
/// store is invalid: the snapshot shows `Invalid` and gets `valid = 0` in its header, with `P`
/// and with `PO` alike. Nothing is ever written past the end of the COW.
#[test]
fn a_full_area_whose_next_area_is_past_the_cow_fails_at_commit_as_in_the_kernel() {
    for overflow in [true, false] {
        let what = if overflow { "PO" } else { "P" };
        let (st, dev) = sprawling_store(1, 34 * SECTOR, overflow);
        for k in 0..31 {
            assert_eq!(commit_one(&st, &*dev, 1, 100 + k), 2 + k, "{what}");
        }
        assert_eq!(
            usage(&st),
            "33/34 2",
            "{what}: the kernel's figures after 31"
        );

        let p = st.prepare_exceptions(1).unwrap();
        assert_eq!(
            p.new_chunks,
            [33],
            "{what}: the kernel allocates the last data chunk"
        );
        assert_eq!(
            usage(&st),
            "35/34 2",
            "{what}: next_free stepped over area 1"
        );
        fill_chunk(&*dev, 1, 33);
        assert!(
            matches!(
                st.commit_exceptions(p, &[131], true),
                Err(StoreError::Invalid)
            ),
            "{what}: the commit fails"
        );
        assert_eq!(
            dev.size_bytes(),
            34 * SECTOR,
            "{what}: nothing written past the end"
        );
        assert!(
            matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)),
            "{what}: the store is invalid"
        );
        // The volume then invalidates the snapshot (drop_snapshot), as the kernel does.
        st.drop_snapshot();
        let img = dev.inner.contents();
        assert_eq!(&img[..16], &header_bytes(0, 1), "{what}: header");
        assert!(
            all_bytes(&img[16..512], 0),
            "{what}: rest of the header chunk"
        );
        for k in 0..31 {
            assert_eq!(
                record_in(&img, record_offset(1, 0, k)),
                (100 + k, 2 + k),
                "{what}"
            );
        }
        assert_eq!(
            record_in(&img, record_offset(1, 0, 31)),
            (0, 0),
            "{what}: area 0 as the 31st commit left it (the 32nd was never written)"
        );
        assert!(
            all_bytes(&img[33 * 512..], 0x40 | 33),
            "{what}: chunk 33 holds its data"
        );
        let mut reloaded = persistent(dev.clone(), 0);
        assert!(
            matches!(reloaded.read_metadata(), Ok(Loaded::Invalid)),
            "{what}: reloaded Invalid"
        );
    }
}

/// A batch that reaches the last data chunk of an area whose next area lies past the end: when
/// it fits, it is allocated and its commit fails (as above); when it needs more chunks than are
/// left, the kernel would still have allocated that chunk (it allocates chunk by chunk) and
/// failed the store at its commit, so allocation fails with that error, not `NoSpace` (which
/// would make a `PO` snapshot `Overflow` where the kernel's is `Invalid`), allocating nothing.
#[test]
fn a_batch_reaching_a_full_area_whose_next_area_is_past_the_cow_is_not_no_space() {
    let (st, dev) = sprawling_store_with(1, 34 * SECTOR, 30);
    assert_eq!(usage(&st), "32/34 2");
    let err = st.prepare_exceptions(3).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "not NoSpace: {err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("metadata area 1") && msg.contains("chunk 34") && msg.contains("17408"),
        "{msg}"
    );
    assert_eq!(usage(&st), "32/34 2", "nothing allocated");
    assert_eq!(dev.size_bytes(), 34 * SECTOR);
    assert_eq!(open(dev.clone(), 0).1.len(), 30, "the list as it was");

    // Exactly the chunks left: allocated, and the commit fails.
    let (st, dev) = sprawling_store_with(1, 34 * SECTOR, 30);
    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!(p.new_chunks, [32, 33]);
    assert!(matches!(
        st.commit_exceptions(p, &[40, 41], true),
        Err(StoreError::Invalid)
    ));
    assert_eq!(dev.size_bytes(), 34 * SECTOR);
    assert_eq!(open(dev, 0).1.len(), 30, "neither record was written");

    // Only chunk 33 left and two asked: the kernel allocates 33, then runs out; the store fails.
    let (st, _) = sprawling_store_with(1, 34 * SECTOR, 31);
    assert!(matches!(st.prepare_exceptions(2), Err(StoreError::Io(_))));
    assert_eq!(usage(&st), "33/34 2", "nothing allocated");
}

/// The next area cut by the end of the COW (its size not a whole number of chunks) lies past
/// the end too: the kernel's zeroing write of the whole chunk fails. cs = 2 (E = 64): area 1
/// is chunk 66, sectors 132..134; a COW of 133 sectors ends inside it.
#[test]
fn a_next_area_cut_by_the_end_of_the_cow_is_past_it_too() {
    let (st, dev) = sprawling_store_with(2, 133 * SECTOR, 63);
    assert_eq!(usage(&st), "130/133 4");
    let p = st.prepare_exceptions(1).unwrap();
    assert_eq!(p.new_chunks, [65]);
    fill_chunk(&*dev, 2, 65);
    assert!(matches!(
        st.commit_exceptions(p, &[63], true),
        Err(StoreError::Invalid)
    ));
    assert_eq!(dev.size_bytes(), 133 * SECTOR, "the COW did not grow");
    assert!(
        all_bytes(&dev.inner.contents()[66 * 1024..], 0xEE),
        "area 1 was not written, not even the part inside the COW"
    );

    // One sector more and area 1 fits: all 64 data chunks of area 0 are used, then nothing.
    let (st, dev) = sprawling_store_with(2, 134 * SECTOR, 64);
    assert!(all_bytes(&chunk_on(&*dev, 2, 66), 0), "area 1 zeroed");
    assert_eq!(usage(&st), "134/134 6");
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
}

#[test]
fn with_room_for_the_next_area_every_data_chunk_is_used() {
    // cs = 1, COW of 35 chunks: area 1 fits, all 32 data chunks of area 0 can be used, then
    // the kernel's ENOSPC (a `PO` snapshot overflows).
    let dev = mem(vec![0xFF; 35 * 512]);
    dev.write_at(&[0; 4], 0).unwrap();
    let st = format(dev.clone(), 1);
    let olds: Vec<u64> = (0..32).collect();
    assert_eq!(commit_many(&st, &olds).last(), Some(&(31, 33)));
    assert!(all_bytes(&chunk_on(&*dev, 1, 34), 0), "area 1 zeroed");
    assert_eq!(usage(&st), "35/35 3");
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));

    // A grown COW is used at once.
    dev.resize(36 * 512);
    assert_eq!(commit(&st, &[99]), [35]);
}

/// A COW that shrinks under the store (a truncated file) is said to have shrunk, naming the
/// device and the sizes, instead of being "full" (`NoSpace`, which lets a `PO` snapshot merely
/// overflow: what was cut off may have held exceptions). A shrink that leaves room for the next
/// chunk is used as it is, as the kernel does.
#[test]
fn a_cow_that_shrinks_under_the_store_is_reported_as_shrunk() {
    let dev = mem(vec![0; 64 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[1, 2, 3]);
    dev.resize(16 * 4096);
    assert_eq!(
        commit(&st, &[4]),
        [5],
        "still room: used as the kernel would"
    );
    dev.resize(5 * 4096);
    let err = st.prepare_exceptions(1).unwrap_err();
    assert!(!matches!(err, StoreError::NoSpace), "{err:?}");
    let msg = err.to_string();
    for needle in ["cow", "shrank", "262144", "20480"] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
    }

    // A COW that is simply full says so (NoSpace); grown, it is used; shrunk again, it says so.
    let dev = mem(vec![0; 5 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[1, 2, 3]);
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
    dev.resize(8 * 4096);
    assert_eq!(commit(&st, &[4]), [5]);
    dev.resize(6 * 4096);
    let err = st.prepare_exceptions(1).unwrap_err();
    assert!(err.to_string().contains("shrank"), "{err}");

    // Shrunk past the area the next commit writes: the commit fails, writing nothing there.
    let (st, dev) = sprawling_store(1, 300 * SECTOR, false);
    let p = st.prepare_exceptions(1).unwrap();
    dev.inner.resize(SECTOR);
    assert!(matches!(
        st.commit_exceptions(p, &[7], true),
        Err(StoreError::Invalid)
    ));
    assert_eq!(
        dev.size_bytes(),
        SECTOR,
        "area 0 was not written past the end"
    );
}

#[test]
fn failed_prepare_allocates_nothing() {
    // cs = 1, COW of 35 chunks: 30 exceptions in chunks 2..=31, then 32 and 33 are left.
    let st = format(mem(vec![0; 35 * 512]), 1);
    let olds: Vec<u64> = (0..30).collect();
    commit_many(&st, &olds);
    assert_eq!(usage(&st), "32/35 2");
    assert!(matches!(st.prepare_exceptions(3), Err(StoreError::NoSpace)));
    assert!(matches!(
        st.prepare_exceptions(100),
        Err(StoreError::NoSpace)
    ));
    assert_eq!(usage(&st), "32/35 2");
    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!(p.new_chunks, [32, 33]);
    assert_eq!(p.first_seq, 30, "failed prepares took no sequence numbers");
    st.commit_exceptions(p, &[100, 101], true).unwrap();
    assert_eq!(usage(&st), "35/35 3");
}
