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

#[path = "hostile/io.rs"]
mod io;
#[path = "hostile/records.rs"]
mod records;
#[path = "hostile/volumes.rs"]
mod volumes;

use hostile_support::*;
use snapfs::device::MemDevice;
use snapfs::rng::Rng;
use snapfs::status::dm_lines;
use snapfs::{Payload, SnapshotConfig, Volume, VolumeError, VolumeOptions};
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
            dm_lines(&volume).contains("s: 0 2048 snapshot 56/512 16"),
            "{ctx}"
        );
        rig.assert_untouched(&ctx);
    }
    report("merge marker garbage", variants.len());
}
