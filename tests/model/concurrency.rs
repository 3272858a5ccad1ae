//! Concurrency: threads on interleaved stripes, snapshot reads during origin writes, and
//! first writes racing to the same chunks, each checked against a model.

use super::*;

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

const THREADS: u64 = 4;
/// Stripes of 3 sectors: not a power of two, so every chunk size is shared by threads.
const STRIPE: u64 = 3 * SECTOR;
const CONCURRENT_SIZE: u64 = 2 * MIB + 5 * SECTOR;
const TIME_LIMIT: Duration = Duration::from_secs(3);

fn concurrent_model(seed: u64) -> (Dev, Model) {
    let size = CONCURRENT_SIZE;
    let (origin, mut model) = random_origin(seed, size);
    for (name, kind, sectors) in [
        ("p8", P, 8),
        ("p128", P, 128),
        ("n16", N, 16),
        ("po1", PO, 1),
    ] {
        let cb = sectors * SECTOR;
        let cow = mem(name, roomy_cow_bytes(kind, cb, size));
        model.add_snapshot(name, kind, sectors, cow);
    }
    (origin, model)
}

/// The stripes thread `t` owns, and a random sub-range of one of them.
fn own_range(rng: &mut Rng, t: u64, size: u64) -> (u64, u64) {
    let stripes = size.div_ceil(STRIPE);
    let mine = (stripes - t).div_ceil(THREADS);
    let s = t + THREADS * rng.below(mine);
    let start = s * STRIPE;
    let end = (start + STRIPE).min(size);
    let off = rng.between(start, end - 1);
    let len = if rng.chance(50) {
        end - off
    } else {
        rng.between(1, end - off)
    };
    (off, len)
}

/// Threads own interleaved stripes and write and read the origin and every snapshot with a
/// model of their own bytes; chunks are shared, so copy-outs and exception fills race.
#[test]
fn concurrent_threads_on_interleaved_stripes() {
    for seed in seeds(1, 0xC0_0000) {
        let ctx = replay(seed);
        let (origin, model) = concurrent_model(seed);
        let vol = Arc::new(open_volume(&origin, &model, writeback_on(), &ctx));
        let size = model.size;
        let deadline = Instant::now() + TIME_LIMIT;
        let shared = Arc::new(model);
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (vol, base) = (vol.clone(), shared.clone());
                let ctx = format!("{ctx}, thread {t}");
                thread::spawn(move || {
                    let mut rng = Rng::new(seed ^ ((t + 1) * 0x1234_5678_9ABC));
                    let mut origin = base.origin.clone();
                    let mut snaps: Vec<Vec<u8>> =
                        base.snaps.iter().map(|s| s.data.clone()).collect();
                    let mut touched: Vec<Vec<(u64, u64)>> = vec![Vec::new(); snaps.len() + 1];
                    let handles: Vec<Arc<Snapshot>> = base
                        .snaps
                        .iter()
                        .map(|s| vol.snapshot(&s.name).unwrap())
                        .collect();
                    let mut ops = 0u64;
                    while ops < 8000 && Instant::now() < deadline {
                        ops += 1;
                        let (off, len) = own_range(&mut rng, t, size);
                        let r = off as usize..(off + len) as usize;
                        let i = rng.below(snaps.len() as u64) as usize;
                        let what = format!("{ctx} op {ops} at {off}+{len}");
                        match rng.below(6) {
                            0 => {
                                let d = rng.bytes(len);
                                vol.write_origin(off, &d)
                                    .unwrap_or_else(|e| panic!("{what}: origin write: {e}"));
                                origin[r].copy_from_slice(&d);
                                touched[0].push((off, len));
                            }
                            1 => {
                                let d = rng.bytes(len);
                                vol.write_snapshot(&handles[i], off, &d)
                                    .unwrap_or_else(|e| panic!("{what}: snapshot write: {e}"));
                                snaps[i][r].copy_from_slice(&d);
                                touched[i + 1].push((off, len));
                            }
                            2 => {
                                vol.zero_snapshot(&handles[i], off, len)
                                    .unwrap_or_else(|e| panic!("{what}: snapshot zero: {e}"));
                                snaps[i][r].fill(0);
                                touched[i + 1].push((off, len));
                            }
                            3 => {
                                let mut buf = vec![0u8; len as usize];
                                vol.read_origin(off, &mut buf)
                                    .unwrap_or_else(|e| panic!("{what}: origin read: {e}"));
                                assert_bytes(&buf, &origin[r], off, &format!("{what}: origin"));
                            }
                            _ => {
                                let mut buf = vec![0u8; len as usize];
                                vol.read_snapshot(&handles[i], off, &mut buf)
                                    .unwrap_or_else(|e| panic!("{what}: snapshot read: {e}"));
                                let name = handles[i].name();
                                assert_bytes(&buf, &snaps[i][r], off, &format!("{what}: {name}"));
                            }
                        }
                    }
                    (origin, snaps, touched)
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("{ctx}: a thread panicked"))
            })
            .collect();
        // Merge the threads' models, stripe by stripe; every chunk that any write touched has
        // exactly one exception in every snapshot.
        let mut model = Arc::into_inner(shared).unwrap();
        for (t, (origin, snaps, touched)) in results.iter().enumerate() {
            let mut s = t as u64;
            while s * STRIPE < size {
                let r = (s * STRIPE) as usize..((s + 1) * STRIPE).min(size) as usize;
                model.origin[r.clone()].copy_from_slice(&origin[r.clone()]);
                for (m, d) in model.snaps.iter_mut().zip(snaps) {
                    m.data[r.clone()].copy_from_slice(&d[r.clone()]);
                }
                s += THREADS;
            }
            for (k, ranges) in touched.iter().enumerate() {
                for &(off, len) in ranges {
                    let targets: Vec<usize> = if k == 0 {
                        (0..model.snaps.len()).collect()
                    } else {
                        vec![k - 1]
                    };
                    for i in targets {
                        let m = &mut model.snaps[i];
                        for c in off / m.chunk_bytes..=(off + len - 1) / m.chunk_bytes {
                            if !m.excepted[c as usize] {
                                m.excepted[c as usize] = true;
                                m.exceptions += 1;
                            }
                        }
                    }
                }
            }
        }
        verify_all(&vol, &model, &format!("{ctx}: after the threads"));
        let vol = Arc::into_inner(vol).unwrap();
        drop(vol);
        model.reopened();
        let vol = open_volume(&origin, &model, VolumeOptions::default(), &ctx);
        verify_all(&vol, &model, &format!("{ctx}: after reopen"));
    }
}

