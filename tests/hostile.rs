//! Hostile input at the library level: COW images built byte by byte and opened with
//! `snapfs::Volume::open` (or attached to a live volume). Every refusal must be one clear line
//! naming the problem, and must leave every device exactly as it was: the devices here count
//! every write call, so "changing nothing" means "not one write was even attempted".
//!
//! Also: origins and COWs of mismatched logical block size, COWs too small or cut short, and
//! reads and writes at and past the end of the origin and of snapshots.
//!
//! Each table-driven test prints its case count (`--nocapture`); docs/reliability.md records
//! them.

mod hostile_support;
mod splitmix;

use hostile_support::*;
use snapfs::device::MemDevice;
use snapfs::{Payload, SnapshotConfig, Volume, VolumeError, VolumeOptions};
use splitmix::Rng;
use std::sync::Arc;

/// 4 KiB chunks: E = 256 records per area.
const L8: Layout = Layout { cs: 8 };
/// 512-byte chunks: E = 32, so several areas fit in a small image.
const L1: Layout = Layout { cs: 1 };
const ORIGIN_BYTES: u64 = 1 << 20;
const COW_CHUNKS: u64 = 64;

fn origin_image() -> Vec<u8> {
    Rng(7).bytes(ORIGIN_BYTES)
}

/// A valid 4 KiB-chunk store with a few exceptions and tagged data chunks.
fn good_cs8_image() -> Vec<u8> {
    let list = in_order(L8, 5, |k| 10 * k + 3);
    let mut img = store_image(L8, COW_CHUNKS, &list);
    for &(_, new) in &list {
        fill_chunk(&mut img, L8, new, 0x5a);
    }
    img
}

fn report(test: &str, cases: usize) {
    eprintln!("hostile: {test}: {cases} cases");
}

/// Opens `cow` (one P snapshot named `s`) over the standard origin and expects a refusal.
fn refuse_one(cow: Vec<u8>, needles: &[&str], ctx: &str) {
    let mut all = vec!["snapshot s", "s.cow"];
    all.extend_from_slice(needles);
    expect_refusal(origin_image(), 512, &[CowSpec::p("s", cow)], &all, ctx);
}

/// Opens `cow` as snapshot `s` and expects it to load; returns the volume and the rig.
fn accept_one(cow: Vec<u8>, ctx: &str) -> (Volume, Rig) {
    let spec = [CowSpec::p("s", cow)];
    let rig = Rig::new(origin_image(), 512, &spec);
    let volume = rig
        .open(&spec, VolumeOptions::default())
        .unwrap_or_else(|e| panic!("{ctx}: refused: {e}"));
    (volume, rig)
}

// ----- the header -----------------------------------------------------------------------------

#[test]
fn header_magic_other_than_zero_or_snap_is_refused() {
    let swapped = u32::from_be_bytes(*b"SnAp");
    let magics = [
        1,
        SNAP ^ 1,
        SNAP ^ 0x8000_0000,
        swapped,
        u32::from_le_bytes(*b"SNAP"),
        u32::MAX,
    ];
    for magic in magics {
        let mut img = good_cs8_image();
        img[0..4].copy_from_slice(&magic.to_le_bytes());
        refuse_one(img, &["no snapshot header"], &format!("magic {magic:#x}"));
    }
    report("header magic", magics.len());
}

/// The kernel's rule: a COW whose first four bytes are zero is a new store. Its stale records
/// must never come back: area 0 is zeroed before the header is written.
#[test]
fn header_magic_zero_is_a_new_store_and_its_stale_records_are_wiped() {
    let mut img = good_cs8_image();
    img[0..4].fill(0);
    let (volume, rig) = accept_one(img, "magic 0");
    let snap = volume.snapshot("s").unwrap();
    assert_eq!(snap.exceptions(), 0, "no record of the old store is loaded");
    assert_eq!(
        snap.status_word(),
        "64/512 64",
        "a fresh store of 16 KiB chunks"
    );
    let cow = rig.cows[0].contents();
    assert_eq!(
        &cow[0..16],
        &header_bytes(1, 1, 32),
        "new header, default chunk size"
    );
    assert!(
        cow[16 * 1024..32 * 1024].iter().all(|&b| b == 0),
        "area 0 (chunk 1 of 16 KiB) is zeroed"
    );
    report("header magic zero", 1);
}

fn header_bytes(valid: u32, version: u32, cs: u32) -> Vec<u8> {
    let mut h = vec![0u8; 16];
    put_header(&mut h, SNAP, valid, version, cs);
    h
}

