//! Crashes at every flush point (3.3): nothing acknowledged is lost, whatever the flush at
//! which the machine stops.

use super::*;

// ------------------------------------------------------------------------------------------------
// Crashes at every flush point (3.3). A workload runs on a SimWorld that freezes at flush k; the
// crash image is reopened and must hold a prefix of the allocation sequence that includes every
// acknowledged commit.

/// Old chunk of the k-th exception of the crash workloads.
fn crash_old(k: u64) -> u64 {
    7 * k + 3
}

/// What a workload did before it stopped.
struct CommitRun {
    /// `(old, new)` of every prepared exception, in allocation order.
    alloc: Vec<(u64, u64)>,
    /// How many of them were acknowledged (their commit returned Ok).
    acked: usize,
}

/// Formats a new store on `dev` and commits batches of `sizes`, one after the other, until one
/// fails.
fn commit_workload(dev: Device, cs: u64, sizes: &[usize]) -> CommitRun {
    let mut run = CommitRun {
        alloc: Vec::new(),
        acked: 0,
    };
    let (mut st, list) = open(dev, cs);
    assert!(list.is_empty());
    if st.initialise().is_err() {
        return run;
    }
    for &n in sizes {
        let k0 = run.alloc.len() as u64;
        let olds: Vec<u64> = (k0..k0 + n as u64).map(crash_old).collect();
        let p = st.prepare_exceptions(n).expect("the COW is big enough");
        run.alloc
            .extend(olds.iter().copied().zip(p.new_chunks.iter().copied()));
        match st.commit_exceptions(p, &olds, true) {
            Ok(()) => run.acked = run.alloc.len(),
            Err(_) => break,
        }
    }
    run
}

/// Reopens a crash image and checks it against the run; then checks allocation continues.
fn check_commit_image(image: Vec<u8>, cs: u64, run: &CommitRun, what: &str) {
    let mut st = persistent(mem(image), cs);
    let list = match st.read_metadata() {
        Ok(Loaded::Valid(list)) => list,
        other => panic!("{what}: crash image does not load: {other:?}"),
    };
    assert!(
        list.len() >= run.acked,
        "{what}: {} acknowledged, {} on disk",
        run.acked,
        list.len()
    );
    assert_eq!(
        list,
        run.alloc[..list.len()],
        "{what}: not a prefix of the allocation sequence"
    );
    st.initialise().unwrap();
    let p = st.prepare_exceptions(1).unwrap();
    assert_eq!(p.new_chunks, [kth_chunk(cs, list.len() as u64)], "{what}");
    st.commit_exceptions(p, &[1 << 20], true).unwrap();
}

fn crash_modes(k: u64) -> [CrashMode; 3] {
    [
        CrashMode::Drop,
        CrashMode::Tear { seed: k },
        CrashMode::Tear {
            seed: k ^ 0x5eed_0000_0000,
        },
    ]
}

fn crash_at_every_flush(cs: u64, cow_chunks: u64, sizes: &[usize]) {
    let cow_bytes = cow_chunks * chunk_bytes(cs);
    let clean = SimWorld::new();
    let run = commit_workload(clean.device("cow", cow_bytes), cs, sizes);
    assert_eq!(run.acked, sizes.iter().sum::<usize>());
    let flushes = clean.flush_count();
    check_commit_image(clean.durable_images().remove(0), cs, &run, "clean run");

    for k in 1..=flushes {
        for mode in crash_modes(k) {
            let world = SimWorld::new();
            let dev = world.device("cow", cow_bytes);
            world.freeze_at_flush(k, mode);
            let run = commit_workload(dev, cs, sizes);
            let image = world.crash_images().expect("the crash point is reached");
            let what = format!("cs {cs}, crash at flush {k}/{flushes} ({mode:?})");
            check_commit_image(image.into_iter().next().unwrap(), cs, &run, &what);
        }
    }
}

#[test]
fn crash_at_every_flush_point_cs1() {
    // E = 32: crosses two area boundaries; an area is one sector, so it never tears.
    let sizes = [1, 3, 5, 2, 8, 13, 1, 1, 7, 4, 21, 6, 2, 9];
    crash_at_every_flush(1, 120, &sizes);
}

#[test]
fn crash_at_every_flush_point_cs8() {
    // E = 256: an area is 8 sectors (32 records each), so area writes tear.
    let sizes = [40, 1, 37, 64, 30, 90, 5, 20];
    crash_at_every_flush(8, 320, &sizes);
}

#[test]
fn crash_at_every_flush_point_of_batches_filling_several_areas() {
    // E = 32: the batch of 70 fills two areas and starts a third, the batch of 100 fills three
    // more, so the areas' successors are zeroed ahead and the areas flushed together.
    let sizes = [5, 70, 3, 100, 1];
    crash_at_every_flush(1, 240, &sizes);
}

/// The byte every sector of the copy of origin chunk `old` holds.
fn copy_byte(old: u64) -> u8 {
    (old % 251) as u8 + 1
}

/// What a concurrent workload did before it stopped: every prepared and every acknowledged
/// `(old, new)`.
#[derive(Default)]
struct ConcurrentRun {
    prepared: Vec<(u64, u64)>,
    acked: Vec<(u64, u64)>,
}

