//! Write-back groups at the library level: the worker reads a group's old data (many reads at
//! once), copies it to each COW in runs (gathered or straight from a held buffer), commits the
//! group as one batch that may fill several metadata areas, then writes the origin.
//!
//! - Crashes at every flush of floods of 4 KiB first writes whose groups fill several areas at
//!   once, over a COW full of stale garbage: the crash image's record list (read by the
//!   reference reader) is well formed, every record points at the original bytes of its
//!   chunk, every origin chunk that changed is listed, everything before the last fsync is on
//!   the origin, and the reopened snapshot equals the original image.
//! - Old-data read errors: the snapshots that needed the copy are invalidated, the origin takes
//!   the new data, a snapshot that needed no copy keeps its data, fsync answers.
//! - COW write errors inside gathered runs: that snapshot is invalidated; another snapshot keeps
//!   the exact original; the origin takes every write.

mod common;

use common::format::{Layout, reference_list, word32};
use common::*;
use snapfs::device::Wrapped;
use snapfs::device::{BlockDevice, CrashMode, Device, DeviceHooks, MemDevice, SimDevice, SimWorld};
use snapfs::{Volume, VolumeOptions};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

const CHUNK: u64 = 4096;
const CS: u64 = 8;

/// The bytes first write `c` (to origin chunk `c`) puts there.
fn pattern(c: u64) -> Vec<u8> {
    Rng::new(0x9a77_0000 + c).bytes(CHUNK)
}

/// `n` distinct chunks of `chunks`, in a seeded random order.
fn permutation(seed: u64, chunks: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..chunks).collect();
    let mut rng = Rng::new(seed);
    for i in (1..v.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// A COW of `bytes` full of 0xA5 (a reused device), its header chunk zeroed: a new store.
fn garbage_cow(bytes: u64) -> Vec<u8> {
    let mut img = vec![0xA5u8; bytes as usize];
    img[..CHUNK as usize].fill(0);
    img
}

/// COW flushes wait while the gate is closed: the held writes of a whole batch pile up behind
/// the first group's commit and the next group takes them all (several areas at once).
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
}

impl Gate {
    fn set(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }
}

impl DeviceHooks<SimDevice> for Gate {
    fn flush(&self, inner: &SimDevice) -> std::io::Result<()> {
        let mut closed = self.closed.lock().unwrap();
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        inner.flush()
    }
}

/// What a flood did before it stopped.
struct Flood {
    /// The chunks written, in order.
    order: Vec<u64>,
    /// How many of them were answered before the last fsync that returned Ok.
    synced: usize,
}

/// Opens a volume over `origin` and a gated `cow` (the store is new: initialised here) and
/// writes `batches` of 4 KiB first writes (`threads` writers each), fsync after each batch.
/// With `gated`, COW flushes wait until a batch is issued. With `freeze`, the world crashes at
/// that flush counted from after the open.
fn flood(
    world: &Arc<SimWorld>,
    origin: Device,
    cow: Arc<Wrapped<SimDevice, Gate>>,
    batches: &[usize],
    gated: bool,
    freeze: Option<(u64, CrashMode)>,
) -> Flood {
    let cow_dev: Device = cow.clone();
    let options = VolumeOptions {
        writeback_bytes: 16 << 20,
        ..VolumeOptions::default()
    };
    let vol = Volume::open(origin.clone(), vec![config("s", &cow_dev, P, CS)], options)
        .expect("a garbage-filled COW with a zeroed header is a new store");
    if let Some((k, mode)) = freeze {
        world.freeze_at_flush(world.flush_count() + k, mode);
    }
    let chunks = origin.size_bytes() / CHUNK;
    let order: Vec<u64> = permutation(77, chunks)
        .into_iter()
        .take(batches.iter().sum())
        .collect();
    let mut synced = 0;
    let mut at = 0;
    for &n in batches {
        cow.hooks.set(gated);
        let batch = &order[at..at + n];
        std::thread::scope(|s| {
            for t in 0..4 {
                let vol = &vol;
                s.spawn(move || {
                    for &c in batch.iter().skip(t).step_by(4) {
                        // After the crash point every device fails: errors are expected then.
                        let _ = vol.write_origin(c * CHUNK, &pattern(c));
                    }
                });
            }
        });
        cow.hooks.set(false);
        at += n;
        if vol.flush_origin().is_ok() {
            synced = at;
        }
    }
    drop(vol);
    Flood { order, synced }
}

