//! The changed-chunk map (issue 15): `snapfs changes` against a model of the written bytes,
//! live and offline (`snapfs inspect --changes`), also during a paused merge. Needs root.

mod e2e_support;

use e2e_support::*;
use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;

#[test]
fn changes_cover_every_written_byte_and_no_other_chunk_live_and_offline() {
    const VOLUME: u64 = 64 * MIB;
    let mut s = Scratch::new("backup-changes");
    let origin = s.path("origin.img");
    sparse_file(&origin, VOLUME + 4096); // a last chunk that the volume's end cuts
    let registry = s.path("vol.reg");
    s.mount_daemon(&origin, &[&format!("registry={}", registry.display())], &[]);
    let m = s.mnt.to_str().unwrap().to_string();
    let cow = s.path("s.cow");
    snapfs_ok(&[
        "snapshot",
        &m,
        "s",
        "--cow",
        cow.to_str().unwrap(),
        "--size",
        "80M",
        "--chunk",
        "16",
    ]);
    let chunk = 8192u64;
    let mut touched = BTreeSet::new();
    let mut rng = Rng(150);
    let size = VOLUME + 4096;
    let o = open_rw(&s.file("origin"));
    let snap = open_rw(&s.file("s"));
    for i in 0..400 {
        let len = 1 + rng.below(40_000);
        let at = rng.below(size - len);
        let data = rng.bytes(len);
        // Mostly the origin; some through the snapshot's own file (an exception too).
        let f = if i % 10 == 0 { &snap } else { &o };
        f.write_all_at(&data, at).unwrap();
        touched.extend(at / chunk..=(at + len - 1) / chunk);
    }
    o.write_all_at(b"end", size - 3).unwrap();
    touched.insert((size - 1) / chunk);
    let live = changes_json(&s.mnt, "s");
    assert_eq!(live["snapshot"], "s");
    assert_eq!(live["chunk_bytes"], chunk);
    let mut listed = BTreeSet::new();
    let mut last_end = None;
    for r in live["ranges"].as_array().unwrap() {
        let (off, len) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
        assert!(
            off % chunk == 0 && len % chunk == 0 && len > 0,
            "whole chunks: {r}"
        );
        assert!(
            last_end.is_none_or(|e| e < off),
            "sorted and coalesced: {r}"
        );
        last_end = Some(off + len);
        listed.extend(off / chunk..(off + len) / chunk);
    }
    assert_eq!(listed, touched, "exactly the chunks written");
    assert_eq!(live["total_bytes"], touched.len() as u64 * chunk);
    // The table ends in the total.
    let table = snapfs_ok(&["changes", &m, "s"]);
    assert!(
        table
            .lines()
            .last()
            .unwrap()
            .starts_with(&format!("total: {} bytes", touched.len() as u64 * chunk)),
        "{table}"
    );
    // Unknown and refused names change nothing.
    assert_eq!(snapfs(&["changes", &m, "nope"]).status.code(), Some(1));
    assert_eq!(snapfs(&["changes", &m, "a/b"]).status.code(), Some(1));
    drop((o, snap));
    s.unmount();
    let offline = offline_changes_json(&cow);
    for key in ["chunk_bytes", "ranges", "total_bytes"] {
        assert_eq!(offline[key], live[key], "{key}: live and offline agree");
    }
    assert_eq!(offline["cow"], cow.to_str().unwrap());
}

/// During a merge `changes` lists the chunks not merged back yet, as the COW holds them
/// offline.
#[test]
fn during_a_merge_changes_are_the_chunks_not_merged_back() {
    let mut s = Scratch::new("backup-merge");
    let (origin, cow) = (s.path("origin.img"), s.path("m.cow"));
    write_random_image(&origin, 16 * MIB, 23);
    sparse_file(&cow, 32 * MIB);
    // One-sector chunks: the merge is still running when the pause comes (as e2e_pause_status).
    s.mount_daemon(
        &origin,
        &[&format!("snapshot=m:{}:P:1", cow.display())],
        &[],
    );
    {
        let f = open_rw(&s.file("origin"));
        f.write_all_at(&Rng(24).bytes(16 * MIB), 0).unwrap();
        f.sync_all().unwrap();
    }
    let all = changes_json(&s.mnt, "m");
    assert_eq!(all["total_bytes"], 16 * MIB, "every chunk was written");
    // Sectors not merged back yet, from the status file's `merge=LEFT/TOTAL`.
    let merge_left = || -> Option<u64> {
        std::fs::read_to_string(s.file("status"))
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("#: snapshot m ")?
                    .split(' ')
                    .find_map(|w| w.strip_prefix("merge="))
            })
            .and_then(|v| v.split_once('/')?.0.parse().ok())
    };
    let (started, answer) = control(&s, "merge m");
    started.unwrap_or_else(|e| panic!("merge: {e}: {answer}"));
    // Paused once it has made progress (on a loaded machine the pause could otherwise come
    // before the first chunk is merged).
    wait_for(60, "the merge to make progress", || {
        merge_left().is_some_and(|left| left * 512 < 16 * MIB)
    });
    let (paused, answer) = control(&s, "pause m");
    paused.unwrap_or_else(|e| panic!("pause: {e}: {answer}"));
    let left = merge_left().unwrap();
    let live = changes_json(&s.mnt, "m");
    assert_eq!(
        live["total_bytes"],
        left * 512,
        "the chunks not merged back"
    );
    assert!(left > 0 && left * 512 < 16 * MIB, "{left}");
    s.unmount();
    let offline = offline_changes_json(&cow);
    assert_eq!(offline["ranges"], live["ranges"]);
}