#[test]
fn header_version_other_than_1_is_refused() {
    let versions = [0, 2, 3, 0x100, 0x0100_0000, u32::MAX];
    for version in versions {
        let mut img = good_cs8_image();
        img[8..12].copy_from_slice(&version.to_le_bytes());
        refuse_one(
            img,
            &["unable to handle snapshot disk version"],
            &format!("version {version}"),
        );
    }
    report("header version", versions.len());
}

#[test]
fn header_chunk_sizes_the_kernel_would_refuse_are_refused() {
    let bad = [
        0u32,
        3,
        6,
        12,
        24,
        1000,
        1 << 22,
        1 << 31,
        0x8000_0001,
        u32::MAX,
    ];
    for cs in bad {
        let mut img = good_cs8_image();
        img[12..16].copy_from_slice(&cs.to_le_bytes());
        refuse_one(img, &["invalid on-disk chunk size"], &format!("chunk {cs}"));
    }
    // Legal sizes whose two chunks do not fit the COW (256 KiB).
    let too_big = [512u32, 1 << 10, 1 << 21];
    for cs in too_big {
        let mut img = good_cs8_image();
        img[12..16].copy_from_slice(&cs.to_le_bytes());
        refuse_one(img, &["smaller than two chunks"], &format!("chunk {cs}"));
    }
    report("header chunk size", bad.len() + too_big.len());
}

/// A legal chunk size on disk wins over the one asked for; the records are read with it.
#[test]
fn header_chunk_size_wins_over_the_requested_one() {
    let l16 = Layout { cs: 16 };
    let img = store_image(l16, 20, &[(7, 2), (8, 3)]);
    let spec = [CowSpec::p("s", img).chunk(8)];
    let rig = Rig::new(origin_image(), 512, &spec);
    let volume = rig.open(&spec, VolumeOptions::default()).unwrap();
    let snap = volume.snapshot("s").unwrap();
    assert_eq!((snap.chunk_size().sectors(), snap.exceptions()), (16, 2));
    rig.assert_untouched("opening an existing store writes nothing");
    report("header chunk size wins", 1);
}

/// `valid == 0` loads as an invalid snapshot (the kernel's behaviour): no error, nothing read
/// or written, all its I/O fails, and origin writes never copy into it. Any other value is
/// valid.
#[test]
fn header_valid_field() {
    let mut img = good_cs8_image();
    img[4..8].fill(0);
    let (volume, rig) = accept_one(img, "valid 0");
    let snap = volume.snapshot("s").unwrap();
    assert!(snap.is_invalid());
    assert_eq!(snap.status_word(), "Invalid");
    let mut buf = [0u8; 512];
    assert!(matches!(
        volume.read_snapshot(&snap, 0, &mut buf),
        Err(VolumeError::Invalid)
    ));
    volume.write_origin(0, &[1u8; 8192]).unwrap();
    rig.cows[0].assert_untouched(&rig.cow_images[0], "an invalid COW is never written");
    let values = [2u32, 0x100, u32::MAX];
    for valid in values {
        let mut img = good_cs8_image();
        img[4..8].copy_from_slice(&valid.to_le_bytes());
        let (volume, rig) = accept_one(img, &format!("valid {valid}"));
        let snap = volume.snapshot("s").unwrap();
        assert!(!snap.is_invalid(), "valid {valid}");
        assert_eq!(snap.exceptions(), 5, "valid {valid}: the list is loaded");
        rig.assert_untouched(&format!("valid {valid}"));
    }
    report("header valid", 1 + values.len());
}

/// Bytes 16..28 (snapfs's merge marker) count only when they are exactly the marker.
#[test]
fn merge_marker_garbage_is_not_a_merge() {
    let mut variants: Vec<Vec<u8>> = vec![
        b"snapfsMG\x02\x00\x00\x00".to_vec(),
        b"snapfsMG\x00\x00\x00\x00".to_vec(),
        b"snapfsMg\x01\x00\x00\x00".to_vec(),
        b"SNAPFSMG\x01\x00\x00\x00".to_vec(),
        b"snapfsM\x00\x01\x00\x00\x00".to_vec(),
        vec![0xff; 12],
    ];
    variants.push(MARKER[..8].iter().chain(&[1, 0, 0, 1]).copied().collect());
    for bytes in &variants {
        let mut img = good_cs8_image();
        img[16..28].copy_from_slice(bytes);
        let ctx = format!("marker bytes {bytes:02x?}");
        let (volume, rig) = accept_one(img, &ctx);
        assert!(volume.merging_snapshot().is_none(), "{ctx}");
        assert!(
            volume.status().contains("s: 0 2048 snapshot 56/512 16"),
            "{ctx}"
        );
        rig.assert_untouched(&ctx);
    }
    report("merge marker garbage", variants.len());
}