/// Checks a (crash) image pair against the original and the flood.
fn check_images(original: &[u8], origin_img: &[u8], cow_img: &[u8], run: &Flood, what: &str) {
    let l = Layout { cs: CS };
    let chunk = |img: &[u8], c: u64| -> Vec<u8> {
        let at = (c * CHUNK) as usize;
        img[at..(at + CHUNK as usize).min(img.len())].to_vec()
    };
    for &c in &run.order[..run.synced] {
        assert!(
            chunk(origin_img, c) == pattern(c),
            "{what}: chunk {c}, written before an fsync that returned, is not on the origin"
        );
    }
    if word32(cow_img, 4) == 0 {
        // Invalidated (a full COW): no promise about its data.
        return;
    }
    let list = reference_list(cow_img, l, original.len() as u64)
        .unwrap_or_else(|e| panic!("{what}: the COW's record list is not well formed: {e}"));
    for &(old, new) in &list {
        assert!(
            chunk(cow_img, new) == chunk(original, old),
            "{what}: the record ({old}, {new}) points at bytes that are not the original chunk"
        );
    }
    let listed: HashSet<u64> = list.iter().map(|r| r.0).collect();
    for c in 0..original.len() as u64 / CHUNK {
        if chunk(origin_img, c) != chunk(original, c) {
            assert!(
                listed.contains(&c),
                "{what}: origin chunk {c} changed but the snapshot has no copy of it"
            );
        }
    }
    // The snapfs loader agrees: the reopened snapshot is the original, the origin the image.
    let origin: Device = Arc::new(MemDevice::from_bytes("origin", origin_img.to_vec(), 512));
    let cow: Device = Arc::new(MemDevice::from_bytes("cow", cow_img.to_vec(), 512));
    let vol = Volume::open(
        origin,
        vec![config("s", &cow, P, 0)],
        VolumeOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: the crash image does not open: {e}"));
    let snap = vol.snapshot("s").unwrap();
    assert!(!snap.is_invalid(), "{what}: reopened invalid");
    assert_eq!(
        snap.exceptions(),
        list.len() as u64,
        "{what}: loader disagrees"
    );
    let mut buf = vec![0u8; original.len()];
    vol.read_snapshot(&snap, 0, &mut buf).unwrap();
    assert!(
        buf == original,
        "{what}: the reopened snapshot is not the original image"
    );
}

/// Runs the flood on fresh devices (origin, then COW, in one world).
fn flood_in(
    original: &[u8],
    cow_bytes: u64,
    batches: &[usize],
    gated: bool,
    freeze: Option<(u64, CrashMode)>,
) -> (Arc<SimWorld>, Flood) {
    let world = SimWorld::new();
    let origin = world.device_from("origin", original.to_vec(), 512);
    let cow = Arc::new(Wrapped::around(
        world.device_from("cow", garbage_cow(cow_bytes), 512),
        Gate::default(),
    ));
    let run = flood(&world, origin, cow, batches, gated, freeze);
    (world, run)
}

fn crash_everywhere(seed: u64, origin_bytes: u64, cow_bytes: u64, batches: &[usize], gated: bool) {
    let original = Rng::new(seed).bytes(origin_bytes);
    let (clean, run) = flood_in(&original, cow_bytes, batches, gated, None);
    let images = clean.durable_images();
    check_images(&original, &images[0], &images[1], &run, "clean run");
    let total = clean.flush_count();
    let mut reached = 0;
    for k in 1..=total {
        for mode in [
            CrashMode::Drop,
            CrashMode::Tear { seed: k },
            CrashMode::Tear { seed: k ^ 0xdead },
        ] {
            let (world, run) = flood_in(&original, cow_bytes, batches, gated, Some((k, mode)));
            let Some(images) = world.crash_images() else {
                continue; // this run needed fewer flushes
            };
            reached += 1;
            let what = format!("crash at flush {k} of about {total} ({mode:?})");
            check_images(&original, &images[0], &images[1], &run, &what);
        }
    }
    assert!(
        reached >= total,
        "{reached} crash points reached, {total} flushes"
    );
}

/// Batches of up to 900 held writes committed as one group: up to four areas of 256 records
/// at once, their successors full of 0xA5 until zeroed.
#[test]
fn crashes_during_multi_area_groups_over_a_garbage_cow() {
    crash_everywhere(1, 16 * MIB, 24 * MIB, &[300, 900, 5, 700, 600], true);
}

/// The same flood without the gate (groups as they come) on a COW that fills up: the store
/// near its end (areas that would lie past it) and the invalidation.
#[test]
fn crashes_of_a_flood_that_fills_a_garbage_cow() {
    // 1300 chunks: about 1290 exceptions fit.
    crash_everywhere(2, 8 * MIB, 1300 * CHUNK, &[600, 600, 400], false);
}

/// Fails reads (or writes) that reach into `[lo, hi)` while armed.
struct Fault {
    armed: AtomicBool,
    lo: AtomicU64,
    hi: AtomicU64,
    hits: AtomicU64,
}

impl Fault {
    fn new(lo: u64, hi: u64) -> Fault {
        Fault {
            armed: AtomicBool::new(false),
            lo: AtomicU64::new(lo),
            hi: AtomicU64::new(hi),
            hits: AtomicU64::new(0),
        }
    }

    fn check(&self, offset: u64, len: usize, what: &str) -> std::io::Result<()> {
        let (lo, hi) = (
            self.lo.load(Ordering::SeqCst),
            self.hi.load(Ordering::SeqCst),
        );
        if self.armed.load(Ordering::SeqCst) && offset < hi && lo < offset + len as u64 {
            self.hits.fetch_add(1, Ordering::SeqCst);
            return Err(std::io::Error::other(format!("injected {what} error")));
        }
        Ok(())
    }
}

struct ReadFault(Fault);
struct WriteFault(Fault);

impl DeviceHooks<MemDevice> for ReadFault {
    fn read_at(&self, inner: &MemDevice, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.check(offset, buf.len(), "read")?;
        inner.read_at(buf, offset)
    }
}

impl DeviceHooks<MemDevice> for WriteFault {
    fn write_at(&self, inner: &MemDevice, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.check(offset, buf.len(), "write")?;
        inner.write_at(buf, offset)
    }
}

fn mem_dev(name: &str, image: Vec<u8>) -> Arc<MemDevice> {
    Arc::new(MemDevice::from_bytes(name, image, 512))
}

fn whole_snapshot(vol: &Volume, name: &str) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size_bytes() as usize];
    vol.read_snapshot(&vol.snapshot(name).unwrap(), 0, &mut buf)
        .unwrap();
    buf
}

