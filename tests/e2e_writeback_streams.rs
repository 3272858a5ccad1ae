//! Write-back under a stream of writes (docs/performance.md, "Write-back: the contract"): one
//! writer puts each write in its own 64 KiB slot while a control command runs; a snapshot
//! taken then must hold exactly a prefix of the writes, at least every one answered before the
//! command and at most one past those answered after it. Needs root.

mod e2e_support;

use e2e_support::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const ORIGIN_BYTES: u64 = 32 * MIB;

fn snapshot_option(cow: &Path) -> String {
    format!("snapshot=s:{}:P:8", cow.display())
}

#[test]
fn a_snapshot_taken_during_a_stream_of_writes_holds_a_prefix_of_them() {
    let mut s = Scratch::new("wb-stream-snapshot");
    let (origin, cow, late_cow) = (s.path("origin.img"), s.path("cow"), s.path("late.cow"));
    let original = write_random_image(&origin, ORIGIN_BYTES, 41);
    sparse_file(&cow, ORIGIN_BYTES + 8 * MIB);
    sparse_file(&late_cow, ORIGIN_BYTES + 8 * MIB);
    s.mount_daemon(&origin, &[&snapshot_option(&cow)], &[]);
    // One writer, one write at a time, each to its own 64 KiB slot (first writes): the
    // snapshot must show writes 0..k and none after, with k at least the count answered
    // before the command and at most one more than the count answered after it.
    const SLOT: u64 = 64 * 1024;
    let slots = ORIGIN_BYTES / SLOT;
    let slot_of = move |i: u64| (i * 7) % slots;
    let answered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let path = s.file("origin");
    let writer = {
        let (answered, stop) = (answered.clone(), stop.clone());
        std::thread::spawn(move || {
            let f = open_rw(&path);
            let mut i = 0;
            while i < slots && !stop.load(Ordering::SeqCst) {
                let data = Rng(5000 + i).bytes(SLOT);
                f.write_all_at(&data, slot_of(i) * SLOT).unwrap();
                i += 1;
                answered.store(i, Ordering::SeqCst);
            }
        })
    };
    wait_for(60, "some writes", || answered.load(Ordering::SeqCst) >= 16);
    let before = answered.load(Ordering::SeqCst);
    let (result, text) = control(&s, &format!("snapshot late {} P 8", late_cow.display()));
    let after = answered.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let written = answered.load(Ordering::SeqCst);
    assert!(result.is_ok(), "{text}");
    let late = std::fs::read(s.file("late")).unwrap();
    let in_snapshot = |i: u64| {
        let at = (slot_of(i) * SLOT) as usize;
        let want = Rng(5000 + i).bytes(SLOT);
        if late[at..at + SLOT as usize] == want[..] {
            true
        } else {
            assert_same(
                &format!("slot of write {i} in the late snapshot"),
                &late[at..at + SLOT as usize],
                &original[at..at + SLOT as usize],
            );
            false
        }
    };
    let k = (0..written).find(|&i| !in_snapshot(i)).unwrap_or(written);
    assert!(
        (k..written).all(|i| !in_snapshot(i)),
        "the snapshot holds a later write but not an earlier one"
    );
    assert!(
        before <= k && k <= after + 1,
        "snapshot holds {k} writes; {before} answered before the command, {after} after"
    );
    let mut model = original.clone();
    for i in 0..written {
        let at = (slot_of(i) * SLOT) as usize;
        model[at..at + SLOT as usize].copy_from_slice(&Rng(5000 + i).bytes(SLOT));
    }
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    assert_same(
        "old snapshot",
        &std::fs::read(s.file("s")).unwrap(),
        &original,
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// A snapshot dropped, and another taken, during a stream of first writes (one writer, one
/// 64 KiB slot each; a merge is refused while the origin is open, so it cannot race): every
/// write lands on the origin, the new snapshot holds a prefix of them.
#[test]
fn a_drop_and_a_snapshot_during_a_stream_of_writes() {
    const SLOT: u64 = 64 * 1024;
    let mut s = Scratch::new("wb-stream-drop");
    let (origin, cow, cow2) = (s.path("origin.img"), s.path("cow"), s.path("cow2"));
    let original = write_random_image(&origin, ORIGIN_BYTES, 111);
    sparse_file(&cow, ORIGIN_BYTES + 8 * MIB);
    sparse_file(&cow2, ORIGIN_BYTES + 8 * MIB);
    s.mount_daemon(&origin, &[&snapshot_option(&cow)], &[]);
    let slots = ORIGIN_BYTES / SLOT;
    let slot_of = move |i: u64| (i * 7) % slots;
    let data_of = |i: u64| Rng(14_000 + i).bytes(SLOT);
    let answered = Arc::new(AtomicU64::new(0));
    let path = s.file("origin");
    let writer = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            let f = open_rw(&path);
            for i in 0..slots {
                f.write_all_at(&data_of(i), slot_of(i) * SLOT).unwrap();
                answered.store(i + 1, Ordering::SeqCst);
            }
        })
    };
    wait_for(60, "some writes", || answered.load(Ordering::SeqCst) >= 16);
    let (result, text) = control(&s, "drop s");
    assert!(result.is_ok(), "{text}");
    let before = answered.load(Ordering::SeqCst);
    let (result, text) = control(&s, &format!("snapshot t {} P 8", cow2.display()));
    let after = answered.load(Ordering::SeqCst);
    assert!(result.is_ok(), "{text}");
    writer.join().unwrap();
    let slot = |i: u64| {
        let at = (slot_of(i) * SLOT) as usize;
        at..at + SLOT as usize
    };
    let mut model = original.clone();
    for i in 0..slots {
        model[slot(i)].copy_from_slice(&data_of(i));
    }
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    let t = std::fs::read(s.file("t")).unwrap();
    let k = (0..slots)
        .find(|&i| t[slot(i)] != data_of(i)[..])
        .unwrap_or(slots);
    for i in k..slots {
        assert_same(
            &format!("slot of write {i} in t"),
            &t[slot(i)],
            &original[slot(i)],
        );
    }
    assert!(
        before <= k && k <= after + 1,
        "t holds {k} writes; {before} answered before the command, {after} after"
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}