/// Formats a store on `dev` (cs = 1: areas of 32 records) and has `threads` threads write a
/// copy into each chunk they prepare and commit it, batches of 1 to 3, until a commit fails.
fn concurrent_commit_workload(dev: Arc<SimDevice>, threads: u64, rounds: u64) -> ConcurrentRun {
    let run = parking_lot::Mutex::new(ConcurrentRun::default());
    let (mut st, list) = open(dev.clone(), 1);
    assert!(list.is_empty());
    if st.initialise().is_err() {
        return run.into_inner();
    }
    thread::scope(|s| {
        for t in 0..threads {
            let (st, dev, run) = (&st, &dev, &run);
            s.spawn(move || {
                for r in 0..rounds {
                    let olds: Vec<u64> =
                        (0..1 + (t + r) % 3).map(|j| t * 1000 + r * 4 + j).collect();
                    let Ok(p) = st.prepare_exceptions(olds.len()) else {
                        return;
                    };
                    let pairs: Vec<(u64, u64)> = olds
                        .iter()
                        .copied()
                        .zip(p.new_chunks.iter().copied())
                        .collect();
                    run.lock().prepared.extend(&pairs);
                    let mut copied = true;
                    for &(old, new) in &pairs {
                        let data = vec![copy_byte(old); SECTOR as usize];
                        copied &= dev.write_at(&data, new * SECTOR).is_ok();
                    }
                    if st.commit_exceptions(p, &olds, copied).is_err() {
                        return;
                    }
                    run.lock().acked.extend(pairs);
                }
            });
        }
    });
    run.into_inner()
}

/// Concurrent committers, with batches grouped and pipelined, crashed at every flush point:
/// every acknowledged record is on disk, every record on disk was prepared, and the copy each
/// record points at is intact (its data was durable before its record).
#[test]
fn concurrent_commits_crash_at_every_flush_point() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 12;
    const COW_SECTORS: u64 = 400;
    let clean = SimWorld::new();
    let run =
        concurrent_commit_workload(clean.device("cow", COW_SECTORS * SECTOR), THREADS, ROUNDS);
    assert_eq!(run.acked.len(), run.prepared.len());
    let flushes = clean.flush_count();
    let mut reached = 0;
    for k in 1..=flushes + 8 {
        for mode in crash_modes(k) {
            let world = SimWorld::new();
            let dev = world.device("cow", COW_SECTORS * SECTOR);
            world.freeze_at_flush(k, mode);
            let run = concurrent_commit_workload(dev, THREADS, ROUNDS);
            let Some(images) = world.crash_images() else {
                continue; // this run needed fewer flushes
            };
            reached += 1;
            let what = format!("crash at flush {k} ({mode:?})");
            let image = images.into_iter().next().unwrap();
            let mut st = persistent(mem(image.clone()), 1);
            let list = match st.read_metadata() {
                Ok(Loaded::Valid(list)) => list,
                other => panic!("{what}: crash image does not load: {other:?}"),
            };
            for pair in &run.acked {
                assert!(list.contains(pair), "{what}: acknowledged {pair:?} is lost");
            }
            for &(old, new) in &list {
                assert!(
                    run.prepared.contains(&(old, new)),
                    "{what}: ({old}, {new}) was never prepared"
                );
                let at = (new * SECTOR) as usize;
                assert!(
                    all_bytes(&image[at..at + SECTOR as usize], copy_byte(old)),
                    "{what}: the copy of origin chunk {old} in COW chunk {new} is not durable"
                );
            }
            let highest = list.iter().map(|&(_, new)| new).max().unwrap_or(1);
            st.initialise().unwrap();
            let p = st.prepare_exceptions(1).unwrap();
            assert!(
                p.new_chunks[0] > highest,
                "{what}: allocation reuses a chunk"
            );
            assert!(!is_area_chunk(
                ChunkSize::new(1, &[]).unwrap(),
                p.new_chunks[0]
            ));
            st.commit_exceptions(p, &[1 << 20], true).unwrap();
        }
    }
    assert!(
        reached as u64 >= flushes,
        "{reached} crash points reached of {flushes}"
    );
}

/// Merges `dev`'s whole list in steps of at most 7 records; returns the list length after the
/// last acknowledged `commit_merge`, and the count of the one in flight when it stopped.
fn merge_workload(dev: Device) -> (usize, usize) {
    let (st, list) = open(dev, 0);
    let mut remaining = list.len();
    loop {
        let n = match st.prepare_merge() {
            Ok(Some(run)) => run.count.min(7),
            Ok(None) | Err(_) => return (remaining, 0),
        };
        if st.commit_merge(n).is_err() {
            return (remaining, n as usize);
        }
        remaining -= n as usize;
    }
}

#[test]
fn crash_at_every_flush_point_of_a_merge() {
    // cs = 8: 300 exceptions in runs of 156, 100, 20, 24 (two areas).
    let list = in_order_list(8, 300, merge_old);
    let image = store_image(8, 320, &list);
    let clean = SimWorld::new();
    assert_eq!(
        merge_workload(clean.device_from("cow", image.clone(), 512)),
        (0, 0)
    );
    let flushes = clean.flush_count();
    assert!(open(mem(clean.durable_images().remove(0)), 0).1.is_empty());

    for k in 1..=flushes {
        for mode in crash_modes(k) {
            let world = SimWorld::new();
            let dev = world.device_from("cow", image.clone(), 512);
            world.freeze_at_flush(k, mode);
            let (acked, in_flight) = merge_workload(dev);
            let crash = world.crash_images().expect("the crash point is reached");
            let what = format!("merge crash at flush {k}/{flushes} ({mode:?})");
            let mut st = persistent(mem(crash.into_iter().next().unwrap()), 0);
            let loaded = match st.read_metadata() {
                Ok(Loaded::Valid(l)) => l,
                other => panic!("{what}: does not load: {other:?}"),
            };
            assert!(
                loaded.len() <= acked && loaded.len() >= acked - in_flight,
                "{what}: {} records, {acked} acknowledged, {in_flight} in flight",
                loaded.len()
            );
            assert_eq!(loaded, list[..loaded.len()], "{what}: not a prefix");
        }
    }
}