fn whole_origin(vol: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size_bytes() as usize];
    vol.read_origin(0, &mut buf).unwrap();
    buf
}

/// Writes `writes` (offset, bytes) from 4 threads; every write must be answered Ok.
fn write_all(vol: &Volume, writes: &[(u64, Vec<u8>)]) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for (off, data) in writes.iter().skip(t).step_by(4) {
                    vol.write_origin(*off, data).unwrap();
                }
            });
        }
    });
}

/// Small first writes (4 KiB and 512 B at odd sectors) whose old data cannot be read, mixed with
/// writes whose old data can: the snapshot that needed the copies is invalidated, a snapshot
/// that already had those chunks keeps its data, the origin takes every write, fsync answers.
#[test]
fn old_data_read_errors_of_small_held_writes() {
    const ORIGIN: u64 = 4 * MIB;
    let original = Rng::new(3).bytes(ORIGIN);
    let origin = Arc::new(Wrapped::around(
        mem_dev("origin", original.clone()),
        ReadFault(Fault::new(MIB, 2 * MIB)),
    ));
    let origin_dev: Device = origin.clone();
    let cows: Vec<Device> = (0..3)
        .map(|i| mem_dev(&format!("cow{i}"), vec![0; (8 * MIB) as usize]) as Device)
        .collect();
    let options = VolumeOptions {
        writeback_bytes: 4 << 20,
        ..VolumeOptions::default()
    };
    let vol = Volume::open(
        origin_dev,
        vec![
            config("old", &cows[0], P, 8),
            config("other", &cows[2], P, 32),
        ],
        options,
    )
    .unwrap();
    let mut model = original.clone();
    // `old` and `other` copy all of [1 MiB, 2 MiB) now, before the faults.
    let first: Vec<(u64, Vec<u8>)> = (0..256u64)
        .map(|i| (MIB + i * CHUNK, Rng::new(100 + i).bytes(CHUNK)))
        .collect();
    write_all(&vol, &first);
    for (off, d) in &first {
        write_model(&mut model, *off, d);
    }
    vol.flush_origin().unwrap();
    vol.attach_snapshot(config("new", &cows[1], P, 8)).unwrap();
    // Only `new` copies in [1 MiB, 2 MiB), where reads fail; every snapshot copies in
    // [3 MiB, 4 MiB), where they do not; the two kinds interleave, so groups hold both.
    let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut rng = Rng::new(4);
    for (i, c) in permutation(5, 256).into_iter().enumerate() {
        let off = MIB + c * CHUNK;
        if i % 3 == 0 {
            let sector = rng.next() % 7 + 1;
            writes.push((off + sector * 512, rng.bytes(512)));
        } else {
            writes.push((off, rng.bytes(CHUNK)));
        }
        writes.push((3 * MIB + c * CHUNK, rng.bytes(CHUNK)));
    }
    origin.hooks.0.armed.store(true, Ordering::SeqCst);
    write_all(&vol, &writes);
    vol.flush_origin()
        .expect("the origin writes went ahead: fsync reports no error");
    origin.hooks.0.armed.store(false, Ordering::SeqCst);
    assert!(
        origin.hooks.0.hits.load(Ordering::SeqCst) > 0,
        "no read failed"
    );
    for (off, d) in &writes {
        write_model(&mut model, *off, d);
    }
    assert_eq!(status_word(&vol, "new"), "Invalid", "a copy read failed");
    assert!(
        whole_origin(&vol) == model,
        "the origin misses written data"
    );
    for name in ["old", "other"] {
        assert!(!vol.snapshot(name).unwrap().is_invalid(), "{name} invalid");
        assert!(whole_snapshot(&vol, name) == original, "{name} changed");
    }
    // And after a reopen from the devices.
    drop(vol);
    let origin_dev: Device = origin.clone();
    let again = Volume::open(
        origin_dev,
        vec![
            config("old", &cows[0], P, 0),
            config("other", &cows[2], P, 0),
        ],
        VolumeOptions::default(),
    )
    .unwrap();
    assert!(whole_origin(&again) == model);
    for name in ["old", "other"] {
        assert!(whole_snapshot(&again, name) == original, "{name} changed");
    }
}

