//! Write-back groups through a real mount: floods of first writes whose old data the worker
//! reads in parallel and copies in gathered runs, whose commits fill several metadata areas.
//!
//! - kill -9 at several moments of 4 KiB floods over a COW full of stale garbage (0xA5): every
//!   record (read by the reference reader) points at the original bytes, the snapshot equals
//!   the original, everything before the last fsync is on the origin, `snapfs inspect` agrees.
//! - Three chunk sizes on an origin that is not a multiple of the largest chunk, mixed writes
//!   from 4 threads: every snapshot is the original, the origin the model, also after a
//!   remount.
//! - No thread can start (a pids cgroup): the worker reads the old data alone.
//! - Memory of 8 snapshots under floods of small first writes.
//! - Snapshot creation, drop and merge start racing a flood.
//!
//! Needs root and /dev/fuse.

mod e2e_support;
#[path = "common/format.rs"]
mod format;

use e2e_support::*;
use format::{Layout, reference_list};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const CHUNK: u64 = 4096;

/// The bytes first write `c` (to 4 KiB chunk `c`) puts there.
fn pattern(c: u64) -> Vec<u8> {
    Rng(0x6a77_0000 + c).bytes(CHUNK)
}

/// `0..n` in a seeded random order.
fn permutation(seed: u64, n: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut rng = Rng(seed);
    for i in (1..v.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        v.swap(i, j);
    }
    v
}

fn chunk_of(img: &[u8], c: u64, bytes: u64) -> &[u8] {
    let at = (c * bytes) as usize;
    &img[at..(at + bytes as usize).min(img.len())]
}

/// The COW file read by the reference reader: well formed, every record's chunk holds the
/// original bytes of its origin chunk; returns the origin chunks listed.
fn check_cow_file(cow: &Path, cs: u64, original: &[u8], what: &str) -> Vec<u64> {
    let img = std::fs::read(cow).unwrap();
    let l = Layout { cs };
    let list = reference_list(&img, l, original.len() as u64)
        .unwrap_or_else(|e| panic!("{what}: the COW's record list is not well formed: {e}"));
    for &(old, new) in &list {
        // The origin's last chunk may be short: its copy starts with its bytes.
        let want = chunk_of(original, old, l.bytes());
        assert!(
            &chunk_of(&img, new, l.bytes())[..want.len()] == want,
            "{what}: record ({old}, {new}) points at bytes that are not the original chunk"
        );
    }
    // snapfs inspect reads the same list.
    let out = snapfs_ok(&["inspect", cow.to_str().unwrap(), "--json"]);
    let j = json(&out);
    assert_eq!(j["state"], "valid", "{what}: {out}");
    assert_eq!(j["exceptions"], list.len() as u64, "{what}: {out}");
    list.into_iter().map(|r| r.0).collect()
}

/// Four threads write `chunks[i]` with `pattern`, in turn, each write counted in `acked` once
/// answered; errors (the mount killed under them) end the thread.
/// Waits for the writer threads and checks that all `n` of their writes were answered.
fn join_all(writers: Vec<std::thread::JoinHandle<()>>, count: &AtomicU64, n: u64, what: &str) {
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(count.load(Ordering::SeqCst), n, "{what}: a write failed");
}