// ----- records --------------------------------------------------------------------------------

/// A 512-byte-chunk store of 100 chunks (areas at chunks 1, 34, 67, 100) over a 1 MiB origin
/// (2048 chunks) holding `list`.
fn cs1_image(list: &[(u64, u64)]) -> Vec<u8> {
    store_image(L1, 100, list)
}

/// `(case, list, what the error must say)`.
type RecordCase = (&'static str, Vec<(u64, u64)>, Vec<&'static str>);

fn bad_record_cases() -> Vec<RecordCase> {
    let full_area_0 = in_order(L1, 32, |k| k);
    let mut area1_bad = full_area_0.clone();
    area1_bad.push((100, 34));
    let mut dup_old_across = full_area_0.clone();
    dup_old_across.push((0, 35));
    let mut dup_new_across = full_area_0.clone();
    dup_new_across.push((500, 2));
    let meta = "points at a metadata chunk";
    let beyond_cow = "points beyond the end of the COW";
    let beyond_origin = "beyond the end of the origin";
    vec![
        (
            "new = area 0",
            vec![(0, 2), (1, 1)],
            vec!["record 1 of area 0", meta],
        ),
        ("new = area 1", vec![(0, 34)], vec!["COW chunk 34", meta]),
        ("new = area 2", vec![(0, 2), (5, 67)], vec![meta]),
        ("new = area 3", vec![(9, 100)], vec![meta]),
        ("new = COW size", vec![(0, 101)], vec![beyond_cow]),
        ("new = 1000", vec![(0, 2), (1, 1000)], vec![beyond_cow]),
        ("new = 2^56 - 1", vec![(0, (1 << 56) - 1)], vec![beyond_cow]),
        ("new = 2^56", vec![(0, 1 << 56)], vec!["beyond 2^56"]),
        (
            "new = 2^56 + 2",
            vec![(0, (1 << 56) + 2)],
            vec!["beyond 2^56"],
        ),
        ("new = 2^63", vec![(0, 1 << 63)], vec!["beyond 2^56"]),
        ("new = u64::MAX", vec![(0, u64::MAX)], vec!["beyond 2^56"]),
        (
            "old = origin size",
            vec![(2048, 2)],
            vec!["origin chunk 2048", beyond_origin],
        ),
        (
            "old = 2^56",
            vec![(0, 2), (1 << 56, 3)],
            vec![beyond_origin],
        ),
        ("old = u64::MAX", vec![(u64::MAX, 2)], vec![beyond_origin]),
        (
            "duplicate old",
            vec![(5, 2), (5, 3)],
            vec!["origin chunk 5 appears in two records"],
        ),
        (
            "duplicate new",
            vec![(5, 2), (6, 2)],
            vec!["COW chunk 2 appears in two records"],
        ),
        (
            "duplicate pair",
            vec![(5, 2), (6, 3), (5, 2)],
            vec!["appears in two records"],
        ),
        (
            "bad record in area 1",
            area1_bad,
            vec!["record 0 of area 1", meta],
        ),
        (
            "duplicate old across areas",
            dup_old_across,
            vec!["origin chunk 0 appears"],
        ),
        (
            "duplicate new across areas",
            dup_new_across,
            vec!["COW chunk 2 appears"],
        ),
    ]
}

#[test]
fn records_out_of_range_duplicated_or_on_areas_are_refused() {
    let cases = bad_record_cases();
    for (what, list, needles) in &cases {
        refuse_one(cs1_image(list), needles, what);
    }
    report("bad records", cases.len());
}

/// The edges of what is legal load, and nothing is written by loading them.
#[test]
fn records_at_the_legal_edges_load() {
    let mut after_terminator = cs1_image(&[(3, 2), (4, 3)]);
    put_record_at(&mut after_terminator, L1.record_at(0, 3), u64::MAX, 1);
    let cases: Vec<(&str, Vec<u8>, u64)> = vec![
        ("last COW chunk", cs1_image(&[(0, 99)]), 1),
        ("last origin chunk", cs1_image(&[(2047, 2)]), 1),
        (
            "out of order, with gaps",
            cs1_image(&[(9, 50), (1, 2), (2047, 35)]),
            3,
        ),
        ("junk after the terminator", after_terminator, 2),
        (
            "full area 0, empty area 1",
            cs1_image(&in_order(L1, 32, |k| 64 * k)),
            32,
        ),
    ];
    for (what, img, count) in &cases {
        let (volume, rig) = accept_one(img.clone(), what);
        assert_eq!(volume.snapshot("s").unwrap().exceptions(), *count, "{what}");
        rig.assert_untouched(what);
    }
    // The origin's last chunk may be partial: 1 MiB + 512 bytes has 257 chunks of 4 KiB.
    let spec = [CowSpec::p("s", store_image(L8, 8, &[(256, 2)]))];
    let mut origin = origin_image();
    origin.extend_from_slice(&[9u8; 512]);
    let rig = Rig::new(origin, 512, &spec);
    let volume = rig.open(&spec, VolumeOptions::default()).unwrap();
    assert_eq!(volume.snapshot("s").unwrap().exceptions(), 1);
    rig.assert_untouched("partial last chunk");
    report("legal record edges", cases.len() + 1);
}

