//! Zeroing and punching (issue 13): what `fallocate` PUNCH_HOLE, ZERO_RANGE and plain
//! allocation do on the origin and on snapshots, with the kernel's discard features
//! (`discard_zeroes_cow`, `discard_passdown_origin`), checked against a byte model. The rules
//! are in docs/discard.md; the one that matters most: after a punch that succeeded, the range
//! reads zeroes, on every file and in every configuration.
//!
//! Seeds: `SNAPFS_SEED=<n>` replays one, `SNAPFS_SEEDS=<count>` runs more.

mod common;

use common::*;
use snapfs::device::{BlockDevice, Device, DeviceHooks, FileDevice, MemDevice, OpenMode, Wrapped};
use snapfs::features::SnapshotFeatures;
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{Snapshot, SnapshotConfig, Volume, VolumeError, VolumeOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const NONE: SnapshotFeatures = SnapshotFeatures {
    discard_zeroes_cow: false,
    discard_passdown_origin: false,
    autoextend: None,
    backup: None,
};
const ZEROES_COW: SnapshotFeatures = SnapshotFeatures {
    discard_zeroes_cow: true,
    discard_passdown_origin: false,
    autoextend: None,
    backup: None,
};
const PASSDOWN: SnapshotFeatures = SnapshotFeatures {
    discard_zeroes_cow: true,
    discard_passdown_origin: true,
    autoextend: None,
    backup: None,
};

fn config(s: &SnapModel, features: SnapshotFeatures) -> SnapshotConfig {
    SnapshotConfig {
        features,
        ..s.config()
    }
}

/// Opens the model's snapshots with the given features (in model order).
fn open(
    origin: &Dev,
    model: &Model,
    features: &[SnapshotFeatures],
    options: VolumeOptions,
) -> Volume {
    let configs = model
        .snaps
        .iter()
        .zip(features)
        .map(|(s, &f)| config(s, f))
        .collect();
    Volume::open(origin.device(), configs, options).unwrap()
}

fn read_snap(vol: &Volume, snap: &Snapshot, off: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    vol.read_snapshot(snap, off, &mut buf).unwrap();
    buf
}

fn read_origin(vol: &Volume, off: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    vol.read_origin(off, &mut buf).unwrap();
    buf
}

fn options(origin_discard: bool) -> VolumeOptions {
    VolumeOptions {
        read_only: false,
        origin_discard,
        ..VolumeOptions::default()
    }
}

/// The model of a `discard_passdown_origin` punch of snapshot `i`: the snapshot reads zeroes
/// (its exceptions zeroed in the COW, the rest read the origin), the origin reads zeroes, and
/// so does every other snapshot where it reads the origin (no copy-out: the kernel's
/// passdown). No exception is allocated.
fn model_passdown(model: &mut Model, i: usize, off: u64, len: u64) -> Result<(), Want> {
    match model.snaps[i].state {
        SnapState::Invalid => return Err(Want::Invalid),
        SnapState::Overflow => return Err(Want::Overflow),
        SnapState::Active => {}
    }
    if len == 0 {
        return Ok(());
    }
    let range = off as usize..(off + len) as usize;
    model.origin[range.clone()].fill(0);
    model.snaps[i].data[range].fill(0);
    for s in &mut model.snaps {
        let cb = s.chunk_bytes;
        for c in off / cb..=(off + len - 1) / cb {
            if !s.excepted[c as usize] {
                let lo = (c * cb).max(off) as usize;
                let hi = ((c + 1) * cb).min(off + len) as usize;
                s.data[lo..hi].fill(0);
            }
        }
    }
    Ok(())
}

/// The model of a plain allocation of snapshot `i` (`reserve_snapshot`): every chunk without
/// an exception gets one, the content does not change; `NoSpace` and nothing changed when they
/// do not fit.
fn model_reserve(model: &mut Model, i: usize, off: u64, len: u64) -> Result<(), Want> {
    let s = &mut model.snaps[i];
    match s.state {
        SnapState::Invalid => return Err(Want::Invalid),
        SnapState::Overflow => return Err(Want::Overflow),
        SnapState::Active => {}
    }
    if len == 0 {
        return Ok(());
    }
    let cb = s.chunk_bytes;
    let missing: Vec<u64> = (off / cb..=(off + len - 1) / cb)
        .filter(|&c| !s.excepted[c as usize])
        .collect();
    if s.exceptions + missing.len() as u64 > s.capacity {
        return Err(Want::NoSpace);
    }
    for &c in &missing {
        s.excepted[c as usize] = true;
    }
    s.exceptions += missing.len() as u64;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Deterministic cases
// ---------------------------------------------------------------------------------------------

/// `fallocate -p` on the origin: copied out first, then zeroes, with `origin_discard` or
/// without (before issue 13, without it the punch answered 0 and changed nothing).
#[test]
fn origin_punch_reads_zeroes_and_snapshots_keep_their_data() {
    for origin_discard in [false, true] {
        let ctx = format!("origin punch (origin_discard {origin_discard})");
        let cb = 8 * KIB;
        let size = 64 * cb + 1536;
        let (origin, mut model) = random_origin(11, size);
        let initial = model.origin.clone();
        model.add_snapshot("p", P, 16, mem("p", roomy_cow_bytes(P, cb, size)));
        model.add_snapshot("n", N, 8, mem("n", roomy_cow_bytes(N, 4 * KIB, size)));
        let vol = open(&origin, &model, &[NONE, NONE], options(origin_discard));
        // Sub-chunk, chunk-crossing, and the last bytes of the volume.
        for (off, len) in [
            (100, 300),
            (3 * cb - 700, 2 * cb + 1400),
            (size - 2000, 2000),
        ] {
            vol.discard_origin(off, len).unwrap();
            model.origin_write(off, len, None);
            assert!(
                read_origin(&vol, off, len).iter().all(|&b| b == 0),
                "{ctx}: origin {off}+{len} reads zeroes"
            );
        }
        for name in ["p", "n"] {
            let s = vol.snapshot(name).unwrap();
            assert_bytes(&read_snap(&vol, &s, 0, size), &initial, 0, &ctx);
        }
        verify_all(&vol, &model, &ctx);
    }
}

/// `fallocate -p` on a snapshot file without passdown: every chunk of the range reads zeroes
/// (those without an exception get one), with `discard_zeroes_cow` or without; the origin and
/// the other snapshots do not change. Before issue 13 only chunks with an exception were
/// zeroed.
#[test]
fn snapshot_punch_zeroes_chunks_with_and_without_exceptions() {
    for features in [NONE, ZEROES_COW] {
        let ctx = format!("snapshot punch ({features:?})");
        let cb = 4 * KIB;
        let size = 32 * cb;
        let (origin, mut model) = random_origin(12, size);
        let initial = model.origin.clone();
        model.add_snapshot("s", P, 8, mem("s", roomy_cow_bytes(P, cb, size)));
        model.add_snapshot("t", P, 8, mem("t", roomy_cow_bytes(P, cb, size)));
        let vol = open(&origin, &model, &[features, NONE], options(false));
        let s = vol.snapshot("s").unwrap();
        // Chunk 2 excepted by a snapshot write, chunk 4 by an origin write.
        vol.write_snapshot(&s, 2 * cb + 5, &[7; 50]).unwrap();
        model.snap_write(0, 2 * cb + 5, 50, Some(&[7; 50])).unwrap();
        vol.write_origin(4 * cb, &[9; 10]).unwrap();
        model.origin_write(4 * cb, 10, Some(&[9; 10]));
        let origin_now = model.origin.clone();
        let (off, end) = (cb + 100, 6 * cb - 100);
        vol.discard_snapshot(&s, off, end - off).unwrap();
        model.snap_discard(0, off, end - off).unwrap();
        let mut want = initial.clone();
        want[off as usize..end as usize].fill(0);
        assert_bytes(&read_snap(&vol, &s, 0, size), &want, 0, &ctx);
        assert_eq!(s.exceptions(), 5, "{ctx}: chunks 1..=5 have exceptions");
        assert_bytes(&read_origin(&vol, 0, size), &origin_now, 0, &ctx);
        let t = vol.snapshot("t").unwrap();
        assert_bytes(&read_snap(&vol, &t, 0, size), &initial, 0, &ctx);
        verify_all(&vol, &model, &ctx);
        drop(vol);
        // Durable: the same after a reopen.
        let vol = open(&origin, &model, &[features, NONE], options(false));
        verify_all(&vol, &model, &format!("{ctx}, reopened"));
    }
}

/// `discard_passdown_origin`: the snapshot's exceptions are zeroed in its COW and the range is
/// punched on the origin device without any copy-out, as the kernel passes the discard down:
/// no exception is allocated; the origin and the other snapshots' origin-read chunks read
/// zeroes too (a snapshot with its own copy keeps it).
#[test]
fn passdown_punches_the_origin_without_copy_out() {
    let ctx = "passdown";
    let cb = 4 * KIB;
    let size = 32 * cb;
    let (origin, mut model) = random_origin(13, size);
    model.add_snapshot("s", P, 8, mem("s", roomy_cow_bytes(P, cb, size)));
    model.add_snapshot("t", N, 16, mem("t", roomy_cow_bytes(N, 2 * cb, size)));
    let vol = open(&origin, &model, &[PASSDOWN, NONE], options(false));
    let (s, t) = (vol.snapshot("s").unwrap(), vol.snapshot("t").unwrap());
    vol.write_snapshot(&s, 3 * cb, &[5; 100]).unwrap();
    model.snap_write(0, 3 * cb, 100, Some(&[5; 100])).unwrap();
    // t copies chunks 8..=9 (its chunk 4) by an origin write.
    vol.write_origin(8 * cb + 1, &[6; 3]).unwrap();
    model.origin_write(8 * cb + 1, 3, Some(&[6; 3]));
    let (ns, nt) = (s.exceptions(), t.exceptions());
    let t_before = read_snap(&vol, &t, 0, size);
    let (off, end) = (2 * cb + 512, 10 * cb + 512);
    vol.discard_snapshot(&s, off, end - off).unwrap();
    model_passdown(&mut model, 0, off, end - off).unwrap();
    assert_eq!(
        (s.exceptions(), t.exceptions()),
        (ns, nt),
        "{ctx}: no copy-out"
    );
    assert!(read_snap(&vol, &s, off, end - off).iter().all(|&b| b == 0));
    assert!(read_origin(&vol, off, end - off).iter().all(|&b| b == 0));
    // t: its own copy (origin chunks 8..=9) kept, the rest of the range follows the origin.
    let t_after = read_snap(&vol, &t, 0, size);
    let mut want = t_before.clone();
    want[off as usize..8 * cb as usize].fill(0);
    want[10 * cb as usize..end as usize].fill(0);
    assert_bytes(&t_after, &want, 0, ctx);
    verify_all(&vol, &model, ctx);
}

/// The kernel's rule: passdown without `discard_zeroes_cow` is refused, with its message.
#[test]
fn passdown_needs_discard_zeroes_cow() {
    let (origin, mut model) = random_origin(14, 64 * KIB);
    model.add_snapshot("s", P, 8, mem("s", 64 * KIB));
    let bad = SnapshotFeatures {
        discard_zeroes_cow: false,
        discard_passdown_origin: true,
        autoextend: None,
        backup: None,
    };
    let cow_before = model.snaps[0].cow.image();
    let e = Volume::open(
        origin.device(),
        vec![config(&model.snaps[0], bad)],
        VolumeOptions::default(),
    )
    .err()
    .expect("refused");
    assert!(
        e.to_string()
            .contains("discard_passdown_origin feature depends on discard_zeroes_cow"),
        "{e}"
    );
    assert!(model.snaps[0].cow.image() == cow_before, "nothing written");
}

/// A punch that needs more exceptions than the COW holds fails with `NoSpace` and changes
/// nothing: no overflow, no invalidation (a ZERO_RANGE, like a write, does invalidate or
/// overflow). Chunks that already have exceptions can still be punched.
#[test]
fn a_punch_on_a_full_cow_fails_and_changes_nothing() {
    for kind in [P, PO] {
        let ctx = format!("full COW ({kind})");
        let cb = 4 * KIB;
        let size = 64 * cb;
        let (origin, mut model) = random_origin(15, size);
        // Header, area, 6 data chunks.
        model.add_snapshot("small", kind, 8, mem("small", 8 * cb));
        let vol = open(&origin, &model, &[ZEROES_COW], options(false));
        let s = vol.snapshot("small").unwrap();
        for c in 0..5 {
            vol.write_snapshot(&s, c * 2 * cb, &[c as u8 + 1; 10])
                .unwrap();
            model
                .snap_write(0, c * 2 * cb, 10, Some(&[c as u8 + 1; 10]))
                .unwrap();
        }
        let images = (origin.image(), model.snaps[0].cow.image());
        let status = dm_lines(&vol);
        let r = vol.discard_snapshot(&s, 0, 10 * cb);
        assert!(matches!(r, Err(VolumeError::NoSpace)), "{ctx}: {r:?}");
        assert_result(r, model.snap_discard(0, 0, 10 * cb), &ctx);
        assert_eq!(dm_lines(&vol), status, "{ctx}: status");
        assert!(
            (origin.image(), model.snaps[0].cow.image()) == images,
            "{ctx}: a refused punch wrote"
        );
        let r = vol.reserve_snapshot(&s, 0, 10 * cb);
        assert_result(r, model_reserve(&mut model, 0, 0, 10 * cb), &ctx);
        verify_all(&vol, &model, &ctx);
        // One chunk left: a punch over excepted chunks and one new chunk fits.
        vol.discard_snapshot(&s, 2 * cb + 7, 2 * cb).unwrap();
        model.snap_discard(0, 2 * cb + 7, 2 * cb).unwrap();
        verify_all(&vol, &model, &ctx);
        // ZERO_RANGE is a write: the full COW overflows (PO) or invalidates (P).
        let r = vol.zero_snapshot(&s, 20 * cb, cb);
        assert_result(r, model.snap_write(0, 20 * cb, cb, None), &ctx);
        verify_all(&vol, &model, &ctx);
    }
}

/// Plain allocation (mode 0) of a snapshot file reserves: later writes to the range need no
/// allocation, so they cannot fail for lack of COW space; the content does not change.
#[test]
fn reserve_allocates_and_keeps_the_content() {
    let ctx = "reserve";
    let cb = 4 * KIB;
    let size = 16 * cb;
    let (origin, mut model) = random_origin(16, size);
    // Room for 6 exceptions.
    model.add_snapshot("s", PO, 8, mem("s", 8 * cb));
    let vol = open(&origin, &model, &[NONE], options(false));
    let s = vol.snapshot("s").unwrap();
    vol.reserve_snapshot(&s, cb + 1, 3 * cb).unwrap();
    model_reserve(&mut model, 0, cb + 1, 3 * cb).unwrap();
    assert_eq!(s.exceptions(), 4, "{ctx}");
    verify_all(&vol, &model, ctx);
    // Fill the COW elsewhere; writes to the reserved range still work.
    vol.write_snapshot(&s, 10 * cb, &vec![3; 2 * cb as usize])
        .unwrap();
    model
        .snap_write(0, 10 * cb, 2 * cb, Some(&vec![3; 2 * cb as usize]))
        .unwrap();
    let data = vec![8u8; 4 * cb as usize];
    vol.write_snapshot(&s, cb, &data).unwrap();
    model.snap_write(0, cb, 4 * cb, Some(&data)).unwrap();
    // Origin writes no longer copy those chunks.
    vol.write_origin(cb, &data).unwrap();
    model.origin_write(cb, 4 * cb, Some(&data));
    verify_all(&vol, &model, ctx);
    let r = vol.reserve_snapshot(&s, 12 * cb, cb);
    assert!(matches!(r, Err(VolumeError::NoSpace)), "{ctx}: {r:?}");
    assert_result(r, model_reserve(&mut model, 0, 12 * cb, cb), ctx);
    verify_all(&vol, &model, ctx);
}

/// Past the end and on a read-only volume: the passdown punch and the reservation refuse as
/// every other write does, and write nothing.
#[test]
fn passdown_and_reserve_refuse_past_the_end_and_read_only() {
    let cb = 4 * KIB;
    let size = 16 * cb;
    let (origin, mut model) = random_origin(17, size);
    model.add_snapshot("s", P, 8, mem("s", roomy_cow_bytes(P, cb, size)));
    let vol = open(&origin, &model, &[PASSDOWN], options(true));
    let s = vol.snapshot("s").unwrap();
    let images = (origin.image(), model.snaps[0].cow.image());
    for (off, len) in [(size, 1), (size - 1, 2), (u64::MAX, 1), (0, size + 1)] {
        assert_out_of_range(vol.discard_snapshot(&s, off, len), "passdown past the end");
        assert_out_of_range(vol.reserve_snapshot(&s, off, len), "reserve past the end");
        assert_out_of_range(vol.discard_origin(off, len), "origin punch past the end");
    }
    assert!((origin.image(), model.snaps[0].cow.image()) == images);
    // The last byte works.
    vol.discard_snapshot(&s, size - 1, 1).unwrap();
    model_passdown(&mut model, 0, size - 1, 1).unwrap();
    verify_all(&vol, &model, "last byte");
    drop(vol);
    let ro = VolumeOptions::read_only(true);
    let vol = open(&origin, &model, &[PASSDOWN], ro);
    let s = vol.snapshot("s").unwrap();
    let images = (origin.image(), model.snaps[0].cow.image());
    for r in [
        vol.discard_snapshot(&s, 0, cb),
        vol.reserve_snapshot(&s, 0, cb),
        vol.zero_snapshot(&s, 0, cb),
        vol.discard_origin(0, cb),
    ] {
        assert!(matches!(r, Err(VolumeError::ReadOnly)), "{r:?}");
    }
    assert!((origin.image(), model.snaps[0].cow.image()) == images);
}

// ---------------------------------------------------------------------------------------------
// During a merge
// ---------------------------------------------------------------------------------------------

/// A COW whose reads by the merge thread wait at a gate until it is opened: the merge stays on
/// its first step while the test works on the other chunks still in the COW.
struct GatedCow {
    open: AtomicBool,
    waiting: AtomicBool,
}

impl DeviceHooks<dyn BlockDevice> for GatedCow {
    fn read_at(&self, inner: &dyn BlockDevice, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let merge = std::thread::current()
            .name()
            .is_some_and(|n| n.starts_with("merge-"));
        while merge && !self.open.load(Ordering::Acquire) {
            self.waiting.store(true, Ordering::Release);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        inner.read_at(buf, offset)
    }
}

/// An origin punch while a snapshot merges into the origin: chunks still in the merging COW
/// are zeroed there (the merge copies the zeroes back), the rest on the origin; the origin
/// reads zeroes over the range during the merge and after it, with `origin_discard` or
/// without. Another snapshot keeps its data (copied out first). Before issue 13 the merging
/// chunks kept their data (and without the option nothing was zeroed at all).
#[test]
fn an_origin_punch_during_a_merge_reads_zeroes() {
    for origin_discard in [false, true] {
        let ctx = format!("punch during merge (origin_discard {origin_discard})");
        let cb = 4 * KIB;
        let size = 64 * cb;
        let initial = Rng::new(18).bytes(size);
        let origin: Device = Arc::new(MemDevice::from_bytes("origin", initial.clone(), 512));
        let gate = Arc::new(Wrapped::around(
            Arc::new(MemDevice::new("m", 128 * cb)) as Device,
            GatedCow {
                open: AtomicBool::new(false),
                waiting: AtomicBool::new(false),
            },
        ));
        let other: Device = Arc::new(MemDevice::new("o", 128 * cb));
        let cfg = |name: &str, cow: Device| SnapshotConfig {
            name: name.to_string(),
            cow,
            kind: P,
            chunk_sectors: 8,
            features: NONE,
        };
        let vol = Arc::new(
            Volume::open(
                origin,
                vec![cfg("m", gate.clone()), cfg("o", other)],
                options(origin_discard),
            )
            .unwrap(),
        );
        // Every other chunk of the first 40 copied into m (and o): separate runs.
        let mut view = initial.clone();
        for c in (0..40).step_by(2) {
            let data = vec![c as u8 + 1; cb as usize];
            vol.write_origin(c * cb, &data).unwrap();
        }
        let o_view = initial.clone();
        vol.start_merge("m").unwrap();
        while !gate.waiting.load(Ordering::Acquire) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // The merge holds the tail run (chunk 38); punch chunks 3..=11, half still in m's COW.
        let (off, end) = (3 * cb + 100, 12 * cb - 100);
        vol.discard_origin(off, end - off).unwrap();
        view[off as usize..end as usize].fill(0);
        assert_bytes(&read_origin(&vol, 0, size), &view, 0, &ctx);
        gate.open.store(true, Ordering::Release);
        vol.wait_merge();
        assert!(vol.snapshot("m").is_none(), "{ctx}: merged");
        assert_bytes(&read_origin(&vol, 0, size), &view, 0, &ctx);
        let o = vol.snapshot("o").unwrap();
        assert_bytes(&read_snap(&vol, &o, 0, size), &o_view, 0, &ctx);
    }
}

// ---------------------------------------------------------------------------------------------
// What the features change on the COW's space (files)
// ---------------------------------------------------------------------------------------------

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("snapfs-zeroing-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// On COW and origin files: a punch without a feature or option writes zeroes that keep their
/// blocks (a preallocated COW stays preallocated); `discard_zeroes_cow` frees the COW's blocks,
/// `origin_discard` the origin's. The data is zero either way.
#[test]
fn features_decide_whether_a_punch_frees_space() {
    let cb = 64 * KIB;
    let size = 32 * cb;
    for (features, origin_discard) in [(NONE, false), (ZEROES_COW, true)] {
        let ctx = format!("{features:?}, origin_discard {origin_discard}");
        let dir = temp_dir(&format!("space-{origin_discard}"));
        std::fs::write(dir.join("origin"), Rng::new(19).bytes(size)).unwrap();
        std::fs::write(dir.join("cow"), vec![0u8; (3 * size) as usize]).unwrap();
        let open_dev = |n: &str| -> Device {
            Arc::new(FileDevice::open(&dir.join(n), OpenMode::ReadWrite).unwrap())
        };
        let (origin, cow) = (open_dev("origin"), open_dev("cow"));
        let vol = Volume::open(
            origin.clone(),
            vec![SnapshotConfig {
                name: "s".into(),
                cow: cow.clone(),
                kind: P,
                chunk_sectors: cb / SECTOR,
                features,
            }],
            options(origin_discard),
        )
        .unwrap();
        let s = vol.snapshot("s").unwrap();
        vol.write_snapshot(&s, 0, &vec![1u8; (8 * cb) as usize])
            .unwrap();
        vol.flush_all().unwrap();
        let (cow_before, origin_before) = (
            cow.allocated_bytes().unwrap(),
            origin.allocated_bytes().unwrap(),
        );
        vol.discard_snapshot(&s, 0, 8 * cb).unwrap();
        vol.discard_origin(16 * cb, 8 * cb).unwrap();
        vol.flush_all().unwrap();
        assert!(
            read_snap(&vol, &s, 0, 8 * cb).iter().all(|&b| b == 0),
            "{ctx}"
        );
        assert!(
            read_origin(&vol, 16 * cb, 8 * cb).iter().all(|&b| b == 0),
            "{ctx}"
        );
        let (cow_after, origin_after) = (
            cow.allocated_bytes().unwrap(),
            origin.allocated_bytes().unwrap(),
        );
        if features.discard_zeroes_cow {
            assert!(
                cow_after + 8 * cb <= cow_before,
                "{ctx}: the COW frees the punched chunks ({cow_before} -> {cow_after})"
            );
        } else {
            assert!(
                cow_after >= cow_before,
                "{ctx}: the COW keeps its blocks ({cow_before} -> {cow_after})"
            );
        }
        if origin_discard {
            assert!(
                origin_after + 8 * cb <= origin_before,
                "{ctx}: the origin frees the punched range ({origin_before} -> {origin_after})"
            );
        } else {
            assert!(
                origin_after >= origin_before,
                "{ctx}: the origin keeps its blocks ({origin_before} -> {origin_after})"
            );
        }
        drop(vol);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------------------------------------
// Random operations against the model
// ---------------------------------------------------------------------------------------------

/// A random range of `[0, size)`: small, chunk-sized or large, sometimes at the very end.
fn gen_range(rng: &mut Rng, size: u64) -> (u64, u64) {
    let len = match rng.below(4) {
        0 => rng.between(1, 600),
        1 => rng.between(1, 12 * KIB),
        2 => rng.between(1, 64 * KIB),
        _ => rng.pick(&[4 * KIB, 8 * KIB, 16 * KIB]),
    }
    .min(size);
    let off = if rng.chance(10) {
        size - len
    } else {
        rng.between(0, size - len)
    };
    (off, len)
}

fn run_random(seed: u64) {
    let mut rng = Rng::new(seed);
    let size = 256 * KIB + 1536;
    let (origin, mut model) = random_origin(seed, size);
    let origin_discard = rng.chance(50);
    // (name, kind, chunk sectors, features, COW bytes): one of each feature set, two small COWs
    // so that punches, reservations and writes find them full.
    let specs: [(&str, StoreKind, u64, SnapshotFeatures, u64); 4] = [
        ("plain", P, 16, NONE, roomy_cow_bytes(P, 8 * KIB, size)),
        ("zc", PO, 8, ZEROES_COW, 24 * 4 * KIB),
        ("pd", N, 32, PASSDOWN, roomy_cow_bytes(N, 16 * KIB, size)),
        ("small", P, 8, NONE, 20 * 4 * KIB),
    ];
    let mut features = Vec::new();
    for (name, kind, sectors, f, cow_bytes) in specs {
        model.add_snapshot(name, kind, sectors, mem(name, cow_bytes));
        features.push(f);
    }
    let vol = open(&origin, &model, &features, options(origin_discard));
    let ctx0 = format!("seed {seed} (replay: SNAPFS_SEED={seed}), origin_discard {origin_discard}");
    for step in 0..300 {
        let (off, len) = gen_range(&mut rng, size);
        let i = rng.below(model.snaps.len() as u64) as usize;
        let snap = vol.snapshot(&model.snaps[i].name).unwrap();
        let op = rng.below(100);
        let ctx = format!(
            "{ctx0}, step {step}, op {op} {off}+{len} on {}",
            snap.name()
        );
        match op {
            0..=11 => {
                let data = rng.bytes(len);
                vol.write_origin(off, &data).unwrap();
                model.origin_write(off, len, Some(&data));
            }
            12..=16 => {
                vol.zero_origin(off, len).unwrap();
                model.origin_write(off, len, None);
            }
            17..=28 => {
                vol.discard_origin(off, len).unwrap();
                model.origin_write(off, len, None);
            }
            29..=40 => {
                let data = rng.bytes(len);
                let want = model.snap_write(i, off, len, Some(&data));
                assert_result(vol.write_snapshot(&snap, off, &data), want, &ctx);
            }
            41..=45 => {
                let want = model.snap_write(i, off, len, None);
                assert_result(vol.zero_snapshot(&snap, off, len), want, &ctx);
            }
            46..=65 => {
                let want = if features[i].discard_passdown_origin {
                    model_passdown(&mut model, i, off, len)
                } else {
                    model.snap_discard(i, off, len)
                };
                let ok = want.is_ok();
                assert_result(vol.discard_snapshot(&snap, off, len), want, &ctx);
                if ok {
                    assert!(
                        read_snap(&vol, &snap, off, len).iter().all(|&b| b == 0),
                        "{ctx}: a punch that succeeded reads zeroes"
                    );
                }
            }
            66..=70 => {
                let want = model_reserve(&mut model, i, off, len);
                assert_result(vol.reserve_snapshot(&snap, off, len), want, &ctx);
            }
            71..=92 => {
                let mut buf = vec![0u8; len as usize];
                let got = vol.read_snapshot(&snap, off, &mut buf);
                match model.snap_read(i, off, len) {
                    Ok(want) => {
                        got.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                        assert_bytes(&buf, want, off, &ctx);
                    }
                    Err(w) => assert_result(got, Err(w), &ctx),
                }
                let got = read_origin(&vol, off, len);
                assert_bytes(
                    &got,
                    &model.origin[off as usize..(off + len) as usize],
                    off,
                    &ctx,
                );
            }
            _ => verify_all(&vol, &model, &ctx),
        }
    }
    verify_all(&vol, &model, &format!("{ctx0}, end"));
    // Persistent stores keep it all.
    drop(vol);
    model.reopened();
    let features: Vec<SnapshotFeatures> = model
        .snaps
        .iter()
        .map(|s| features[specs.iter().position(|x| x.0 == s.name).unwrap()])
        .collect();
    let vol = open(&origin, &model, &features, options(origin_discard));
    verify_all(&vol, &model, &format!("{ctx0}, reopened"));
}

#[test]
fn random_zeroing_matches_the_model() {
    for seed in seeds(12, 0x2E80_0000) {
        run_random(seed);
    }
}