/// A COW that fails every write reaching past some offset, in the middle of a flood of 4 KiB
/// first writes whose copies go as gathered runs: that snapshot is invalidated, another
/// snapshot (a healthy COW, another chunk size) keeps the exact original, the origin takes
/// every write.
#[test]
fn cow_write_errors_inside_gathered_runs() {
    const ORIGIN: u64 = 8 * MIB;
    let original = Rng::new(6).bytes(ORIGIN);
    let origin: Device = mem_dev("origin", original.clone());
    // Fails from COW chunk 700 on (data and areas alike): inside a group's runs.
    let bad = Arc::new(Wrapped::around(
        mem_dev("bad", vec![0; (16 * MIB) as usize]),
        WriteFault(Fault::new(700 * CHUNK, 16 * MIB)),
    ));
    bad.hooks.0.armed.store(true, Ordering::SeqCst);
    let bad_dev: Device = bad.clone();
    let good: Device = mem_dev("good", vec![0; (16 * MIB) as usize]);
    let options = VolumeOptions {
        writeback_bytes: 8 << 20,
        ..VolumeOptions::default()
    };
    let vol = Volume::open(
        origin,
        vec![config("bad", &bad_dev, P, 8), config("good", &good, P, 16)],
        options,
    )
    .unwrap();
    let writes: Vec<(u64, Vec<u8>)> = permutation(7, ORIGIN / CHUNK)
        .into_iter()
        .take(1500)
        .map(|c| (c * CHUNK, pattern(c)))
        .collect();
    write_all(&vol, &writes);
    vol.flush_origin().unwrap();
    let mut model = original.clone();
    for (off, d) in &writes {
        write_model(&mut model, *off, d);
    }
    assert!(
        bad.hooks.0.hits.load(Ordering::SeqCst) > 0,
        "no COW write failed"
    );
    assert_eq!(status_word(&vol, "bad"), "Invalid");
    assert!(
        whole_origin(&vol) == model,
        "the origin misses written data"
    );
    assert!(
        whole_snapshot(&vol, "good") == original,
        "the healthy snapshot changed"
    );
}

