//! Stress: concurrent origin writers, snapshot writers and readers across 4 snapshots while a
//! fifth merges into the origin, all through loop devices (direct I/O and buffered), every
//! read compared with a model; at the end every file is compared whole, also after a remount.
//! Runs SNAPFS_STRESS_SECS seconds per loop mode (default 15; "minutes" with the variable).

mod e2e_support;

use e2e_support::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const ORIGIN_BYTES: u64 = 64 * MIB;
const THREADS: u64 = 4;
const BLOCK: u64 = 4096;

fn seconds() -> u64 {
    std::env::var("SNAPFS_STRESS_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
}

/// One model per file (origin, then the 4 other snapshots); threads own disjoint stripes, so a
/// byte is only ever written by one thread and the model needs no ordering across threads.
struct Models(Vec<Mutex<Vec<u8>>>);

fn stress(direct: bool) {
    let tag = if direct {
        "stress-dio"
    } else {
        "stress-buffered"
    };
    let mut s = Scratch::new(tag);
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 31);
    let specs: Vec<String> = [
        ("m", "P:1"),
        ("a", "P:16"),
        ("b", "N:32"),
        ("c", "PO:8"),
        ("d", "P:128"),
    ]
    .iter()
    .map(|(n, k)| {
        let cow = s.path(&format!("{n}.cow"));
        sparse_file(&cow, ORIGIN_BYTES + 8 * MIB);
        format!("snapshot={n}:{}:{k}", cow.display())
    })
    .collect();
    let spec_refs: Vec<&str> = specs.iter().map(String::as_str).collect();
    s.mount_daemon(&origin, &spec_refs, &[]);

    // Give the merge work: one-sector chunks and a rewritten origin make about 131072
    // exceptions (runs of at most 32), so the merge runs through the stress; `m` also gets
    // writes of its own.
    let mut rng = Rng(32);
    let m_model = {
        let mut m = initial.clone();
        let fo = open_rw(&s.file("origin"));
        for i in 0..ORIGIN_BYTES / MIB {
            fo.write_all_at(&rng.bytes(MIB), i * MIB).unwrap();
        }
        let fm = open_rw(&s.file("m"));
        for _ in 0..64 {
            let off = rng.below(ORIGIN_BYTES / BLOCK - 64) * BLOCK;
            let len = (1 + rng.below(64)) * BLOCK;
            let data = rng.bytes(len);
            fm.write_all_at(&data, off).unwrap();
            m[off as usize..off as usize + data.len()].copy_from_slice(&data);
        }
        m
    };
    let (started, answer) = control(&s, "merge m");
    started.unwrap_or_else(|e| panic!("merge: {e}: {answer}"));

    let mut stack = Stack::default();
    let files = ["origin", "a", "b", "c", "d"];
    let devs: Vec<String> = files
        .iter()
        .map(|f| stack.attach(&s.file(f), direct, false))
        .collect();
    let models = Models(
        std::iter::once(m_model)
            .chain((1..files.len()).map(|_| initial.clone()))
            .map(Mutex::new)
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds());
    let stripe = ORIGIN_BYTES / THREADS;
    let ops: u64 = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (devs, models, files) = (&devs, &models, &files);
                scope.spawn(move || {
                    let handles: Vec<File> = devs.iter().map(|d| open_rw(d.as_ref())).collect();
                    let mut rng = Rng(100 + t);
                    let mut ops = 0u64;
                    let base = t * stripe;
                    while Instant::now() < deadline {
                        let which = rng.below(handles.len() as u64) as usize;
                        let blocks = 1 + rng.below(32);
                        let off = base + rng.below(stripe / BLOCK - blocks) * BLOCK;
                        let len = (blocks * BLOCK) as usize;
                        // The PO snapshot `c` may overflow: its writes are checked separately.
                        if rng.below(2) == 0 && which != 3 {
                            let data = rng.bytes(len as u64);
                            handles[which].write_all_at(&data, off).unwrap();
                            let mut m = models.0[which].lock().unwrap();
                            m[off as usize..off as usize + len].copy_from_slice(&data);
                        } else {
                            let mut buf = vec![0u8; len];
                            handles[which].read_exact_at(&mut buf, off).unwrap();
                            let m = models.0[which].lock().unwrap();
                            assert!(
                                buf == m[off as usize..off as usize + len],
                                "thread {t}: {} differs at {off}+{len}",
                                files[which]
                            );
                        }
                        ops += 1;
                    }
                    for h in &handles {
                        h.sync_all().unwrap();
                    }
                    ops
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let still_merging = status(&s).iter().any(|l| l.0 == "m");
    eprintln!(
        "{tag}: {ops} checked operations in {} s; merge still running at the end: {still_merging}",
        seconds()
    );
    for d in devs {
        stack.detach(&d);
    }
    wait_for(300, "the merge to complete", || {
        !status(&s).iter().any(|l| l.0 == "m")
    });
    let final_models: Vec<Vec<u8>> = models
        .0
        .into_iter()
        .map(|m| m.into_inner().unwrap())
        .collect();
    for (f, model) in files.iter().zip(&final_models) {
        assert_same(f, &std::fs::read(s.file(f)).unwrap(), model);
    }
    assert_eq!(s.unmount(), 0, "{}", s.log());
    // After a remount: the origin and the persistent snapshots (not `b`, transient, nor `m`,
    // merged away) are unchanged.
    let again: Vec<&str> = spec_refs
        .iter()
        .copied()
        .filter(|sp| !sp.contains("=b:") && !sp.contains("=m:"))
        .collect();
    s.mount_daemon(&origin, &again, &[]);
    for (f, model) in files.iter().zip(&final_models) {
        if *f != "b" {
            assert_same(f, &std::fs::read(s.file(f)).unwrap(), model);
        }
    }
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn stress_with_merge_direct_io() {
    stress(true);
}

#[test]
fn stress_with_merge_buffered() {
    stress(false);
}
