//! Merge pause and resume (`pause NAME`, `resume NAME`): while paused no chunk moves, the
//! origin reads as the model of the merged view and takes writes; resume completes the merge;
//! the pause is recorded in the COW's header and holds across a reopen until resume.

mod common;

use common::{P, Rng, check_origin, check_snapshot, config, slow_flush, write_model};
use snapfs::device::{Device, MemDevice};
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{Volume, VolumeOptions};
use std::sync::Arc;
use std::time::Duration;

const ORIGIN_BYTES: u64 = 1 << 20;

fn chunks_left(vol: &Volume, name: &str) -> u64 {
    vol.snapshot(name).unwrap().merge_progress().unwrap().0
}

/// The merge marker's bytes 16..32 of chunk 0: `snapfsMG`, version, flags.
fn marker(cow: &Device) -> [u8; 16] {
    let mut b = [0u8; 16];
    cow.read_at(&mut b, 16).unwrap();
    b
}

/// Origin with random content, snapshots `s` (one-sector chunks: ~64 merge steps) and `o`,
/// then the whole origin rewritten and `o` written: returns (volume, origin, s's COW, the
/// initial content = s's model, o's model).
fn setup(seed: u64) -> (Arc<Volume>, Device, Device, Vec<u8>, Vec<u8>) {
    let mut rng = Rng::new(seed);
    let initial = rng.bytes(ORIGIN_BYTES);
    let origin: Device = slow_flush(Arc::new(MemDevice::from_bytes(
        "origin",
        initial.clone(),
        512,
    )));
    let cow_s: Device = Arc::new(MemDevice::new("cow-s", 4 << 20));
    let cow_o: Device = Arc::new(MemDevice::new("cow-o", 4 << 20));
    let vol = Arc::new(
        Volume::open(
            origin.clone(),
            vec![config("s", &cow_s, P, 1), config("o", &cow_o, P, 8)],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    vol.write_origin(0, &rng.bytes(ORIGIN_BYTES)).unwrap();
    let mut o_model = initial.clone();
    for _ in 0..10 {
        let len = 1 + rng.below(20_000);
        let off = rng.below(ORIGIN_BYTES - len + 1);
        let data = rng.bytes(len);
        let o = vol.snapshot("o").unwrap();
        vol.write_snapshot(&o, off, &data).unwrap();
        write_model(&mut o_model, off, &data);
    }
    (vol, origin, cow_s, initial, o_model)
}

/// The volume of `origin` with snapshot `s` on `cow_s` opened again (the daemon's remount).
fn reopen(origin: &Device, cow_s: &Device) -> Arc<Volume> {
    Arc::new(
        Volume::open(
            origin.clone(),
            vec![config("s", cow_s, P, 0)],
            VolumeOptions::default(),
        )
        .unwrap(),
    )
}

#[test]
fn pause_holds_and_resume_completes() {
    let mut rng = Rng::new(14);
    let (vol, _origin, cow_s, initial, o_model) = setup(14);
    vol.start_merge("s").unwrap();
    let (left, total) = vol.pause_merge("s").unwrap();
    assert!(
        left > 0 && left < total + 1,
        "paused in the middle: {left}/{total}"
    );
    assert!(vol.snapshot("s").unwrap().is_merge_paused());
    assert_eq!(&marker(&cow_s)[..8], b"snapfsMG");
    assert_eq!(&marker(&cow_s)[12..], &[1, 0, 0, 0], "paused flag on disk");
    // Nothing moves while paused; the merged view holds and the origin takes writes.
    let mut model = initial.clone();
    check_origin(&vol, &model, 0, "right after the pause");
    for i in 0..30 {
        let len = 1 + rng.below(40_000);
        let off = rng.below(ORIGIN_BYTES - len + 1);
        let data = rng.bytes(len);
        vol.write_origin(off, &data).unwrap();
        write_model(&mut model, off, &data);
        if i % 10 == 0 {
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(chunks_left(&vol, "s"), left, "no chunk moves while paused");
    }
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(chunks_left(&vol, "s"), left, "no chunk moves while paused");
    check_origin(&vol, &model, 0, "after writes while paused");
    check_snapshot(&vol, "o", &o_model, 0, "while paused");
    let status = dm_lines(&vol);
    assert!(status.contains("s: 0 2048 snapshot-merge "), "{status}");
    assert!(status.contains("# s merge paused: "), "{status}");
    // Refusals.
    let again = vol.pause_merge("s").unwrap_err().to_string();
    assert!(again.contains("already paused"), "{again}");
    let e = vol.pause_merge("o").unwrap_err().to_string();
    assert!(e.contains("not merging"), "{e}");
    let e = vol.resume_paused_merge("o").unwrap_err().to_string();
    assert!(e.contains("not merging"), "{e}");
    let e = vol.pause_merge("nope").unwrap_err().to_string();
    assert!(e.contains("no snapshot named nope"), "{e}");
    let busy = vol.start_merge("o").unwrap_err();
    assert!(busy.is_busy(), "a paused merge is still the merge: {busy}");
    // The unmount path stops nothing more and keeps the pause.
    vol.resume_merge();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        chunks_left(&vol, "s"),
        left,
        "resume_merge leaves a paused merge"
    );

    vol.resume_paused_merge("s").unwrap();
    assert_eq!(&marker(&cow_s)[12..], &[0, 0, 0, 0], "paused flag cleared");
    let e = vol.resume_paused_merge("s");
    assert!(
        e.is_err() || vol.snapshot("s").is_none(),
        "resume of a running merge is refused"
    );
    vol.wait_merge();
    check_origin(&vol, &model, 0, "after the resumed merge");
    check_snapshot(&vol, "o", &o_model, 0, "after the merge");
    assert!(vol.snapshot("s").is_none(), "s detached when merged");
    assert_eq!(marker(&cow_s), [0; 16], "marker and flags cleared");
}

#[test]
fn pause_persists_across_reopen() {
    let (vol, origin, cow_s, initial, _) = setup(15);
    vol.start_merge("s").unwrap();
    let (left, _) = vol.pause_merge("s").unwrap();
    vol.shutdown().unwrap();
    drop(vol);
    for round in 0..2 {
        let vol = reopen(&origin, &cow_s);
        let s = vol
            .merging_snapshot()
            .expect("the marker brings the merge back");
        assert!(s.is_merge_paused(), "round {round}: still paused");
        check_origin(&vol, &initial, 0, "reopened, paused");
        // What the daemon does at mount: a paused merge does not restart.
        vol.resume_merge();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(chunks_left(&vol, "s"), left, "round {round}: nothing moved");
        assert!(
            dm_lines(&vol).contains("merge paused"),
            "{}",
            dm_lines(&vol)
        );
        vol.shutdown().unwrap();
    }
    let vol = reopen(&origin, &cow_s);
    vol.resume_paused_merge("s").unwrap();
    vol.wait_merge();
    check_origin(&vol, &initial, 0, "after resume across reopen");
    assert!(vol.snapshots().is_empty());
    drop(vol);
    let vol = Volume::open(
        origin,
        vec![config("s", &cow_s, P, 0)],
        VolumeOptions::default(),
    )
    .unwrap();
    assert!(vol.merging_snapshot().is_none(), "merge done, marker gone");
}

#[test]
fn an_interrupted_merge_resumes_unpaused() {
    let (vol, origin, cow_s, initial, _) = setup(16);
    vol.start_merge("s").unwrap();
    vol.shutdown().unwrap();
    drop(vol);
    assert_eq!(&marker(&cow_s)[12..], &[0, 0, 0, 0]);
    let vol = reopen(&origin, &cow_s);
    assert!(!vol.merging_snapshot().unwrap().is_merge_paused());
    vol.resume_merge();
    vol.wait_merge();
    check_origin(&vol, &initial, 0, "after the resumed merge");
    assert!(vol.snapshots().is_empty());
}

#[test]
fn a_transient_merge_cannot_be_paused() {
    let origin: Device = slow_flush(Arc::new(MemDevice::new("origin", ORIGIN_BYTES)));
    let cow: Device = Arc::new(MemDevice::new("cow", 4 << 20));
    let vol = Arc::new(
        Volume::open(
            origin,
            vec![config("t", &cow, StoreKind::Transient, 1)],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    vol.write_origin(0, &vec![7; ORIGIN_BYTES as usize])
        .unwrap();
    vol.start_merge("t").unwrap();
    let e = vol.pause_merge("t").unwrap_err().to_string();
    assert!(e.contains("transient") || e.contains("not merging"), "{e}");
    vol.wait_merge();
    check_origin(&vol, &vec![0; ORIGIN_BYTES as usize], 0, "rolled back");
}