/// Readers read snapshots while writers overwrite the origin over the same chunks: a snapshot
/// never shows origin data written after it was taken. Midway a snapshot is attached: it holds
/// each writer's region as it was after some prefix of that writer's writes, between those
/// acknowledged before the attach began and those begun before it returned.
#[test]
fn concurrent_snapshot_reads_during_origin_writes() {
    const WRITERS: u64 = 2;
    const READERS: u64 = 2;
    for seed in seeds(1, 0xD0_0000) {
        let ctx = replay(seed);
        let (origin, mut model) = concurrent_model(seed);
        let size = model.size;
        let vol = Arc::new(open_volume(&origin, &model, writeback_on(), &ctx));
        let deadline = Instant::now() + TIME_LIMIT;
        let stop = Arc::new(AtomicBool::new(false));
        let attached = Arc::new(AtomicBool::new(false));
        let done: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        let initial = Arc::new(model.origin.clone());
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (vol, stop, done) = (vol.clone(), stop.clone(), done.clone());
                let attached = attached.clone();
                let ctx = format!("{ctx}, writer {t}");
                thread::spawn(move || {
                    let mut rng = Rng::new(seed ^ ((t + 1) * 0x9876_5432_1234));
                    let mut log: Vec<(u64, Option<Vec<u8>>, u64)> = Vec::new();
                    // Writers own alternate 48 KiB regions: writes span chunks of every size.
                    let region = 48 * KIB;
                    // Writers keep going until the attach is done, whatever the time.
                    let more = |n: usize| n < 5000 && Instant::now() < deadline;
                    while more(log.len()) || !attached.load(Ordering::SeqCst) {
                        let regions = size.div_ceil(region);
                        let k = t + WRITERS * rng.below((regions - t).div_ceil(WRITERS));
                        let start = k * region;
                        let end = (start + region).min(size);
                        let off = rng.between(start, end - 1);
                        let len = rng.between(1, (end - off).min(20 * KIB));
                        if rng.chance(15) {
                            vol.zero_origin(off, len)
                                .unwrap_or_else(|e| panic!("{ctx}: zero: {e}"));
                            log.push((off, None, len));
                        } else {
                            let d = rng.bytes(len);
                            vol.write_origin(off, &d)
                                .unwrap_or_else(|e| panic!("{ctx}: write: {e}"));
                            log.push((off, Some(d), len));
                        }
                        done[t as usize].fetch_add(1, Ordering::SeqCst);
                    }
                    stop.store(true, Ordering::SeqCst);
                    log
                })
            })
            .collect();
        let readers: Vec<_> = (0..READERS)
            .map(|t| {
                let (vol, stop, initial) = (vol.clone(), stop.clone(), initial.clone());
                let names: Vec<String> = model.snaps.iter().map(|s| s.name.clone()).collect();
                let ctx = format!("{ctx}, reader {t}");
                thread::spawn(move || {
                    let mut rng = Rng::new(seed ^ ((t + 7) * 0x5555_1234));
                    let snaps: Vec<Arc<Snapshot>> =
                        names.iter().map(|n| vol.snapshot(n).unwrap()).collect();
                    let mut reads = 0u64;
                    while !stop.load(Ordering::SeqCst) || reads < 10 {
                        reads += 1;
                        let s = &snaps[rng.below(snaps.len() as u64) as usize];
                        let len = rng.between(1, 64 * KIB);
                        let off = rng.between(0, size - len);
                        let mut buf = vec![0u8; len as usize];
                        vol.read_snapshot(s, off, &mut buf)
                            .unwrap_or_else(|e| panic!("{ctx}: read: {e}"));
                        let what = format!("{ctx} read {reads} of {} at {off}+{len}", s.name());
                        assert_bytes(
                            &buf,
                            &initial[off as usize..(off + len) as usize],
                            off,
                            &what,
                        );
                    }
                    reads
                })
            })
            .collect();
        // Attach a snapshot while the writers run.
        while done.iter().any(|d| d.load(Ordering::SeqCst) < 300) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(1));
        }
        let late_cow = mem("late", roomy_cow_bytes(P, 8 * KIB, size));
        let before: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        let late = vol
            .attach_snapshot(SnapshotConfig {
                name: "late".into(),
                cow: late_cow.device(),
                kind: P,
                chunk_sectors: 16,
                features: Default::default(),
            })
            .unwrap_or_else(|e| panic!("{ctx}: attach: {e}"));
        let after: Vec<u64> = done.iter().map(|d| d.load(Ordering::SeqCst)).collect();
        attached.store(true, Ordering::SeqCst);
        let logs: Vec<_> = writers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("{ctx}: a writer panicked"))
            })
            .collect();
        let reads: u64 = readers
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| panic!("{ctx}: a reader panicked"))
            })
            .sum();
        assert!(reads > 0, "{ctx}: no reads");
        // The late snapshot, writer region by writer region.
        let mut snap_late = vec![0u8; size as usize];
        vol.read_snapshot(&late, 0, &mut snap_late)
            .unwrap_or_else(|e| panic!("{ctx}: read of late: {e}"));
        let region = 48 * KIB;
        let mut late_model = initial.to_vec();
        for (t, log) in logs.iter().enumerate() {
            let mut state = initial.to_vec();
            let apply = |state: &mut Vec<u8>, (off, d, len): &(u64, Option<Vec<u8>>, u64)| {
                let r = *off as usize..(off + len) as usize;
                match d {
                    Some(d) => state[r].copy_from_slice(d),
                    None => state[r].fill(0),
                }
            };
            for w in &log[..before[t] as usize] {
                apply(&mut state, w);
            }
            let in_region = |buf: &[u8], state: &[u8]| {
                let mut k = t as u64;
                while k * region < size {
                    let r = (k * region) as usize..((k + 1) * region).min(size) as usize;
                    if buf[r.clone()] != state[r] {
                        return false;
                    }
                    k += WRITERS;
                }
                true
            };
            let last = (after[t] as usize + 1).min(log.len());
            let mut found = in_region(&snap_late, &state);
            let mut j = before[t] as usize;
            while !found && j < last {
                apply(&mut state, &log[j]);
                j += 1;
                found = in_region(&snap_late, &state);
            }
            assert!(
                found,
                "{ctx}: snapshot late does not hold writer {t}'s region after any of its writes \
                 {}..={} (attached between)",
                before[t], last
            );
            let mut k = t as u64;
            while k * region < size {
                let r = (k * region) as usize..((k + 1) * region).min(size) as usize;
                late_model[r.clone()].copy_from_slice(&state[r]);
                k += WRITERS;
            }
            let mut full = state;
            for w in &log[j..] {
                apply(&mut full, w);
            }
            let mut k = t as u64;
            while k * region < size {
                let r = (k * region) as usize..((k + 1) * region).min(size) as usize;
                model.origin[r.clone()].copy_from_slice(&full[r]);
                k += WRITERS;
            }
        }
        // The origin holds every write; the first snapshots still hold the initial content.
        let mut buf = vec![0u8; size as usize];
        vol.read_origin(0, &mut buf).unwrap();
        assert_bytes(
            &buf,
            &model.origin,
            0,
            &format!("{ctx}: origin after the writers"),
        );
        for s in &model.snaps {
            let snap = vol.snapshot(&s.name).unwrap();
            vol.read_snapshot(&snap, 0, &mut buf).unwrap();
            assert_bytes(&buf, &initial, 0, &format!("{ctx}: snapshot {}", s.name));
        }
        assert_bytes(&snap_late, &late_model, 0, &format!("{ctx}: late"));
    }
}

