//! Records out of range, duplicated or on areas; the legal edges; a full last area; COW sizes:
//! truncated, cut in an area, too small for a new store, two-chunk and tiny transient stores.

use super::*;

// ----- records --------------------------------------------------------------------------------

/// A 512-byte-chunk store of 100 chunks (areas at chunks 1, 34, 67, 100) over a 1 MiB origin
/// (2048 chunks) holding `list`.
pub(super) fn cs1_image(list: &[(u64, u64)]) -> Vec<u8> {
    store_image(L1, 100, list)
}

/// `(case, list, what the error must say)`.
type RecordCase = (&'static str, Vec<(u64, u64)>, Vec<&'static str>);

pub(super) fn bad_record_cases() -> Vec<RecordCase> {
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