/// Chunk sizes of the multi-snapshot crash test (4, 16 and 64 KiB).
const SIZES: [u64; 3] = [8, 32, 128];

/// The writes of the multi-snapshot crash flood: one per 128 KiB slot, in a random order, 512 B
/// (unaligned), 4 KiB or 96 KiB, and one at the very end of an origin of `size` bytes. Their
/// footprints (rounded to 64 KiB) are disjoint: a write over a held footprint would wait for
/// the gated commit.
fn mixed_writes(size: u64) -> Vec<(u64, Vec<u8>)> {
    const SLOT: u64 = 128 * KIB;
    let mut rng = Rng::new(17);
    let mut writes = Vec::new();
    for (i, slot) in permutation(18, size / SLOT).into_iter().enumerate() {
        let (off, len) = match i % 3 {
            0 => (slot * SLOT + 512 * (1 + rng.next() % 100) + 7, 512),
            1 => (slot * SLOT + 4096 * (rng.next() % 16), 4096),
            _ => (slot * SLOT, 96 * KIB),
        };
        writes.push((off, rng.bytes(len)));
    }
    writes.push((size - 5000, rng.bytes(5000)));
    writes
}

/// Opens three snapshots (gated COWs) over `origin` and writes `writes` in 3 batches from 4
/// threads, fsync after each; with `freeze`, the world crashes at that flush after the open.
/// Returns how many writes were issued before the last fsync that returned Ok.
fn multi_flood(
    world: &Arc<SimWorld>,
    origin: Device,
    cows: &[Arc<Wrapped<SimDevice, Gate>>],
    writes: &[(u64, Vec<u8>)],
    freeze: Option<(u64, CrashMode)>,
) -> usize {
    let configs = cows
        .iter()
        .zip(SIZES)
        .enumerate()
        .map(|(i, (cow, cs))| {
            let dev: Device = cow.clone();
            config(&format!("s{i}"), &dev, P, cs)
        })
        .collect();
    let options = VolumeOptions {
        writeback_bytes: 32 << 20,
        ..VolumeOptions::default()
    };
    let vol = Volume::open(origin, configs, options).unwrap();
    if let Some((k, mode)) = freeze {
        world.freeze_at_flush(world.flush_count() + k, mode);
    }
    let mut synced = 0;
    for batch in writes.chunks(writes.len().div_ceil(3)) {
        cows.iter().for_each(|c| c.hooks.set(true));
        std::thread::scope(|s| {
            for t in 0..4 {
                let vol = &vol;
                s.spawn(move || {
                    for (off, data) in batch.iter().skip(t).step_by(4) {
                        let _ = vol.write_origin(*off, data);
                    }
                });
            }
        });
        cows.iter().for_each(|c| c.hooks.set(false));
        if vol.flush_origin().is_ok() {
            synced += batch.len();
        } else {
            break;
        }
    }
    synced
}