/// An area full of records whose next area lies beyond the device: the loader cannot know
/// where the list ends.
#[test]
fn a_full_last_area_needs_the_next_one() {
    let img = store_image(L1, 34, &in_order(L1, 32, |k| k));
    refuse_one(
        img,
        &["metadata area 1 (chunk 34) lies beyond the end of the COW"],
        "full",
    );
    report("full last area", 1);
}

// ----- COW sizes ------------------------------------------------------------------------------

/// A valid store of 512-byte chunks with 100 records (areas 0-2 full, 4 records in area 3 at
/// chunk 100; the last data chunk is 104), cut at every 256 bytes: it loads exactly when every
/// area read and every chunk named is still there.
#[test]
fn truncated_cows_are_refused_until_everything_named_is_there() {
    let list = in_order(L1, 100, |k| 2 * k);
    let full = store_image(L1, 120, &list);
    let mut cases = 0;
    for len in (0..=full.len()).step_by(256).chain([27, 28, 1023, 1025]) {
        let img = full[..len].to_vec();
        let ctx = format!("cut at {len}");
        let chunks = len as u64 / 512;
        if len < 28 {
            refuse_one(img, &["cannot read the header"], &ctx);
        } else if chunks < 2 {
            refuse_one(img, &["smaller than two chunks"], &ctx);
        } else if chunks <= 104 {
            refuse_one(img, &["beyond the end of the COW"], &ctx);
        } else {
            let (volume, rig) = accept_one(img, &ctx);
            assert_eq!(volume.snapshot("s").unwrap().exceptions(), 100, "{ctx}");
            rig.assert_untouched(&ctx);
        }
        cases += 1;
    }
    report("truncated COW", cases);
}

/// Cut in the middle of an area: the 4 KiB-chunk store's area 1 is chunk 258.
#[test]
fn a_cow_cut_in_the_middle_of_an_area_is_refused() {
    let list = in_order(L8, 300, |k| k);
    let full = store_image(L8, 600, &list);
    let area1 = (L8.area(1) * L8.bytes()) as usize;
    let cuts = [area1 + 16, area1 + 2048, area1 + 4095, area1 - 2048];
    for cut in cuts {
        refuse_one(
            full[..cut].to_vec(),
            &["beyond the end of the COW"],
            &format!("cut {cut}"),
        );
    }
    report("cut in an area", cuts.len());
}

#[test]
fn new_cows_smaller_than_three_chunks_are_refused() {
    let kib = 1024;
    // Default chunk size for a new store: 32 sectors (16 KiB).
    let sizes: [(usize, &str); 9] = [
        (0, "cannot read the header"),
        (1, "cannot read the header"),
        (27, "cannot read the header"),
        (28, "needs at least 3 chunks"),
        (512, "needs at least 3 chunks"),
        (16 * kib, "needs at least 3 chunks"),
        (32 * kib, "needs at least 3 chunks"),
        (48 * kib - 512, "needs at least 3 chunks"),
        (48 * kib - 1, "needs at least 3 chunks"),
    ];
    for (len, needle) in sizes {
        refuse_one(vec![0u8; len], &[needle], &format!("{len} bytes"));
    }
    // With 4 KiB chunks asked for: 12 KiB is the least.
    let spec = [CowSpec::p("s", vec![0u8; 12 * kib - 1]).chunk(8)];
    expect_refusal(
        origin_image(),
        512,
        &spec,
        &["needs at least 3 chunks (12288 bytes)"],
        "12K-1",
    );
    let spec = [CowSpec::p("s", vec![0u8; 12 * kib]).chunk(8)];
    let rig = Rig::new(origin_image(), 512, &spec);
    let volume = rig.open(&spec, VolumeOptions::default()).unwrap();
    assert_eq!(volume.snapshot("s").unwrap().status_word(), "16/24 16");
    assert_eq!(&rig.cows[0].contents()[..16], &header_bytes(1, 1, 8));
    report("new COW too small", sizes.len() + 2);
}

