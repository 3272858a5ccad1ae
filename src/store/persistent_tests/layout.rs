//! New stores, allocation and placement, reload and the zeroing of the next area: where
//! every byte of the format lands (format document 2.3-2.6, 3.2, 3.3, 5.1, 10).

use super::*;

// ------------------------------------------------------------------------------------------------
// New store (format document 2.3).

#[test]
fn new_store_is_accepted_without_writing_then_initialise_writes_header_and_area_0() {
    let mut img = vec![0u8; COW_204800 as usize];
    // Stale bytes everywhere in the first chunks but the magic: a new store is told by the
    // first four bytes only.
    img[4..3 * 4096].fill(0xA5);
    let dev = Recorder::new(img);
    let before = read_bytes(&*dev, 0, 3 * 4096);

    let (mut st, list) = open(dev.clone(), 8);
    assert!(list.is_empty());
    assert_eq!(dev.take_ops(), [], "read_metadata writes nothing");
    assert_eq!(read_bytes(&*dev, 0, 3 * 4096), before);
    assert_eq!(st.kind(), StoreKind::Persistent { overflow: false });
    assert_eq!(st.chunk_size().sectors(), 8);

    st.initialise().unwrap();
    let mut ops = dev.take_ops();
    assert_eq!(ops.last(), Some(&Op::Flush), "initialise ends durable");
    ops.retain(|op| *op != Op::Flush);
    ops.sort_by_key(|op| match op {
        Op::Write { offset, .. } => *offset,
        Op::Flush => 0,
    });
    assert_eq!(
        ops,
        [write_op(0, 4096, false), write_op(4096, 4096, true)],
        "exactly the header chunk and area 0"
    );
    let header = chunk_on(&*dev, 8, 0);
    assert_eq!(&header[..16], &header_bytes(1, 8));
    assert!(
        all_bytes(&header[16..], 0),
        "rest of the header chunk is zero"
    );
    assert!(all_bytes(&chunk_on(&*dev, 8, 1), 0), "area 0 is zero");
    assert!(
        all_bytes(&chunk_on(&*dev, 8, 2), 0xA5),
        "data chunks are not zeroed"
    );
    assert_eq!(usage(&st), "16/204800 16");

    st.initialise().unwrap();
    assert_eq!(dev.take_ops(), [], "a second initialise is a no-op");
}

#[test]
fn new_store_default_chunk_size_is_16k_or_the_cow_block() {
    // 0 requested: max(32, logical block size / 512) sectors.
    let (mut st, _) = open(mem(vec![0; 3 * 16384]), 0);
    assert_eq!(st.chunk_size().sectors(), 32);
    st.initialise().unwrap();
    let dev = Arc::new(MemDevice::with_block_size("cow", 3 * 32768, 32768));
    let (mut big, _) = open(dev.clone(), 0);
    assert_eq!(big.chunk_size().sectors(), 64);
    big.initialise().unwrap();
    assert_eq!(
        &read_bytes(&*dev, 12, 4),
        &[64, 0, 0, 0],
        "header chunk size field"
    );
    assert_eq!(big.usage().to_string(), "128/192 128");
}

#[test]
fn initialise_is_a_noop_for_an_existing_store() {
    let dev = Recorder::new(one_record_image(8, 16, 7, 2));
    let (mut st, list) = open(dev.clone(), 8);
    assert_eq!(list, [(7, 2)]);
    st.initialise().unwrap();
    assert_eq!(dev.take_ops(), []);
}

