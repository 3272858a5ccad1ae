//! Deterministic scenarios: the open rules (chunk sizes, odd sizes), punches that read zeroes,
//! a full COW invalidating a persistent snapshot, and the overflow of a PO snapshot.

use super::*;

// ---------------------------------------------------------------------------------------------
// Deterministic scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn open_rules_chunk_sizes_and_odd_sizes() {
    let ctx = "open rules";
    // A transient store needs an explicit chunk size.
    let origin = mem("origin", 64 * KIB);
    let got = Volume::open(
        origin.device(),
        vec![SnapshotConfig {
            name: "n".into(),
            cow: mem("cow", 64 * KIB).device(),
            kind: N,
            chunk_sectors: 0,
            features: Default::default(),
        }],
        VolumeOptions::default(),
    );
    assert!(got.is_err(), "{ctx}: N with chunk size 0 was accepted");
    // P with 0 takes the default of 32 sectors; the origin's odd tail is not served.
    let size = MIB + 4 * KIB;
    let mut image = Rng::new(1).bytes(size + 100);
    image[size as usize..].fill(0xEE);
    let origin = Backing::Mem.device("origin", image.clone());
    let mut model = Model::new(image[..size as usize].to_vec());
    model.add_snapshot("p", P, 0, mem("p", roomy_cow_bytes(P, 16 * KIB, size)));
    model.add_snapshot(
        "big",
        P,
        128,
        mem("big", roomy_cow_bytes(P, 64 * KIB, size)),
    );
    model.add_snapshot("n", N, 128, mem("n", roomy_cow_bytes(N, 64 * KIB, size)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(vol.size_bytes(), size, "{ctx}: size");
    assert_eq!(
        vol.snapshot("p").unwrap().chunk_size().sectors(),
        32,
        "{ctx}"
    );
    verify_all(&vol, &model, ctx);
    // The last 64 KiB chunk holds only 4 KiB of origin.
    let data = Rng::new(2).bytes(8 * KIB);
    vol.write_origin(size - 8 * KIB, &data).unwrap();
    model.origin_write(size - 8 * KIB, 8 * KIB, Some(&data));
    let p = vol.snapshot("big").unwrap();
    vol.write_snapshot(&p, size - 100, &data[..100]).unwrap();
    model
        .snap_write(1, size - 100, 100, Some(&data[..100]))
        .unwrap();
    assert_out_of_range(vol.write_origin(size - 1, &[1, 2]), ctx);
    assert_out_of_range(vol.read_snapshot(&p, size, &mut [0]), ctx);
    verify_all(&vol, &model, ctx);
    assert_eq!(
        &origin.image()[size as usize..],
        &[0xEE; 100][..],
        "{ctx}: the origin's odd tail was written"
    );
    drop(vol);
    // An origin smaller than one chunk.
    let ctx = "origin smaller than a chunk";
    let size = 3 * SECTOR;
    let (origin, mut model) = random_origin(7, size);
    model.add_snapshot("p", P, 16, mem("p", roomy_cow_bytes(P, 8 * KIB, size)));
    model.add_snapshot("n", N, 8, mem("n", roomy_cow_bytes(N, 4 * KIB, size)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    vol.write_origin(700, &[1; 100]).unwrap();
    model.origin_write(700, 100, Some(&[1; 100]));
    let n = vol.snapshot("n").unwrap();
    vol.write_snapshot(&n, size - 10, &[2; 10]).unwrap();
    model.snap_write(1, size - 10, 10, Some(&[2; 10])).unwrap();
    assert_out_of_range(vol.write_snapshot(&n, size - 10, &[2; 11]), ctx);
    verify_all(&vol, &model, ctx);
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    verify_all(&vol, &model, ctx);
}

/// A punch reads zeroes on every chunk it covers. This test used to say the opposite
/// (`snapshot_discard_zeroes_only_chunks_with_an_exception`, and an origin discard that changed
/// nothing without `origin_discard`): that was the old behaviour, which answered 0 for a
/// `fallocate -p` whose range still read the old bytes (issue 13; docs/discard.md).
#[test]
fn snapshot_and_origin_punches_read_zeroes() {
    let ctx = "discard";
    let cb = 8 * KIB;
    let (origin, mut model) = random_origin(3, 32 * cb);
    let before = model.origin.clone();
    model.add_snapshot("p", P, 16, mem("p", roomy_cow_bytes(P, cb, 32 * cb)));
    model.add_snapshot("n", N, 16, mem("n", roomy_cow_bytes(N, cb, 32 * cb)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let p = vol.snapshot("p").unwrap();
    // Chunk 0 gets an exception by a snapshot write, chunk 2 by an origin write.
    vol.write_snapshot(&p, 100, &[7; 100]).unwrap();
    model.snap_write(0, 100, 100, Some(&[7; 100])).unwrap();
    vol.write_origin(2 * cb + 10, &[9; 10]).unwrap();
    model.origin_write(2 * cb + 10, 10, Some(&[9; 10]));
    assert_eq!(p.exceptions(), 2, "{ctx}");
    let (off, end) = (50, 3 * cb + 100);
    vol.discard_snapshot(&p, off, end - off).unwrap();
    model.snap_discard(0, off, end - off).unwrap();
    assert_eq!(p.exceptions(), 4, "{ctx}: chunks 1 and 3 get exceptions");
    let mut got = vec![0u8; 4 * cb as usize];
    vol.read_snapshot(&p, 0, &mut got).unwrap();
    // Spelled out, not just the model: zero from 50 to 3 * cb + 100, the rest as it was.
    let mut want = before[..4 * cb as usize].to_vec();
    want[off as usize..end as usize].fill(0);
    assert_bytes(&got, &want, 0, ctx);
    verify_all(&vol, &model, ctx);
    // An origin punch without the option: copied out first, zeroes afterwards.
    vol.discard_origin(5 * cb, 2 * cb).unwrap();
    model.origin_write(5 * cb, 2 * cb, None);
    assert_eq!(p.exceptions(), 6, "{ctx}: discard_origin did not copy out");
    verify_all(&vol, &model, ctx);
    drop(vol);
    // With origin_discard: the same, the device may free the space.
    model.reopened();
    let vol = open_volume(
        &origin,
        &model,
        VolumeOptions {
            read_only: false,
            origin_discard: true,
            ..VolumeOptions::default()
        },
        ctx,
    );
    let p = vol.snapshot("p").unwrap();
    vol.discard_origin(9 * cb, 2 * cb).unwrap();
    model.origin_write(9 * cb, 2 * cb, None);
    assert_eq!(p.exceptions(), 8, "{ctx}: discard_origin did not copy out");
    verify_all(&vol, &model, ctx);
}

#[test]
fn cow_full_invalidates_a_persistent_snapshot() {
    let ctx = "COW full (P)";
    let cb = 4 * KIB;
    let size = 256 * KIB;
    let (origin, mut model) = random_origin(4, size);
    // 8 chunks: header, area 0, data chunks 2..=7: room for 6 exceptions.
    model.add_snapshot("small", P, 8, mem("small", 8 * cb));
    model.add_snapshot("big", P, 16, mem("big", roomy_cow_bytes(P, 8 * KIB, size)));
    model.add_snapshot("n", N, 8, mem("n", roomy_cow_bytes(N, cb, size)));
    assert_eq!(model.snaps[0].capacity, 6, "{ctx}");
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let small = vol.snapshot("small").unwrap();
    for c in 0..6 {
        let data = [c as u8 + 1; 100];
        vol.write_origin(c * cb + 7, &data).unwrap();
        model.origin_write(c * cb + 7, 100, Some(&data));
    }
    let words = status_words(&vol, ctx);
    assert_eq!(words[0].1, "64/64 16", "{ctx}: full but valid");
    verify_all(&vol, &model, ctx);
    // The seventh chunk cannot be copied: the snapshot dies, the origin write succeeds.
    vol.write_origin(10 * cb, &[0xAB; 4096]).unwrap();
    model.origin_write(10 * cb, 4096, Some(&[0xAB; 4096]));
    assert_eq!(model.snaps[0].state, SnapState::Invalid, "{ctx}: model");
    assert_eq!(status_words(&vol, ctx)[0].1, "Invalid", "{ctx}");
    let mut buf = [0u8; 512];
    assert!(
        matches!(
            vol.read_snapshot(&small, 0, &mut buf),
            Err(VolumeError::Invalid)
        ),
        "{ctx}"
    );
    assert!(
        matches!(
            vol.write_snapshot(&small, 0, &buf),
            Err(VolumeError::Invalid)
        ),
        "{ctx}"
    );
    assert!(
        matches!(vol.zero_snapshot(&small, 0, 512), Err(VolumeError::Invalid)),
        "{ctx}"
    );
    assert!(
        matches!(
            vol.discard_snapshot(&small, 0, 512),
            Err(VolumeError::Invalid)
        ),
        "{ctx}"
    );
    assert_eq!(
        header_valid(&model.snaps[0].cow.image()),
        0,
        "{ctx}: header valid=0"
    );
    // Later origin writes go on; the other snapshots keep their content.
    vol.write_origin(0, &[0xCD; 64 * 1024]).unwrap();
    model.origin_write(0, 64 * KIB, Some(&[0xCD; 64 * 1024]));
    verify_all(&vol, &model, ctx);
    // A snapshot write that needs room invalidates a P snapshot (it does not overflow).
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(
        status_words(&vol, ctx)[0].1,
        "Invalid",
        "{ctx}: after reopen"
    );
    verify_all(&vol, &model, ctx);
    drop(vol);
    let (origin, mut model) = random_origin(5, size);
    model.add_snapshot("small", P, 8, mem("small", 3 * cb));
    assert_eq!(model.snaps[0].capacity, 1, "{ctx}");
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let small = vol.snapshot("small").unwrap();
    vol.write_snapshot(&small, 0, &[1; 10]).unwrap();
    model.snap_write(0, 0, 10, Some(&[1; 10])).unwrap();
    vol.write_snapshot(&small, 4, &[2; 10]).unwrap();
    model.snap_write(0, 4, 10, Some(&[2; 10])).unwrap();
    let got = vol.write_snapshot(&small, cb, &[3; 10]);
    assert_result(got, model.snap_write(0, cb, 10, Some(&[3; 10])), ctx);
    assert_eq!(model.snaps[0].state, SnapState::Invalid, "{ctx}: model");
    verify_all(&vol, &model, ctx);
}

#[test]
fn overflow_of_a_po_snapshot() {
    let ctx = "COW full (PO)";
    let cb = 4 * KIB;
    let size = 256 * KIB;
    let (origin, mut model) = random_origin(6, size);
    model.add_snapshot("po", PO, 8, mem("po", 8 * cb));
    model.add_snapshot("big", P, 1, mem("big", roomy_cow_bytes(P, SECTOR, size)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let po = vol.snapshot("po").unwrap();
    let write = |vol: &Volume, model: &mut Model, off: u64, data: &[u8]| {
        let got = vol.write_snapshot(&vol.snapshot("po").unwrap(), off, data);
        let want = model.snap_write(0, off, data.len() as u64, Some(data));
        assert_result(
            got,
            want,
            &format!("{ctx}: snapshot write {off}+{}", data.len()),
        );
    };
    // Four of six chunks used, one of them whole.
    write(&vol, &mut model, 0, &[1; 4096]);
    write(&vol, &mut model, cb + 1, &[2; 10]);
    write(&vol, &mut model, 2 * cb + 4000, &[3; 200]);
    assert_eq!(status_words(&vol, ctx)[0].1, "48/64 16", "{ctx}");
    // A write needing three chunks with two left: overflow; nothing of it lands.
    write(&vol, &mut model, 4 * cb + 5, &[4; 2 * 4096]);
    assert_eq!(model.snaps[0].state, SnapState::Overflow, "{ctx}: model");
    assert_eq!(status_words(&vol, ctx)[0].1, "Overflow", "{ctx}");
    verify_all(&vol, &model, ctx);
    // Every write now fails, also to chunks with an exception; reads work.
    write(&vol, &mut model, 0, &[5; 10]);
    assert!(
        matches!(vol.zero_snapshot(&po, 0, 10), Err(VolumeError::Overflow)),
        "{ctx}"
    );
    assert!(
        matches!(vol.discard_snapshot(&po, 0, 10), Err(VolumeError::Overflow)),
        "{ctx}"
    );
    // Origin writes still copy while there is room.
    vol.write_origin(9 * cb, &[6; 100]).unwrap();
    model.origin_write(9 * cb, 100, Some(&[6; 100]));
    assert_eq!(po.exceptions(), 5, "{ctx}: the origin write copied out");
    assert_eq!(model.snaps[0].state, SnapState::Overflow, "{ctx}: model");
    verify_all(&vol, &model, ctx);
    // Overflow is not persistent; the figures are the same after a reopen.
    let usage = po.usage().to_string();
    assert_eq!(usage, "56/64 16", "{ctx}");
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(status_words(&vol, ctx)[0].1, usage, "{ctx}: after reopen");
    verify_all(&vol, &model, ctx);
    write(&vol, &mut model, 0, &[7; 10]);
    write(&vol, &mut model, 12 * cb, &[8; 10]);
    write(&vol, &mut model, 13 * cb, &[9; 10]);
    assert_eq!(model.snaps[0].state, SnapState::Overflow, "{ctx}: model");
    assert_eq!(status_words(&vol, ctx)[0].1, "Overflow", "{ctx}");
    // An origin write needing a copy with no room left invalidates it.
    vol.write_origin(20 * cb, &[10; 100]).unwrap();
    model.origin_write(20 * cb, 100, Some(&[10; 100]));
    assert_eq!(model.snaps[0].state, SnapState::Invalid, "{ctx}: model");
    verify_all(&vol, &model, ctx);
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(
        header_valid(&model.snaps[0].cow.image()),
        0,
        "{ctx}: header valid=0"
    );
    verify_all(&vol, &model, ctx);
}