/// An existing store of exactly two chunks loads but has no room: the first origin write
/// invalidates it (header `valid = 0`), as the kernel does.
#[test]
fn an_existing_two_chunk_store_fills_at_the_first_copy() {
    let (volume, rig) = accept_one(store_image(L8, 2, &[]), "two chunks");
    volume.write_origin(0, &[1u8; 512]).unwrap();
    let snap = volume.snapshot("s").unwrap();
    assert_eq!(snap.status_word(), "Invalid");
    assert_eq!(&rig.cows[0].contents()[..16], &header_bytes(0, 1, 8));
    report("two-chunk store", 1);
}

/// A transient COW with no room for one chunk opens (the kernel does not check it either) and
/// the first copy invalidates the snapshot; nothing is written to the COW.
#[test]
fn a_transient_cow_smaller_than_a_chunk_fills_at_the_first_copy() {
    let specs = [CowSpec::p("n", vec![0u8; 4095]).kind(N).chunk(8)];
    let rig = Rig::new(origin_image(), 512, &specs);
    let volume = rig.open(&specs, VolumeOptions::default()).unwrap();
    assert_eq!(volume.snapshot("n").unwrap().status_word(), "0/7 0");
    volume.write_origin(0, &[1u8; 512]).unwrap();
    assert_eq!(volume.snapshot("n").unwrap().status_word(), "Invalid");
    rig.cows[0].assert_untouched(&rig.cow_images[0], "transient COW");
    report("tiny transient COW", 1);
}

// ----- logical block sizes --------------------------------------------------------------------

/// `(case, origin block, COW block, COW image, kind, requested chunk, error needle)`.
type BlockCase = (
    &'static str,
    u32,
    u32,
    Vec<u8>,
    snapfs::store::StoreKind,
    u64,
    &'static str,
);

fn block_size_cases() -> Vec<BlockCase> {
    let fresh = || vec![0u8; 1 << 20];
    let existing = |cs: u64| store_image(Layout { cs }, 64, &[]);
    let not_multiple = "not a multiple of device blocksize";
    let on_disk = "invalid on-disk chunk size";
    vec![
        (
            "new P, 2K chunk, 4K origin",
            4096,
            512,
            fresh(),
            P,
            4,
            not_multiple,
        ),
        (
            "new PO, 512 chunk, 4K COW",
            512,
            4096,
            fresh(),
            PO,
            1,
            not_multiple,
        ),
        (
            "new P, 4K chunk, 8K COW",
            512,
            8192,
            fresh(),
            P,
            8,
            not_multiple,
        ),
        (
            "new P, default chunk, 64K origin",
            65536,
            512,
            fresh(),
            P,
            0,
            not_multiple,
        ),
        (
            "existing 2K chunk, 4K origin",
            4096,
            512,
            existing(4),
            P,
            0,
            on_disk,
        ),
        (
            "existing 512 chunk, 4K COW",
            512,
            4096,
            existing(1),
            P,
            8,
            on_disk,
        ),
        (
            "existing 4K chunk, 8K COW",
            512,
            8192,
            existing(8),
            P,
            0,
            on_disk,
        ),
        (
            "N 2K chunk, 4K origin",
            4096,
            512,
            fresh(),
            N,
            4,
            not_multiple,
        ),
        ("N 2K chunk, 4K COW", 512, 4096, fresh(), N, 4, not_multiple),
    ]
}

#[test]
fn mismatched_logical_block_sizes_are_refused() {
    let cases = block_size_cases();
    for (what, origin_block, cow_block, img, kind, chunk, needle) in &cases {
        let spec = [CowSpec::p("s", img.clone())
            .block(*cow_block)
            .kind(*kind)
            .chunk(*chunk)];
        expect_refusal(
            origin_image(),
            *origin_block,
            &spec,
            &[needle, "snapshot s"],
            what,
        );
    }
    report("block size mismatch", cases.len());
}

/// The same rules through `MemDevice::with_block_size`, and the sizes that do fit.
#[test]
fn matching_logical_block_sizes_open() {
    let origin = Arc::new(MemDevice::with_block_size("origin", ORIGIN_BYTES, 4096));
    let config = |cs, cow_block| SnapshotConfig {
        name: "s".into(),
        cow: Arc::new(MemDevice::with_block_size("cow", 1 << 20, cow_block)),
        kind: P,
        chunk_sectors: cs,
        features: Default::default(),
    };
    let err = Volume::open(
        origin.clone(),
        vec![config(4, 512)],
        VolumeOptions::default(),
    )
    .err()
    .expect("2 KiB chunks on a 4 KiB origin");
    assert_clear_error(
        &err.to_string(),
        &["not a multiple of device blocksize"],
        "mem",
    );
    for (cs, cow_block, want) in [(8, 512, 8), (0, 4096, 32), (0, 65536, 128), (16, 4096, 16)] {
        let v = Volume::open(
            origin.clone(),
            vec![config(cs, cow_block)],
            VolumeOptions::default(),
        )
        .unwrap_or_else(|e| panic!("chunk {cs} on {cow_block}: {e}"));
        assert_eq!(v.snapshot("s").unwrap().chunk_size().sectors(), want);
    }
    report("block sizes that fit", 5);
}