/// Three snapshots of 4, 16 and 64 KiB chunks over garbage COWs, on an origin of 8 MiB + 12 KiB
/// (a short last chunk for two of them), mixed writes in gated batches, crashed at every
/// flush: each COW's list is well formed and points at original bytes, every changed origin
/// chunk is listed by each snapshot, the reopened snapshots equal the original, and every
/// write before the last fsync is on the origin.
#[test]
fn crashes_of_three_chunk_sizes_over_garbage_cows() {
    const SIZE: u64 = 8 * MIB + 12 * KIB;
    let original = Rng::new(8).bytes(SIZE);
    let writes = mixed_writes(SIZE);
    let run = |freeze: Option<(u64, CrashMode)>| {
        let world = SimWorld::new();
        let origin = world.device_from("origin", original.clone(), 512);
        let cows: Vec<_> = (0..3)
            .map(|i| {
                Arc::new(Wrapped::around(
                    world.device_from(&format!("cow{i}"), garbage_cow(16 * MIB), 512),
                    Gate::default(),
                ))
            })
            .collect();
        let synced = multi_flood(&world, origin, &cows, &writes, freeze);
        (world, synced)
    };
    let check = |images: &[Vec<u8>], synced: usize, what: &str| {
        let origin_img = &images[0];
        for (off, d) in &writes[..synced] {
            let at = *off as usize;
            assert!(
                origin_img[at..at + d.len()] == d[..],
                "{what}: a write at {off}, before the last fsync, is not on the origin"
            );
        }
        for (n, &cs) in SIZES.iter().enumerate() {
            let cow_img = &images[1 + n];
            let l = Layout { cs };
            let list = reference_list(cow_img, l, SIZE)
                .unwrap_or_else(|e| panic!("{what}: s{n}'s list is not well formed: {e}"));
            let cb = l.bytes() as usize;
            let listed: HashSet<u64> = list.iter().map(|r| r.0).collect();
            for &(old, new) in &list {
                let o = &original[old as usize * cb..((old as usize + 1) * cb).min(SIZE as usize)];
                let at = new as usize * cb;
                assert!(
                    &cow_img[at..at + o.len()] == o,
                    "{what}: s{n}'s record ({old}, {new}) points at the wrong bytes"
                );
            }
            for c in 0..SIZE.div_ceil(cb as u64) {
                let r = c as usize * cb..((c as usize + 1) * cb).min(SIZE as usize);
                if origin_img[r.clone()] != original[r] {
                    assert!(listed.contains(&c), "{what}: s{n} misses changed chunk {c}");
                }
            }
        }
        let origin: Device = Arc::new(MemDevice::from_bytes("o", origin_img.clone(), 512));
        let configs = (0..3)
            .map(|n| {
                let cow: Device = Arc::new(MemDevice::from_bytes("c", images[1 + n].clone(), 512));
                config(&format!("s{n}"), &cow, P, 0)
            })
            .collect();
        let vol = Volume::open(origin, configs, VolumeOptions::default())
            .unwrap_or_else(|e| panic!("{what}: does not open: {e}"));
        for n in 0..3 {
            let name = format!("s{n}");
            let snap = vol.snapshot(&name).unwrap();
            assert!(!snap.is_invalid(), "{what}: {name} invalid");
            assert!(
                whole_snapshot(&vol, &name) == original,
                "{what}: {name} changed"
            );
        }
    };
    let (clean, synced) = run(None);
    assert_eq!(synced, writes.len());
    check(&clean.durable_images(), synced, "clean run");
    let total = clean.flush_count();
    for k in 1..=total {
        for mode in [CrashMode::Drop, CrashMode::Tear { seed: k }] {
            let (world, synced) = run(Some((k, mode)));
            let Some(images) = world.crash_images() else {
                continue;
            };
            check(
                &images,
                synced,
                &format!("crash at flush {k} of {total} ({mode:?})"),
            );
        }
    }
}