#[test]
fn loads_a_hand_written_image_and_keeps_what_follows_the_terminator_dead() {
    // cs = 1 sector: B = 512, E = 32; a COW of 8 chunks.
    let mut img = vec![0u8; 8 * 512];
    let header = header_bytes(1, 1);
    #[rustfmt::skip]
    let area0: [u8; 64] = [
        // record 0: origin chunk 0x1234 -> COW chunk 2
        0x34, 0x12, 0, 0, 0, 0, 0, 0,    0x02, 0, 0, 0, 0, 0, 0, 0,
        // record 1: origin chunk 0 (a valid origin chunk) -> COW chunk 5
        0, 0, 0, 0, 0, 0, 0, 0,          0x05, 0, 0, 0, 0, 0, 0, 0,
        // record 2: new_chunk 0 ends the list (old_chunk is not looked at)
        0xff, 0xff, 0, 0, 0, 0, 0, 0,    0, 0, 0, 0, 0, 0, 0, 0,
        // record 3: garbage after the terminator, ignored (it would be refused if read)
        0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
        0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
    ];
    img[..16].copy_from_slice(&header);
    img[512..576].copy_from_slice(&area0);
    let dev = mem(img);
    let (st, list) = open(dev.clone(), 0);
    assert_eq!(list, [(0x1234, 2), (0, 5)]);
    assert_eq!(st.chunk_size().sectors(), 1);
    // next_free = max(new) + 1 = 6: allocated 6 sectors of 8, metadata header + area 0.
    assert_eq!(usage(&st), "6/8 2");

    assert_eq!(commit(&st, &[9]), [6]);
    #[rustfmt::skip]
    let expected: [u8; 32] = [
        // record 2: origin chunk 9 -> COW chunk 6
        0x09, 0, 0, 0, 0, 0, 0, 0,       0x06, 0, 0, 0, 0, 0, 0, 0,
        // record 3: the stale bytes were not written back: a terminator
        0, 0, 0, 0, 0, 0, 0, 0,          0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(read_bytes(&*dev, 512 + 32, 32), expected);
    assert_eq!(open(dev, 0).1, [(0x1234, 2), (0, 5), (9, 6)]);
}

// ------------------------------------------------------------------------------------------------
// Allocation, placement and usage (2.4, 2.6, 5.1, 10).

#[test]
fn worked_example_cs8_usage_and_bytes() {
    let dev = Arc::new(MemDevice::new("cow", COW_204800));
    // Stale bytes in area 1 (chunk 258): it must be zeroed when area 0 fills.
    dev.write_at(&[0xEE; 4096], 258 * 4096).unwrap();
    let st = format(dev.clone(), 8);
    assert_eq!(usage(&st), "16/204800 16");

    assert_eq!(commit(&st, &[0x1234]), [2]);
    assert_eq!(commit(&st, &[1, 2]), [3, 4]);
    assert_eq!(usage(&st), "40/204800 16", "next_free 5");
    #[rustfmt::skip]
    let expected: [u8; 32] = [
        // 0x1000: record 0 of area 0, origin chunk 0x1234 saved in COW chunk 2
        0x34, 0x12, 0, 0, 0, 0, 0, 0,    0x02, 0, 0, 0, 0, 0, 0, 0,
        // 0x1010: record 1, origin chunk 1 in COW chunk 3
        0x01, 0, 0, 0, 0, 0, 0, 0,       0x03, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(read_bytes(&*dev, 0x1000, 32), expected);

    let olds: Vec<u64> = (3..256).map(|k| 100 + k).collect();
    commit_many(&st, &olds);
    // 256 exceptions: next_free skipped 258 -> 259, area 1 zeroed, current_area 1.
    assert_eq!(usage(&st), "2072/204800 24");
    assert_eq!(next_free(&st), 259);
    assert_eq!(current_area(&st), 1);
    assert!(all_bytes(&chunk_on(&*dev, 8, 258), 0), "area 1 zeroed");
    assert_eq!(
        record_on(&*dev, 8, 0, 255),
        (355, 257),
        "last data chunk of area 0"
    );

    // The 257th exception: origin chunk 2^32 in COW chunk 259, record 0 of area 1.
    assert_eq!(commit(&st, &[1 << 32]), [259]);
    #[rustfmt::skip]
    let expected: [u8; 16] = [
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // old_chunk = 2^32
        0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // new_chunk = 259
    ];
    assert_eq!(read_bytes(&*dev, 0x102000, 16), expected);
    assert_eq!(usage(&st), "2080/204800 24");
}

/// Commits `n` exceptions with chunk size `cs` and checks where each one lands.
fn check_placement(cs: u64, n: u64) {
    let e = per_area(cs);
    let chunks = kth_chunk(cs, n) + 2;
    let dev = mem(vec![0; (chunks * chunk_bytes(cs)) as usize]);
    let st = format(dev.clone(), cs);
    let olds: Vec<u64> = (0..n).map(|k| 3 * k + 1).collect();
    let list = commit_many(&st, &olds);
    for (k, &(old, new)) in (0u64..).zip(&list) {
        assert_eq!(new, 2 + k + k / e, "cs {cs}: exception {k}");
        assert_eq!(old, 3 * k + 1);
        assert_eq!(
            record_on(&*dev, cs, k / e, k % e),
            (old, new),
            "cs {cs}: record {k}"
        );
    }
    // Every full area's successor starts with a terminator (or more records).
    assert_eq!(current_area(&st), n / e);
    assert_eq!(record_on(&*dev, cs, n / e, n % e), (0, 0), "terminator");
}

#[test]
fn kth_exception_lands_at_2_plus_k_plus_k_div_e() {
    check_placement(8, 700);
    check_placement(1, 300);
    check_placement(1, 64);
    check_placement(16, 513);
}

// ------------------------------------------------------------------------------------------------
// Reload (2.5), including CVE-2013-4299.

/// Commits `n`, reopens, checks list, usage and where allocation continues; then commits more
/// and reopens again (the partial area must have been carried into the working buffer).
fn check_reload(cs: u64, n: u64) {
    let more = 40;
    let chunks = kth_chunk(cs, n + more) + 2;
    let dev = mem(vec![0; (chunks * chunk_bytes(cs)) as usize]);
    let olds: Vec<u64> = (0..n + more).map(|k| 5 * k + 2).collect();
    let st = format(dev.clone(), cs);
    let list = commit_many(&st, &olds[..n as usize]);
    let figures = usage(&st);
    drop(st);

    let what = format!("cs {cs}, {n} exceptions");
    let (st, loaded) = open(dev.clone(), cs);
    assert_eq!(loaded, list, "{what}: same records in the same order");
    assert_eq!(usage(&st), figures, "{what}: same usage");
    assert_eq!(current_area(&st), n / per_area(cs), "{what}");
    let added = commit_many(&st, &olds[n as usize..]);
    let expected_new: Vec<u64> = (n..n + more).map(|k| kth_chunk(cs, k)).collect();
    let added_new: Vec<u64> = added.iter().map(|&(_, new)| new).collect();
    assert_eq!(added_new, expected_new, "{what}: allocation continues");
    drop(st);

    let (st, all) = open(dev, 0);
    assert_eq!(all, in_order_list(cs, n + more, |k| 5 * k + 2), "{what}");
    assert_eq!(next_free(&st), kth_chunk(cs, n + more));
}

#[test]
fn reload_returns_the_same_list_and_usage_and_continues() {
    for (cs, n) in [
        (8, 700),
        (8, 512),
        (8, 1),
        (1, 300),
        (1, 32),
        (1, 31),
        (1, 5),
        (1, 0),
    ] {
        check_reload(cs, n);
    }
}

#[test]
fn cve_2013_4299_loaded_next_free_skips_the_area_chunk() {
    // cs = 8: a single record whose new chunk is 257, the last data chunk before area 1.
    let dev = mem(one_record_image(8, 300, 42, 257));
    let (st, list) = open(dev.clone(), 8);
    assert_eq!(list, [(42, 257)]);
    assert_eq!(next_free(&st), 259, "258 is area 1");
    assert_eq!(usage(&st), "2072/2400 16");
    assert_eq!(commit(&st, &[43]), [259]);
    assert_eq!(record_on(&*dev, 8, 0, 1), (43, 259));
    assert_eq!(&chunk_on(&*dev, 8, 258), &[0u8; 4096], "area 1 untouched");

    // cs = 1 (E = 32): area 0 exactly full, new chunks 2..=33; area 1 at 34 is empty.
    let list = in_order_list(1, 32, |k| k);
    let dev = mem(store_image(1, 40, &list));
    let (st, loaded) = open(dev.clone(), 1);
    assert_eq!(loaded, list);
    assert_eq!(next_free(&st), 35);
    assert_eq!(current_area(&st), 1);
    assert_eq!(usage(&st), "35/40 3");
    assert_eq!(commit(&st, &[100]), [35]);
    assert_eq!(record_on(&*dev, 1, 1, 0), (100, 35));
}

// ------------------------------------------------------------------------------------------------
// Area N+1 zeroing (3.2 step 5, 3.3).

#[test]
fn filling_an_area_zeroes_the_next_one_and_nothing_else() {
    const CS: u64 = 8;
    let chunks = 800;
    let mut img = vec![0xFF; (chunks * 4096) as usize];
    img[..4].fill(0); // a new store, with garbage everywhere else
    let dev = mem(img);
    let st = format(dev.clone(), CS);
    assert!(all_bytes(&chunk_on(&*dev, CS, 258), 0xFF), "not zeroed yet");

    let olds: Vec<u64> = (0..256).map(|k| 1000 + k).collect();
    let list = commit_many(&st, &olds);
    assert!(all_bytes(&chunk_on(&*dev, CS, 258), 0), "area 1 zeroed");
    assert!(
        all_bytes(&chunk_on(&*dev, CS, 515), 0xFF),
        "area 2 untouched"
    );
    assert!(all_bytes(&chunk_on(&*dev, CS, 2), 0xFF), "no data written");
    drop(st);

    let (st, loaded) = open(dev.clone(), 0);
    assert_eq!(loaded, list, "no stale record read from area 1");
    assert_eq!(commit(&st, &[7]), [259]);
    drop(st);
    assert_eq!(open(dev, 0).1.len(), 257);

    // What the zeroing prevents: a full area 0 followed by a stale area 1 is refused.
    let mut stale = store_image(CS, 300, &in_order_list(CS, 256, |k| k));
    stale[258 * 4096..259 * 4096].fill(0xFF);
    let err = refuse(stale, Opts::default());
    assert_corrupt(&err, "record 0 of area 1");
}

#[test]
fn write_and_flush_order_of_commits() {
    // cs = 1: B = 512, E = 32, area 0 at byte 512, area 1 at chunk 34.
    let dev = Recorder::new(vec![0; 200 * 512]);
    let st = format(dev.clone(), 1);
    dev.take_ops();
    let area0 = 512;
    let area1 = 34 * 512;

    commit(&st, &[1]);
    assert_eq!(
        dev.take_ops(),
        [Op::Flush, write_op(area0, 512, false), Op::Flush],
        "data durable, then the whole area, then durable"
    );
    commit(&st, &(2..32).collect::<Vec<_>>());
    assert_eq!(
        dev.take_ops(),
        [Op::Flush, write_op(area0, 512, false), Op::Flush],
        "a batch is one area write"
    );
    // 31 records so far: 3 more fill area 0 and put 2 records in area 1.
    commit(&st, &[40, 41, 42]);
    assert_eq!(
        dev.take_ops(),
        [
            write_op(area1, 512, true),  // zero area 1 ...
            Op::Flush,                   // ... durably with the data, before
            write_op(area0, 512, false), // area 0 is written full
            write_op(area1, 512, false), // and the records of area 1,
            Op::Flush,                   // both made durable by one flush
        ]
    );
    // Exactly filling area 1 writes no trailing partial area.
    commit(&st, &(50..80).collect::<Vec<_>>());
    let area2 = 67 * 512;
    assert_eq!(
        dev.take_ops(),
        [
            write_op(area2, 512, true),
            Op::Flush,
            write_op(area1, 512, false),
            Op::Flush,
        ]
    );
    // A batch filling three areas at once: every successor zeroed with the data flush, then
    // the areas, then one flush.
    commit(&st, &(100..196).collect::<Vec<_>>());
    let (area3, area4, area5) = (100 * 512, 133 * 512, 166 * 512);
    assert_eq!(
        dev.take_ops(),
        [
            write_op(area3, 512, true),
            write_op(area4, 512, true),
            write_op(area5, 512, true),
            Op::Flush,
            write_op(area2, 512, false),
            write_op(area3, 512, false),
            write_op(area4, 512, false),
            Op::Flush,
        ]
    );
}