// ----- several snapshots, names, the origin ---------------------------------------------------

/// A refusal of any snapshot leaves every COW as it was, also the new ones before it (which
/// would otherwise be formatted).
#[test]
fn one_bad_snapshot_refuses_the_whole_volume_before_any_write() {
    let mut corrupt = good_cs8_image();
    corrupt[8] = 7;
    let mut merging = good_cs8_image();
    merging[16..28].copy_from_slice(&MARKER);
    let fresh = || vec![0u8; 1 << 20];
    let cases: Vec<(&str, Vec<CowSpec>, &str)> = vec![
        (
            "new, then corrupt",
            vec![CowSpec::p("a", fresh()), CowSpec::p("b", corrupt.clone())],
            "snapshot b (b.cow)",
        ),
        (
            "new, new, then bad block size",
            vec![
                CowSpec::p("a", fresh()),
                CowSpec::p("b", fresh()),
                CowSpec::p("c", fresh()).block(4096).chunk(1),
            ],
            "snapshot c",
        ),
        (
            "two merging",
            vec![
                CowSpec::p("a", merging.clone()),
                CowSpec::p("b", merging.clone()),
            ],
            "all marked as merging",
        ),
        (
            "two of one name",
            vec![CowSpec::p("a", fresh()), CowSpec::p("a", fresh())],
            "two snapshots are named a",
        ),
    ];
    for (what, specs, needle) in &cases {
        expect_refusal(origin_image(), 512, specs, &[needle], what);
    }
    // The one name rule (src/names.rs) holds in the library too.
    let names = [
        "",
        ".",
        "..",
        "a/b",
        "a\0b",
        &"n".repeat(128),
        "#x",
        "a,b",
        "a b",
        "-a",
    ];
    for name in names {
        let spec = [CowSpec::p(name, fresh())];
        expect_refusal(origin_image(), 512, &spec, &["snapshot name"], "name");
    }
    report("whole-volume refusals", cases.len() + names.len());
}

#[test]
fn empty_origins_are_refused_and_a_ragged_end_is_cut() {
    for len in [0usize, 1, 511] {
        let rig = Rig::new(vec![0u8; len], 512, &[]);
        let err = rig
            .open(&[], VolumeOptions::default())
            .err()
            .expect("empty origin");
        assert_clear_error(
            &err.to_string(),
            &["origin", "is empty"],
            &format!("{len} bytes"),
        );
        rig.assert_untouched("empty origin");
    }
    let rig = Rig::new(vec![3u8; 1000], 512, &[]);
    let volume = rig.open(&[], VolumeOptions::default()).unwrap();
    assert_eq!(volume.size_bytes(), 512, "the whole sectors only");
    report("origin sizes", 4);
}

/// Attaching a hostile COW to a live volume fails cleanly; the volume carries on.
#[test]
fn attaching_hostile_cows_to_a_live_volume_changes_nothing() {
    let keep = [CowSpec::p("keep", vec![0u8; 1 << 20]).chunk(8)];
    let rig = Rig::new(origin_image(), 512, &keep);
    let volume = rig.open(&keep, VolumeOptions::default()).unwrap();
    let keep_image = rig.cows[0].contents();
    let writes = rig.cows[0].writes();
    let mut hostile: Vec<(String, Vec<u8>, &str)> = bad_record_cases()
        .into_iter()
        .map(|(what, list, _)| (what.to_string(), cs1_image(&list), "invalid or corrupt"))
        .collect();
    hostile.push(("tiny".into(), vec![0u8; 100], "needs at least 3 chunks"));
    let mut bad_version = good_cs8_image();
    bad_version[8] = 2;
    hostile.push(("version 2".into(), bad_version, "disk version"));
    for (what, img, needle) in &hostile {
        let dev = Watch::new("hostile.cow", img.clone(), 512);
        let config = SnapshotConfig {
            name: "h".into(),
            cow: dev.device(),
            kind: P,
            chunk_sectors: 0,
            features: Default::default(),
        };
        let err = volume.attach_snapshot(config).err().expect("refused");
        assert_clear_error(
            &err.to_string(),
            &["snapshot h (hostile.cow)", needle],
            what,
        );
        dev.assert_untouched(img, what);
        assert!(volume.snapshot("h").is_none(), "{what}");
    }
    assert_eq!(
        rig.cows[0].writes(),
        writes,
        "the attached snapshot was not touched"
    );
    assert_eq!(rig.cows[0].contents(), keep_image);
    // The volume works on: an origin write copies into `keep`.
    volume.write_origin(4096, &[0xee; 4096]).unwrap();
    let keep_snap = volume.snapshot("keep").unwrap();
    let mut buf = vec![0u8; 4096];
    volume.read_snapshot(&keep_snap, 4096, &mut buf).unwrap();
    assert_eq!(buf, origin_image()[4096..8192]);
    report("attach hostile COW", hostile.len());
}

