//! What a load refuses (format document 9), each refusal leaving the device untouched, and
//! the header: chunk size, the valid flag, `drop_snapshot` (2.2, 3.5).

use super::*;

// ------------------------------------------------------------------------------------------------
// Rejections on load (9). Each refusal must leave the device untouched.

/// A header with the given fields over a zero COW of `chunks` chunks of 8 sectors.
fn header_image(magic: u32, valid: u32, version: u32, chunk_sectors: u32) -> Vec<u8> {
    let mut img = vec![0u8; 300 * 4096];
    put_header(&mut img, magic, valid, version, chunk_sectors);
    img
}

#[test]
fn refuses_bad_magic_and_version() {
    let err = refuse(header_image(0x1234_5678, 1, 1, 8), Opts::default());
    assert_corrupt(&err, "no snapshot header (magic 0x12345678");
    // "SnAP": one bit off.
    let err = refuse(
        header_image(u32::from_le_bytes(*b"SnAP"), 1, 1, 8),
        Opts::default(),
    );
    assert_corrupt(&err, "no snapshot header");
    let err = refuse(header_image(SNAP, 1, 2, 8), Opts::default());
    assert_corrupt(&err, "unable to handle snapshot disk version 2");
    // The version is checked before valid.
    let err = refuse(header_image(SNAP, 0, 0, 8), Opts::default());
    assert_corrupt(&err, "disk version 0");
}

#[test]
fn refuses_bad_on_disk_chunk_sizes() {
    for (sectors, needle) in [
        (0, "not set"),
        (3, "not a power of 2 (3 sectors)"),
        (12, "not a power of 2 (12 sectors)"),
        (1 << 22, "too high (4194304 sectors"),
    ] {
        let err = refuse(header_image(SNAP, 1, 1, sectors), Opts::default());
        assert_corrupt(&err, "invalid on-disk chunk size");
        assert_corrupt(&err, needle);
    }
    // 4 sectors = 2048 bytes is not a multiple of a 4096-byte logical block, on either device.
    let cow_4k = Opts {
        cow_block_bytes: 4096,
        ..Opts::default()
    };
    let err = refuse(header_image(SNAP, 1, 1, 4), cow_4k);
    assert_corrupt(
        &err,
        "not a multiple of device blocksize (4 sectors, logical block size 4096",
    );
    let origin_4k = Opts {
        origin: OriginGeometry {
            size_bytes: BIG_ORIGIN,
            block_bytes: 4096,
        },
        ..Opts::default()
    };
    let err = refuse(header_image(SNAP, 1, 1, 4), origin_4k);
    assert_corrupt(&err, "not a multiple of device blocksize");
    // 8 sectors on 4096-byte blocks is fine.
    let dev = Arc::new(MemDevice::from_bytes(
        "cow",
        header_image(SNAP, 1, 1, 8),
        4096,
    ));
    let mut st = PersistentStore::new(dev, false, 0, origin_4k.origin, false);
    assert!(valid_list(st.read_metadata()).is_empty());
}

#[test]
fn refuses_an_invalid_requested_chunk_size() {
    let err = refuse(
        vec![0; 64 * 512],
        Opts {
            requested: 3,
            ..Opts::default()
        },
    );
    assert!(matches!(
        err,
        StoreError::ChunkSize(ChunkSizeError::NotPowerOfTwo(3))
    ));
    assert!(err.to_string().contains("not a power of 2"));
}

#[test]
fn refuses_records_pointing_at_metadata_chunks() {
    // new_chunk 0 is the terminator, so the header cannot be named; area 0 (1) and area 1 (258)
    // can.
    for new in [1, 258] {
        let err = refuse(one_record_image(8, 300, 5, new), Opts::default());
        assert_corrupt(
            &err,
            &format!("record 0 of area 0 (origin chunk 5, COW chunk {new})"),
        );
        assert_corrupt(&err, "points at a metadata chunk");
    }
    // Record 1 of area 0 with cs = 1: area 1 is chunk 34.
    let err = refuse(store_image(1, 40, &[(0, 2), (1, 34)]), Opts::default());
    assert_corrupt(
        &err,
        "record 1 of area 0 (origin chunk 1, COW chunk 34) points at a metadata",
    );
}