fn spawn_writers(
    path: PathBuf,
    chunks: Arc<Vec<u64>>,
    acked: Arc<Vec<AtomicBool>>,
    count: Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4usize)
        .map(|t| {
            let (path, chunks, acked, count) =
                (path.clone(), chunks.clone(), acked.clone(), count.clone());
            std::thread::spawn(move || {
                let Ok(f) = std::fs::OpenOptions::new().write(true).open(&path) else {
                    return;
                };
                for i in (t..chunks.len()).step_by(4) {
                    let c = chunks[i];
                    if f.write_all_at(&pattern(c), c * CHUNK).is_err() {
                        return;
                    }
                    acked[i].store(true, Ordering::SeqCst);
                    count.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect()
}

/// Floods of 4 KiB first writes over a reused COW full of 0xA5 (header chunk zeroed, formatted
/// by force), 4 KiB chunks (256 records an area), killed with -9 at several moments: while the
/// writers run, after a burst with no fsync, right after an fsync. After each kill the COW
/// is checked offline and the remount: the snapshot is the original image, every write
/// before the last fsync is on the origin, every other written chunk is old or new.
#[test]
fn kill_9_during_floods_over_a_garbage_cow() {
    const SIZE: u64 = 32 * MIB;
    let mut s = Scratch::new("wbg-kill9");
    let (origin, cow) = (s.path("origin.img"), s.path("cow"));
    let original = write_random_image(&origin, SIZE, 41);
    let mut garbage = vec![0xA5u8; (SIZE + 8 * MIB) as usize];
    garbage[..CHUNK as usize].fill(0);
    std::fs::write(&cow, &garbage).unwrap();
    drop(garbage);
    let spec = format!("snapshot=s:{}:P:8", cow.display());
    let order = permutation(42, SIZE / CHUNK);
    // Each round: the chunks it writes, how many writes before the kill (None: all, then
    // fsync or not).
    let rounds: [(usize, Option<u64>, bool); 4] = [
        (1500, Some(700), false),
        (2500, None, false),
        (1200, None, true),
        (2000, Some(1800), false),
    ];
    let mut synced = original.clone();
    let mut at = 0;
    for (round, &(n, kill_after, fsync)) in rounds.iter().enumerate() {
        let what = format!("round {round}");
        // A reused device is formatted only by force (docs/cli.md): the first mount forces.
        let first = format!("{spec}:force");
        s.mount_daemon(&origin, &[if round == 0 { &first } else { &spec }], &[]);
        let chunks = Arc::new(order[at..at + n].to_vec());
        at += n;
        let acked: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        let count = Arc::new(AtomicU64::new(0));
        let writers = spawn_writers(
            s.file("origin"),
            chunks.clone(),
            acked.clone(),
            count.clone(),
        );
        match kill_after {
            Some(k) => {
                wait_for(120, "writes answered", || count.load(Ordering::SeqCst) >= k);
                kill_9(&mut s);
                for w in writers {
                    w.join().unwrap();
                }
            }
            None => {
                join_all(writers, &count, n as u64, &what);
                if fsync {
                    open_rw(&s.file("origin")).sync_all().unwrap();
                    for &c in chunks.iter() {
                        let at = (c * CHUNK) as usize;
                        synced[at..at + CHUNK as usize].copy_from_slice(&pattern(c));
                    }
                }
                kill_9(&mut s);
            }
        }
        // Offline: the COW as the crash left it.
        let listed = check_cow_file(&cow, 8, &original, &what);
        let img = std::fs::read(&origin).unwrap();
        for c in 0..SIZE / CHUNK {
            let got = chunk_of(&img, c, CHUNK);
            if got != chunk_of(&original, c, CHUNK) {
                assert!(
                    listed.contains(&c),
                    "{what}: origin chunk {c} changed, the COW has no copy of it"
                );
            }
            let want = chunk_of(&synced, c, CHUNK);
            if got != want {
                // Only a write after the last fsync may differ, and then each byte is old
                // or new.
                let new = pattern(c);
                assert!(
                    order[..at].contains(&c)
                        && got
                            .iter()
                            .zip(want)
                            .zip(&new)
                            .all(|((g, w), n)| g == w || g == n),
                    "{what}: origin chunk {c} lost a write made before the last fsync"
                );
            }
        }
        s.mount_daemon(&origin, &[&spec], &[]);
        assert_same(
            &format!("{what}: snapshot after kill -9"),
            &std::fs::read(s.file("s")).unwrap(),
            &original,
        );
        let got = std::fs::read(s.file("origin")).unwrap();
        assert!(got == img, "{what}: the remount shows another origin");
        // What survived is synced now: later rounds hold it to that.
        synced = got;
        assert_eq!(s.unmount(), 0, "{}", s.log());
    }
}

/// Thread `t`'s writes over its quarter of a volume of `size` bytes: `(offset, len, seed)`,
/// 512 B at unaligned offsets, 4 KiB, 96 KiB and 1 MiB in turn; thread 3's last one ends at the
/// end of the volume (its short last chunks).
fn mixed_writes(t: u64, size: u64, count: u64) -> Vec<(u64, u64, u64)> {
    let (lo, hi) = (t * size / 4, (t + 1) * size / 4);
    let mut rng = Rng(500 + t);
    let mut writes = Vec::new();
    for i in 0..count {
        let len = [512, 4096, 96 * 1024, MIB][(i % 4) as usize];
        let off = match len {
            512 => lo + rng.below(hi - lo - len),
            _ => lo.div_ceil(4096) * 4096 + rng.below((hi - lo - len - 4096) / 4096) * 4096,
        };
        writes.push((off, len, 30_000 + t * 10_000 + i));
    }
    if t == 3 {
        writes.push((size - 96 * 1024 - 512, 96 * 1024 + 512, 39_999));
        writes.push((size - 700, 700, 39_998));
    }
    writes
}

/// Three snapshots of 4, 16 and 64 KiB chunks on an origin of 64 MiB + 12 KiB (its last chunk
/// short for two of them), write-back on, 4 threads of mixed writes: every snapshot equals
/// the original, the origin the model, and again after a remount; each COW well formed.
#[test]
fn three_chunk_sizes_on_an_odd_origin_under_mixed_writes() {
    const SIZE: u64 = 64 * MIB + 12 * 1024;
    let mut s = Scratch::new("wbg-chunks");
    let origin = s.path("origin.img");
    let original = write_random_image(&origin, SIZE, 51);
    let mut specs = Vec::new();
    for (name, cs) in [("a", 8), ("b", 32), ("c", 128)] {
        let cow = s.path(&format!("{name}.cow"));
        sparse_file(&cow, SIZE + 16 * MIB);
        specs.push(format!("snapshot={name}:{}:P:{cs}", cow.display()));
    }
    let options: Vec<&str> = specs.iter().map(|o| o.as_str()).collect();
    s.mount_daemon(&origin, &options, &[]);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let path = s.file("origin");
            std::thread::spawn(move || {
                let f = open_rw(&path);
                for (at, len, seed) in mixed_writes(t, SIZE, 160) {
                    f.write_all_at(&Rng(seed).bytes(len), at).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let mut model = original.clone();
    for t in 0..4u64 {
        for (at, len, seed) in mixed_writes(t, SIZE, 160) {
            model[at as usize..(at + len) as usize].copy_from_slice(&Rng(seed).bytes(len));
        }
    }
    for round in ["mounted", "remounted"] {
        assert_files(
            &s,
            &model,
            &original,
            &["a", "b", "c"],
            &format!(", {round}"),
        );
        assert_eq!(s.unmount(), 0, "{}", s.log());
        for (name, cs) in [("a", 8), ("b", 32), ("c", 128)] {
            let cow = s.path(&format!("{name}.cow"));
            check_cow_file(&cow, cs, &original, &format!("{name}, {round}"));
        }
        if round == "mounted" {
            s.mount_daemon(&origin, &options, &[]);
        }
    }
}

/// `n` persistent snapshots `s0..` of `cs` sectors on sparse COWs of `cow_bytes`: their
/// mount options.
fn snapshot_specs(s: &Scratch, n: usize, cs: u64, cow_bytes: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            let cow = s.path(&format!("s{i}.cow"));
            sparse_file(&cow, cow_bytes);
            format!("snapshot=s{i}:{}:P:{cs}", cow.display())
        })
        .collect()
}

/// Floods of 4 KiB first writes (4 threads, the chunks of `order`), every one answered.
fn flood_chunks(path: &Path, order: &[u64]) {
    let count = Arc::new(AtomicU64::new(0));
    let acked: Arc<Vec<AtomicBool>> =
        Arc::new((0..order.len()).map(|_| AtomicBool::new(false)).collect());
    let writers = spawn_writers(
        path.to_path_buf(),
        Arc::new(order.to_vec()),
        acked,
        count.clone(),
    );
    join_all(writers, &count, order.len() as u64, "flood");
}

/// A flood of 4 KiB first writes with 3 snapshots while the daemon can start no thread: the
/// worker reads the old data itself (no reader thread starts) and copies to each snapshot
/// itself; every write lands and every snapshot holds the original.
#[test]
fn a_flood_with_no_thread_to_start_reads_old_data_on_the_worker() {
    if !Path::new("/sys/fs/cgroup/pids").is_dir() {
        eprintln!("no pids cgroup controller: skipped");
        return;
    }
    const SIZE: u64 = 32 * MIB;
    let mut s = Scratch::new("wbg-nothreads");
    let origin = s.path("origin.img");
    let original = write_random_image(&origin, SIZE, 61);
    let specs = snapshot_specs(&s, 3, 8, SIZE + 8 * MIB);
    let options: Vec<&str> = specs.iter().map(|o| o.as_str()).collect();
    s.mount_daemon(&origin, &options, &[]);
    // Opened before the limit (the writers' handles), to be sure.
    let handle = open_rw(&s.file("origin"));
    let order: Vec<u64> = permutation(62, SIZE / CHUNK)
        .into_iter()
        .take(4000)
        .collect();
    {
        let limit = NoNewThreads::new("wbg", s.server_pid());
        flood_chunks(&s.file("origin"), &order);
        handle.sync_all().unwrap();
        // The limit was hit: threads were refused (the readers and the copy threads).
        let events = std::fs::read_to_string(limit.dir.join("pids.events")).unwrap();
        let refused: u64 = events
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(refused > 0, "no thread was refused: {events}");
    }
    drop(handle);
    let mut model = original.clone();
    for &c in &order {
        let at = (c * CHUNK) as usize;
        model[at..at + CHUNK as usize].copy_from_slice(&pattern(c));
    }
    assert_files(&s, &model, &original, &["s0", "s1", "s2"], "");
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// Thread `t`'s writes over its quarter of `size`: one per 128 KiB slot, in a random order,
/// 4 KiB and 96 KiB in turn, at an unaligned offset: `(offset, len, seed)`.
fn slot_writes(t: u64, size: u64) -> Vec<(u64, u64, u64)> {
    const SLOT: u64 = 128 * 1024;
    let slots = size / 4 / SLOT;
    permutation(700 + t, slots)
        .into_iter()
        .enumerate()
        .map(|(i, slot)| {
            let len = if i % 2 == 0 { 4096 } else { 96 * 1024 };
            (
                t * size / 4 + slot * SLOT + 512,
                len,
                40_000 + t * 1000 + i as u64,
            )
        })
        .collect()
}

/// 8 snapshots, budgets 1M and 8M, a flood of 4 KiB and 96 KiB first writes from 4 threads:
/// every write lands, every snapshot holds the original, and the daemon's peak memory grows
/// by at most twice the budget, 64 MiB (FUSE buffers, stacks) and 16 MiB (gather buffers).
#[test]
fn eight_snapshots_under_a_flood_of_small_first_writes_stay_within_the_budget() {
    const SIZE: u64 = 128 * MIB;
    for (budget, label) in [(MIB, "1M"), (8 * MIB, "8M")] {
        let mut s = Scratch::new(&format!("wbg-mem-{label}"));
        let origin = s.path("origin.img");
        let original = write_random_image(&origin, SIZE, 71);
        let mut options = snapshot_specs(&s, 8, 8, SIZE / 2);
        options.push(format!("writeback={label}"));
        let options: Vec<&str> = options.iter().map(|o| o.as_str()).collect();
        s.mount_daemon(&origin, &options, &[]);
        let pid = s.server_pid();
        let base = peak_rss(pid);
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let path = s.file("origin");
                std::thread::spawn(move || {
                    let f = open_rw(&path);
                    for (at, len, seed) in slot_writes(t, SIZE) {
                        f.write_all_at(&Rng(seed).bytes(len), at).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let grown = peak_rss(pid).saturating_sub(base);
        let mut model = original.clone();
        for t in 0..4u64 {
            for (at, len, seed) in slot_writes(t, SIZE) {
                model[at as usize..(at + len) as usize].copy_from_slice(&Rng(seed).bytes(len));
            }
        }
        let names: Vec<String> = (0..8).map(|i| format!("s{i}")).collect();
        let names: Vec<&str> = names.iter().map(|n| n.as_str()).collect();
        assert_files(&s, &model, &original, &names, "");
        eprintln!(
            "writeback={label}, 8 snapshots: peak memory grew by {} KiB",
            grown / 1024
        );
        assert!(
            grown <= 2 * budget + 64 * MIB + 16 * MIB,
            "writeback={label}: peak memory grew by {grown} bytes"
        );
        assert_eq!(s.unmount(), 0, "{}", s.log());
    }
}

/// The origin file equals `model`, and each snapshot of `names` the original image (`ctx`
/// ends each message).
fn assert_files(s: &Scratch, model: &[u8], original: &[u8], names: &[&str], ctx: &str) {
    let read = |name: &str| std::fs::read(s.file(name)).unwrap();
    assert_same(&format!("origin{ctx}"), &read("origin"), model);
    for name in names {
        assert_same(&format!("snapshot {name}{ctx}"), &read(name), original);
    }
}

/// Waits until `n` writes are answered (polling often: the command should land mid-flood).
fn until_answered(count: &AtomicU64, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while count.load(Ordering::SeqCst) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{n} writes not answered"
        );
        std::thread::yield_now();
    }
}

/// A snapshot taken during the flood of `order` (thread `t` writes `order[t], order[t + 4]`,
/// ...): each thread's writes in it are a prefix of that thread's, including every write
/// answered before the command (`before`), and every other chunk is the original.
fn assert_prefix_consistent(
    what: &str,
    snap: &[u8],
    original: &[u8],
    order: &[u64],
    before: &[bool],
) {
    for t in 0..4 {
        let mut ended = false;
        for i in (t..order.len()).step_by(4) {
            let c = order[i];
            let got = chunk_of(snap, c, CHUNK);
            let written = got == pattern(c);
            assert!(
                written || got == chunk_of(original, c, CHUNK),
                "{what}: chunk {c} is neither old nor new"
            );
            assert!(
                written || !before[i],
                "{what}: write {i} (chunk {c}), answered before the command, is missing"
            );
            assert!(
                !(written && ended),
                "{what}: write {i} of thread {t} is in, an earlier one of it is not"
            );
            ended |= !written;
        }
    }
}

/// Snapshot creation, a drop and a refused merge start during a flood of 4 KiB first writes
/// with 4 snapshots; then a merge of a snapshot taken during the flood: the new snapshots are
/// prefix-consistent, the others the original, and the merge ends with the origin equal to
/// the merged snapshot's content.
#[test]
fn snapshots_taken_dropped_and_merged_during_a_flood() {
    const SIZE: u64 = 128 * MIB;
    let mut s = Scratch::new("wbg-control");
    let origin = s.path("origin.img");
    let original = write_random_image(&origin, SIZE, 81);
    let specs = snapshot_specs(&s, 4, 8, SIZE + 8 * MIB);
    let options: Vec<&str> = specs.iter().map(|o| o.as_str()).collect();
    s.mount_daemon(&origin, &options, &[]);
    let (cow_n1, cow_n2) = (s.path("n1.cow"), s.path("n2.cow"));
    sparse_file(&cow_n1, SIZE + 8 * MIB);
    sparse_file(&cow_n2, SIZE + 8 * MIB);
    let order: Vec<u64> = permutation(82, SIZE / CHUNK)
        .into_iter()
        .take(20_000)
        .collect();
    let count = Arc::new(AtomicU64::new(0));
    let acked: Arc<Vec<AtomicBool>> =
        Arc::new((0..order.len()).map(|_| AtomicBool::new(false)).collect());
    let writers = spawn_writers(
        s.file("origin"),
        Arc::new(order.clone()),
        acked.clone(),
        count.clone(),
    );
    let flags = |acked: &[AtomicBool]| -> Vec<bool> {
        acked.iter().map(|a| a.load(Ordering::SeqCst)).collect()
    };
    until_answered(&count, 2000);
    let before_n1 = flags(&acked);
    eprintln!("snapshot n1 after {} writes", count.load(Ordering::SeqCst));
    let (result, text) = control(&s, &format!("snapshot n1 {} P 8", cow_n1.display()));
    assert!(result.is_ok(), "snapshot n1: {text}");
    until_answered(&count, 5000);
    let (result, text) = control(&s, "drop s1");
    assert!(result.is_ok(), "drop s1: {text}");
    until_answered(&count, 8000);
    let (result, _) = control(&s, "merge s2");
    assert!(result.is_err(), "a merge started while the origin is open");
    until_answered(&count, 11_000);
    let before_n2 = flags(&acked);
    eprintln!("snapshot n2 after {} writes", count.load(Ordering::SeqCst));
    let (result, text) = control(&s, &format!("snapshot n2 {} P 32", cow_n2.display()));
    assert!(result.is_ok(), "snapshot n2: {text}");
    join_all(writers, &count, order.len() as u64, "flood");
    let mut model = original.clone();
    for &c in &order {
        let at = (c * CHUNK) as usize;
        model[at..at + CHUNK as usize].copy_from_slice(&pattern(c));
    }
    assert_files(&s, &model, &original, &["s0", "s2", "s3"], "");
    assert!(!s.file("s1").exists(), "s1 dropped");
    check_cow_file(&s.path("s1.cow"), 8, &original, "dropped s1");
    let n1 = std::fs::read(s.file("n1")).unwrap();
    assert_prefix_consistent("n1", &n1, &original, &order, &before_n1);
    let n2 = std::fs::read(s.file("n2")).unwrap();
    assert_prefix_consistent("n2", &n2, &original, &order, &before_n2);
    // Merge n1 now that nothing holds the origin open.
    let mnt = s.mnt.to_str().unwrap().to_string();
    snapfs_ok(&["merge", &mnt, "n1", "--wait"]);
    assert_same(
        "origin after merging n1",
        &std::fs::read(s.file("origin")).unwrap(),
        &n1,
    );
    for name in ["s0", "s2", "s3"] {
        assert_same(
            &format!("snapshot {name} after the merge"),
            &std::fs::read(s.file(name)).unwrap(),
            &original,
        );
    }
    assert_same(
        "n2 after the merge",
        &std::fs::read(s.file("n2")).unwrap(),
        &n2,
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}