// ----- I/O at and past the end ----------------------------------------------------------------

/// Origin of 1 MiB + 1536 bytes (not a whole number of chunks) with a P and an N snapshot.
fn eof_rig() -> (Arc<Volume>, Rig, u64) {
    let mut origin = origin_image();
    origin.extend_from_slice(&[0xab; 1536]);
    let specs = [
        CowSpec::p("p", vec![0u8; 1 << 20]).chunk(8),
        CowSpec::p("n", vec![0u8; 1 << 20]).kind(N).chunk(8),
    ];
    let rig = Rig::new(origin, 512, &specs);
    let volume = Arc::new(rig.open(&specs, VolumeOptions::default()).unwrap());
    let size = volume.size_bytes();
    assert_eq!(size, ORIGIN_BYTES + 1536);
    (volume, rig, size)
}

/// Ranges that reach past the end: the end itself, straddling, far, and overflowing.
fn past_end_ranges(size: u64) -> Vec<(u64, u64)> {
    vec![
        (size, 1),
        (size - 1, 2),
        (size - 100, 4096),
        (size + 1, 0),
        (size + 4096, 4096),
        (1 << 62, 512),
        (u64::MAX, 1),
        (u64::MAX - 10, 20),
        (size - 512, u64::MAX - size + 600),
    ]
}

type Target = Option<Arc<snapfs::Snapshot>>;

fn read(volume: &Volume, target: &Target, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
    match target {
        None => volume.read_origin(offset, buf),
        Some(s) => volume.read_snapshot(s, offset, buf),
    }
}

fn write(volume: &Volume, target: &Target, offset: u64, p: Payload) -> Result<(), VolumeError> {
    match (target, p) {
        (None, Payload::Data(d)) => volume.write_origin(offset, d),
        (None, Payload::Zeroes(n)) => volume.zero_origin(offset, n),
        (None, Payload::Discard(n)) => volume.discard_origin(offset, n),
        (Some(s), Payload::Data(d)) => volume.write_snapshot(s, offset, d),
        (Some(s), Payload::Zeroes(n)) => volume.zero_snapshot(s, offset, n),
        (Some(s), Payload::Discard(n)) => volume.discard_snapshot(s, offset, n),
    }
}

/// Reads and writes that reach past the end fail with `OutOfRange` and touch no device; reads
/// and writes that end exactly at the end work. (The FUSE layer clips reads to the end, so a
/// read at EOF returns 0 bytes there; see tests/e2e_hostile.rs.)
#[test]
fn io_past_the_end_fails_and_writes_nothing() {
    let (volume, rig, size) = eof_rig();
    let targets: Vec<(&str, Target)> = vec![
        ("origin", None),
        ("p", volume.snapshot("p")),
        ("n", volume.snapshot("n")),
    ];
    let writes_before: Vec<u64> = rig.cows.iter().map(|c| c.writes()).collect();
    let status = volume.status();
    let mut cases = 0;
    for (name, target) in &targets {
        for (offset, len) in past_end_ranges(size) {
            let ctx = format!("{name} {offset}+{len}");
            if len <= 1 << 20 {
                let mut buf = vec![0u8; len as usize];
                let r = read(&volume, target, offset, &mut buf);
                assert!(
                    matches!(r, Err(VolumeError::OutOfRange { .. })),
                    "{ctx}: read {r:?}"
                );
                let data = vec![0x11u8; len as usize];
                let r = write(&volume, target, offset, Payload::Data(&data));
                assert!(
                    matches!(r, Err(VolumeError::OutOfRange { .. })),
                    "{ctx}: write {r:?}"
                );
            }
            for p in [Payload::Zeroes(len), Payload::Discard(len)] {
                let r = write(&volume, target, offset, p);
                assert!(
                    matches!(r, Err(VolumeError::OutOfRange { .. })),
                    "{ctx}: {r:?}"
                );
            }
            cases += 1;
        }
    }
    rig.origin
        .assert_untouched(&rig.origin_image, "origin after refused I/O");
    let writes_after: Vec<u64> = rig.cows.iter().map(|c| c.writes()).collect();
    assert_eq!(writes_before, writes_after, "no COW was written");
    assert_eq!(volume.status(), status, "no exception was allocated");
    // Empty reads at the end, and I/O ending exactly at the end, work.
    for (name, target) in &targets {
        read(&volume, target, size, &mut []).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut last = [0u8; 1536];
        read(&volume, target, size - 1536, &mut last).unwrap();
        assert_eq!(last, [0xab; 1536], "{name}: the last bytes");
        write(&volume, target, size - 1, Payload::Data(&[0x77])).unwrap();
        read(&volume, target, size - 1, &mut last[..1]).unwrap();
        assert_eq!(last[0], 0x77, "{name}: the last byte is writable");
    }
    report("I/O past the end", cases);
}