#[test]
fn refuses_records_beyond_the_cow_or_the_origin() {
    // COW of 300 chunks: chunk 299 is the last one.
    assert_eq!(open(mem(one_record_image(8, 300, 5, 299)), 0).1, [(5, 299)]);
    let err = refuse(one_record_image(8, 300, 5, 300), Opts::default());
    assert_corrupt(&err, "points beyond the end of the COW");
    // A partial last chunk cannot hold data.
    let mut img = one_record_image(8, 300, 5, 300);
    img.extend_from_slice(&[0; 2048]);
    assert_corrupt(&refuse(img, Opts::default()), "beyond the end of the COW");

    let err = refuse(one_record_image(8, 300, 5, 1 << 56), Opts::default());
    assert_corrupt(&err, "COW chunk beyond 2^56");
    let err = refuse(one_record_image(8, 300, 5, u64::MAX), Opts::default());
    assert_corrupt(&err, "COW chunk beyond 2^56");

    // Origin of 1 MiB = 256 chunks of 4 KiB: 255 is the last origin chunk.
    let small = |size_bytes| Opts {
        origin: geometry(size_bytes),
        ..Opts::default()
    };
    let err = refuse(one_record_image(8, 300, 256, 2), small(1 << 20));
    assert_corrupt(
        &err,
        "origin chunk 256, COW chunk 2) names an origin chunk beyond",
    );
    let accepted = |old, size_bytes| {
        let mut st = PersistentStore::new(
            mem(one_record_image(8, 300, old, 2)),
            false,
            0,
            geometry(size_bytes),
            false,
        );
        valid_list(st.read_metadata())
    };
    assert_eq!(accepted(255, 1 << 20), [(255, 2)]);
    // A partial last origin chunk is still an origin chunk.
    assert_eq!(accepted(256, (1 << 20) + 512), [(256, 2)]);
}

#[test]
fn refuses_duplicate_chunks() {
    let list = [(5, 2), (6, 3), (5, 4)];
    let err = refuse(store_image(8, 300, &list), Opts::default());
    assert_corrupt(&err, "origin chunk 5 appears in two records");
    let list = [(5, 2), (6, 3), (7, 3)];
    let err = refuse(store_image(8, 300, &list), Opts::default());
    assert_corrupt(&err, "COW chunk 3 appears in two records");
    // Across areas (cs = 1, E = 32): record 0 of area 1 repeats origin chunk 0.
    let mut list = in_order_list(1, 33, |k| k);
    list[32].0 = 0;
    let err = refuse(store_image(1, 40, &list), Opts::default());
    assert_corrupt(&err, "origin chunk 0 appears in two records");
}

#[test]
fn refuses_a_full_last_area() {
    // cs = 1, COW of 34 chunks: area 0 full (new 2..=33), area 1 would be chunk 34.
    let img = store_image(1, 34, &in_order_list(1, 32, |k| k));
    let err = refuse(img, Opts::default());
    assert_corrupt(
        &err,
        "metadata area 1 (chunk 34) lies beyond the end of the COW (34 chunks)",
    );
    // One more chunk and it loads.
    let img = store_image(1, 35, &in_order_list(1, 32, |k| k));
    assert_eq!(open(mem(img), 0).1.len(), 32);
}

#[test]
fn refuses_too_small_cows() {
    // New store: 3 chunks needed.
    let opts = Opts {
        requested: 8,
        ..Opts::default()
    };
    let err = refuse(vec![0; 2 * 4096], opts);
    assert_corrupt(&err, "needs at least 3 chunks (12288 bytes)");
    let err = refuse(vec![0; 3 * 4096 - 512], opts);
    assert_corrupt(&err, "at least 3 chunks");
    assert!(open(mem(vec![0; 3 * 4096]), 8).1.is_empty());
    // Existing store: 2 chunks needed.
    let mut img = vec![0; 4096 + 512];
    put_header(&mut img, SNAP, 1, 1, 8);
    assert_corrupt(
        &refuse(img, Opts::default()),
        "smaller than two chunks of 8 sectors",
    );
    // Not even a header.
    assert_corrupt(
        &refuse(vec![0; 8], Opts::default()),
        "cannot read the header",
    );
}

