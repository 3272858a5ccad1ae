//! Write-back through a real mount: origin first writes answered before their copy-out must be
//! in a snapshot taken right after them, never in the snapshot taken before, and on the origin
//! after a remount; `writeback=0` keeps the synchronous path; a bad budget is refused.

mod e2e_support;

use e2e_support::*;
use std::os::unix::fs::FileExt;

const ORIGIN_BYTES: u64 = 32 * MIB;

/// Writes `data` at `offset` of the origin in 1 MiB writes, with no fsync.
fn write_origin(s: &Scratch, offset: u64, data: &[u8]) {
    let f = open_rw(&s.file("origin"));
    for (i, piece) in data.chunks(MIB as usize).enumerate() {
        f.write_all_at(piece, offset + i as u64 * MIB).unwrap();
    }
}

fn answered_writes_reach_a_live_snapshot(name: &str, extra: &[&str]) {
    let mut s = Scratch::new(name);
    let (origin, old_cow, new_cow) = (s.path("origin.img"), s.path("old.cow"), s.path("new.cow"));
    let before = Rng(7).bytes(ORIGIN_BYTES);
    std::fs::write(&origin, &before).unwrap();
    sparse_file(&old_cow, ORIGIN_BYTES + 8 * MIB);
    sparse_file(&new_cow, ORIGIN_BYTES + 8 * MIB);
    let spec = format!("snapshot=old:{}:P:8", old_cow.display());
    let mut options = vec![spec.as_str()];
    options.extend_from_slice(extra);
    s.mount_daemon(&origin, &options, &[]);
    let mut after = before.clone();
    for round in 0..4u64 {
        let (offset, len) = (round * 6 * MIB + 4096 * round, 4 * MIB + 512 * round);
        let data = Rng(100 + round).bytes(len);
        write_origin(&s, offset, &data);
        after[offset as usize..(offset + len) as usize].copy_from_slice(&data);
    }
    // Right after the answers, no fsync: the live snapshot must hold them.
    let (result, answer) = control(&s, &format!("snapshot new {} P 8", new_cow.display()));
    assert!(result.is_ok(), "{answer}");
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &after);
    assert_same(
        "new snapshot",
        &std::fs::read(s.file("new")).unwrap(),
        &after,
    );
    assert_same(
        "old snapshot",
        &std::fs::read(s.file("old")).unwrap(),
        &before,
    );
    // Overwrite what the new snapshot holds: it keeps the answered data, not the older one.
    write_origin(&s, 0, &vec![0xAB; 8 * MIB as usize]);
    assert_same(
        "new snapshot",
        &std::fs::read(s.file("new")).unwrap(),
        &after,
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
    let spec_new = format!("snapshot=new:{}:P:8", new_cow.display());
    s.mount_daemon(&origin, &[&spec, &spec_new], &[]);
    assert_same(
        "old snapshot, remounted",
        &std::fs::read(s.file("old")).unwrap(),
        &before,
    );
    assert_same(
        "new snapshot, remounted",
        &std::fs::read(s.file("new")).unwrap(),
        &after,
    );
    after[..8 * MIB as usize].fill(0xAB);
    assert_same(
        "origin, remounted",
        &std::fs::read(s.file("origin")).unwrap(),
        &after,
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn answered_writes_reach_a_live_snapshot_with_write_back() {
    answered_writes_reach_a_live_snapshot("writeback-on", &[]);
}

#[test]
fn answered_writes_reach_a_live_snapshot_without_write_back() {
    answered_writes_reach_a_live_snapshot("writeback-off", &["writeback=0"]);
}

#[test]
fn a_bad_write_back_budget_is_refused() {
    let s = Scratch::new("writeback-bad");
    let origin = s.path("origin.img");
    sparse_file(&origin, ORIGIN_BYTES);
    for bad in ["writeback=512K", "writeback=2G", "writeback=lots"] {
        let out = s.command(&origin, &[bad], true).output().unwrap();
        assert!(!out.status.success(), "{bad} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("writeback"), "{bad}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{bad}: {err}");
    }
    // Nothing was mounted.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    assert!(
        !mounts.contains(s.mnt.to_str().unwrap()),
        "a refused mount is mounted"
    );
}