/// A read-only volume refuses every write and never writes a device, whatever is asked.
#[test]
fn a_read_only_volume_never_writes() {
    let spec = [CowSpec::p("s", good_cs8_image())];
    let rig = Rig::new(origin_image(), 512, &spec);
    let ro = VolumeOptions {
        read_only: true,
        origin_discard: true,
        ..VolumeOptions::default()
    };
    let volume = Arc::new(rig.open(&spec, ro).unwrap());
    let snap: Target = volume.snapshot("s");
    let mut cases = 0;
    for target in [None, snap.clone()] {
        for (offset, len) in [(0u64, 512u64), (12288, 8192), (ORIGIN_BYTES - 1, 1)] {
            let data = vec![0x5au8; len as usize];
            for p in [
                Payload::Data(&data),
                Payload::Zeroes(len),
                Payload::Discard(len),
            ] {
                let r = write(&volume, &target, offset, p);
                assert!(
                    matches!(r, Err(VolumeError::ReadOnly)),
                    "{offset}+{len}: {r:?}"
                );
                cases += 1;
            }
        }
    }
    let mut buf = vec![0u8; 4096];
    volume
        .read_snapshot(snap.as_ref().unwrap(), 3 * 4096, &mut buf)
        .unwrap();
    assert!(
        buf.iter().enumerate().all(|(i, &b)| b == 0x5a ^ i as u8),
        "COW data"
    );
    volume.flush_all().unwrap();
    volume.shutdown().unwrap();
    let merge = volume.start_merge(Some("s"));
    assert!(merge.is_err(), "no merge on a read-only volume");
    volume.detach_snapshot("s").unwrap();
    rig.assert_untouched("read-only volume");
    assert_eq!(
        rig.origin.flushes() + rig.cows[0].flushes(),
        0,
        "not even a flush"
    );
    report("read-only volume", cases + 1);
}

/// A COW marked as merging on a read-only volume: the merged view is served (the origin reads
/// as the snapshot did), but nothing may be written, so the merge must not resume.
///
/// BUG (src/volume/merge.rs, `Volume::resume_merge`): it starts the merge thread without
/// checking `options.read_only`, and the thread copies COW chunks onto the origin. Through the
/// FUSE mount the origin file is opened O_RDONLY, so the writes fail with EBADF and the snapshot
/// ends in `Merge failed` (see tests/e2e_hostile.rs); on a device that does not enforce the
/// mode, the origin is written. Fix: return early from `resume_merge` when the volume is
/// read-only (and `start_merge` already refuses).
#[test]
fn a_read_only_volume_does_not_resume_a_merge() {
    let mut img = good_cs8_image();
    img[16..28].copy_from_slice(&MARKER);
    let spec = [CowSpec::p("s", img)];
    let rig = Rig::new(origin_image(), 512, &spec);
    let ro = VolumeOptions {
        read_only: true,
        origin_discard: false,
        ..VolumeOptions::default()
    };
    let volume = Arc::new(rig.open(&spec, ro).unwrap());
    assert!(
        volume.merging_snapshot().is_some(),
        "the merged view is served"
    );
    let mut buf = vec![0u8; 4096];
    volume.read_origin(3 * 4096, &mut buf).unwrap();
    assert!(
        buf.iter().enumerate().all(|(i, &b)| b == 0x5a ^ i as u8),
        "merged view"
    );
    volume.resume_merge();
    volume.wait_merge();
    rig.assert_untouched("read-only volume with a merge marker");
    report("read-only merge marker", 1);
}