/// First writes to the same chunks from several threads at once, on a fresh volume each round:
/// threads 0 and 2 write the origin, 1 and 3 the snapshot `p`, each its own quarter of every
/// chunk, released together by a barrier. Each chunk must be copied exactly once and before any
/// origin byte of it changes, and each snapshot fill must take the origin data around the
/// written bytes from before the origin writes.
#[test]
fn concurrent_first_writes_to_the_same_chunks() {
    const ROUNDS: u64 = 300;
    const CHUNKS: u64 = 4;
    for seed in seeds(1, 0xE0_0000) {
        let ctx = replay(seed);
        let mut rng = Rng::new(seed);
        let deadline = Instant::now() + TIME_LIMIT;
        let mut round = 0;
        while round < ROUNDS && Instant::now() < deadline {
            round += 1;
            let sectors = rng.pick(&[4, 8, 16, 128]);
            let cb = sectors * SECTOR;
            let size = (CHUNKS + 1) * cb;
            let (origin, mut model) = random_origin(rng.next(), size);
            model.add_snapshot("p", P, sectors, mem("p", roomy_cow_bytes(P, cb, size)));
            model.add_snapshot(
                "n",
                N,
                sectors * 2,
                mem("n", roomy_cow_bytes(N, 2 * cb, size)),
            );
            let ctx = format!("{ctx}, round {round} (chunk {sectors} sectors)");
            let vol = open_volume(&origin, &model, writeback_on(), &ctx);
            let p = vol.snapshot("p").unwrap();
            let barrier = std::sync::Barrier::new(4);
            let quarter = cb / 4;
            let writes: Vec<(u64, u64, Vec<u8>)> = (0..4u64)
                .flat_map(|t| (0..CHUNKS).map(move |c| (t, c)))
                .map(|(t, c)| (t, c * cb + t * quarter, rng.bytes(quarter)))
                .collect();
            thread::scope(|s| {
                let threads: Vec<_> = (0..4u64)
                    .map(|t| {
                        let (vol, p, barrier, writes, ctx) = (&vol, &p, &barrier, &writes, &ctx);
                        s.spawn(move || {
                            barrier.wait();
                            for (_, off, d) in writes.iter().filter(|w| w.0 == t) {
                                let got = if t % 2 == 0 {
                                    vol.write_origin(*off, d)
                                } else {
                                    vol.write_snapshot(p, *off, d)
                                };
                                got.unwrap_or_else(|e| panic!("{ctx}: thread {t} at {off}: {e}"));
                            }
                        })
                    })
                    .collect();
                for h in threads {
                    h.join()
                        .unwrap_or_else(|_| panic!("{ctx}: a thread panicked"));
                }
            });
            for (t, off, d) in &writes {
                if t % 2 == 0 {
                    model.origin_write(*off, quarter, Some(d));
                } else {
                    model
                        .snap_write(0, *off, quarter, Some(d))
                        .unwrap_or_else(|w| panic!("{ctx}: model refused a write: {w:?}"));
                }
            }
            verify_all(&vol, &model, &ctx);
        }
        assert!(round >= 10, "{ctx}: only {round} rounds ran");
    }
}
