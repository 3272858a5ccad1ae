//! Logical block sizes of the devices, several snapshots, names and the origin: whole-volume
//! refusals, empty origins, hostile COWs attached to a live volume.

use super::records::{bad_record_cases, cs1_image};
use super::*;

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
        "a:b",
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

/// The one name rule (src/names.rs) holds for a live attach through the library too: a name
/// with a blank or a ':' would break the status lines (`NAME: 0 SECTORS snapshot ...`) and the
/// `-o snapshot=NAME:COW` option. Refused before the COW is touched; the volume carries on.
#[test]
fn attach_refuses_names_the_formats_cannot_carry() {
    let keep = [CowSpec::p("keep", vec![0u8; 1 << 20]).chunk(8)];
    let rig = Rig::new(origin_image(), 512, &keep);
    let volume = rig.open(&keep, VolumeOptions::default()).unwrap();
    let status = dm_lines(&volume);
    let names = ["a b", "a:b", "keep:0", "a\tb", "x: 0 2048 snapshot"];
    for name in names {
        let blank = vec![0u8; 1 << 20];
        let dev = Watch::new("named.cow", blank.clone(), 512);
        let config = SnapshotConfig {
            name: name.to_string(),
            cow: dev.device(),
            kind: P,
            chunk_sectors: 8,
            features: Default::default(),
        };
        let err = volume.attach_snapshot(config).err().expect("refused");
        assert_clear_error(&err.to_string(), &["snapshot name"], name);
        dev.assert_untouched(&blank, name);
        assert!(volume.snapshot(name).is_none(), "{name:?}");
        assert_eq!(dm_lines(&volume), status, "{name:?}: the status lines");
    }
    report("attach names", names.len());
}