#[test]
fn refuses_to_create_a_store_when_read_only() {
    let opts = Opts {
        requested: 8,
        read_only: true,
        ..Opts::default()
    };
    let err = refuse(vec![0; 16 * 4096], opts);
    assert_corrupt(&err, "not initialised and the mount is read-only");
}

#[test]
fn read_only_existing_store_loads_but_never_writes() {
    let img = store_image(8, 16, &[(5, 2), (6, 3)]);
    let dev = mem(img.clone());
    let mut st = PersistentStore::new(dev.clone(), false, 0, geometry(BIG_ORIGIN), true);
    assert_eq!(valid_list(st.read_metadata()), [(5, 2), (6, 3)]);
    st.initialise().unwrap();
    assert!(matches!(
        st.prepare_exceptions(1),
        Err(StoreError::ReadOnly)
    ));
    st.drop_snapshot();
    assert!(
        dev.contents() == img,
        "drop_snapshot on a read-only store writes nothing"
    );
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
}

#[test]
fn area_read_error_fails_the_load() {
    let world = SimWorld::new();
    let dev = world.device_from("cow", one_record_image(8, 16, 5, 2), 512);
    dev.fail_reads(true);
    let mut st = persistent(dev.clone(), 0);
    assert_corrupt(&st.read_metadata().unwrap_err(), "cannot read the header");
    // Header readable, area 0 not: a SimDevice fails all reads, so use a device that fails
    // reads past the header.
    struct AreaUnreadable;
    impl DeviceHooks<SimDevice> for AreaUnreadable {
        fn read_at(&self, dev: &SimDevice, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            if offset > 0 {
                return Err(std::io::Error::other("injected area read error"));
            }
            dev.read_at(buf, offset)
        }
    }
    dev.fail_reads(false);
    let mut st = persistent(Arc::new(Wrapped::around(dev, AreaUnreadable)), 0);
    assert!(matches!(st.read_metadata(), Err(StoreError::Io(_))));
}

// ------------------------------------------------------------------------------------------------
// Header: chunk size, valid flag, drop_snapshot (2.2, 3.5).

#[test]
fn header_chunk_size_wins_over_the_requested_one() {
    // cs = 8 on disk (E = 256): area 0 full, 2 records in area 1.
    let list = in_order_list(8, 258, |k| 2 * k);
    let img = store_image(8, 300, &list);
    let dev = mem(img.clone());
    let (st, loaded) = open(dev.clone(), 16);
    assert_eq!(st.chunk_size().sectors(), 8);
    assert_eq!(loaded, list, "records read with E = 256");
    assert_eq!(usage(&st), "2088/2400 24");
    assert!(dev.contents() == img, "the header is not rewritten");
    assert_eq!(commit(&st, &[9999]), [261]);
}

#[test]
fn invalid_header_loads_as_invalid_without_reading_records() {
    let mut img = header_image(SNAP, 0, 1, 8);
    // A record that would be refused if it were read.
    put_record(&mut img, 8, 0, 0, 5, 1);
    let dev = mem(img.clone());
    let mut st = persistent(dev.clone(), 8);
    assert!(matches!(st.read_metadata(), Ok(Loaded::Invalid)));
    st.initialise().unwrap();
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    assert!(matches!(st.commit_merge(0), Err(StoreError::Invalid)));
    assert!(dev.contents() == img);

    // Any non-zero valid counts as valid.
    let mut img = one_record_image(8, 300, 5, 2);
    img[4..8].copy_from_slice(&2u32.to_le_bytes()); // valid = 2
    assert_eq!(open(mem(img), 0).1, [(5, 2)]);
}

#[test]
fn drop_snapshot_clears_valid_and_nothing_else() {
    let (st, dev, before) = store_of_three();

    st.drop_snapshot();
    assert_eq!(dev.take_ops(), [write_op(0, 4096, false), Op::Flush]);
    let after = dev.contents();
    assert_eq!(&after[..16], &header_bytes(0, 8));
    assert!(all_bytes(&after[16..4096], 0));
    assert!(after[4096..] == before[4096..], "areas and data untouched");

    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    let mut reopened = persistent(dev.clone(), 8);
    assert!(matches!(reopened.read_metadata(), Ok(Loaded::Invalid)));
}
