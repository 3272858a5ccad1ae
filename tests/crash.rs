//! Crash tests: a deterministic workload on simulated devices is cut at every flush point (or
//! an even sample of them), in `Drop` and `Tear` modes; the devices are rebuilt from the crash
//! images and the volume reopened. Every store must load, no snapshot may be invalid, and every
//! sector must hold a value it may legally have:
//! - the origin: its value as of the last successful flush that covered it, or any value written
//!   after that flush (writes that returned `Ok` or failed);
//! - a snapshot sector written through the snapshot: the same rule, where the flushes are
//!   `flush_snapshot`/`flush_all` and the commits of the store (a commit flushes the COW, and a
//!   write that made a new exception is durable when it returns);
//! - a snapshot sector never written through the snapshot: exactly the origin content as of the
//!   snapshot's creation, no alternative.
//!
//! With write-back (odd seeds: origin first writes answered before their copy-out), the oracle is
//! the block device's: what was acknowledged before the last completed flush survives (a flush
//! drains every held write first), anything later may or may not; a copy-out no longer settles
//! the snapshot's earlier writes when the origin write returns (its commit comes later), and a
//! snapshot never shows an origin write's new data. Every store must still load as a valid
//! kernel COW at every flush point.
//!
//! Then the recovered volume is used a little more with an exact model, flushed, reopened and
//! checked again (recovery must leave stores that keep working).
//!
//! Every sector written carries its tag and its sector number, so a read identifies the write it
//! came from (and a sector from the wrong place is caught). `SNAPFS_CRASH_SEED=<n>` replays one
//! seed, `SNAPFS_CRASH_SEEDS=<count>` runs more, `SNAPFS_CRASH_POINT=<k>` runs one flush point,
//! `SNAPFS_CRASH_MAX_POINTS=<n>` changes the sample size (default: 30 per seed in optimised
//! builds, which run 100 seeds; 200 in debug builds, which run 3).

mod common;

#[path = "crash/recovery.rs"]
mod recovery;

use recovery::*;

use common::*;
use snapfs::device::{CrashMode, MemDevice, SimDevice, SimWorld};
use snapfs::store::StoreKind;
use snapfs::{SnapshotConfig, Volume, VolumeOptions};
use std::sync::Arc;

/// Seeds of each crash test in a plain `cargo test` run.
/// Seeds per mode: a hundred in optimised builds (what CI runs), a few in debug builds.
const DEFAULT_SEEDS: u64 = if cfg!(debug_assertions) { 3 } else { 100 };
/// Flush points per seed and mode at most (evenly spaced when there are more): every point of
/// a few seeds in debug builds, a sample of many seeds in optimised ones.
const DEFAULT_MAX_POINTS: u64 = if cfg!(debug_assertions) { 200 } else { 30 };
/// Operations of the workload.
const WORKLOAD_OPS: u64 = 100;
/// 256 KiB + 4 KiB: not a multiple of a 64 KiB chunk.
const ORIGIN_SECTORS: u64 = 520;

/// Tag of an all-zero sector.
const ZERO: u64 = 0;
/// Tag of the origin's initial content.
const INIT: u64 = 1;

fn crash_seeds(base: u64) -> Vec<u64> {
    seeds_from(
        "SNAPFS_CRASH_SEED",
        "SNAPFS_CRASH_SEEDS",
        DEFAULT_SEEDS,
        base,
    )
}

// ---------------------------------------------------------------------------------------------
// Self-describing sectors
// ---------------------------------------------------------------------------------------------

/// The content of volume sector `sector` written with `tag`.
fn fill_sector(tag: u64, sector: u64, out: &mut [u8]) {
    if tag == ZERO {
        out.fill(0);
        return;
    }
    out[0..8].copy_from_slice(&tag.to_le_bytes());
    out[8..16].copy_from_slice(&sector.to_le_bytes());
    let mut x =
        tag.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ sector.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    for word in out[16..].chunks_mut(8) {
        x = x.rotate_left(13).wrapping_add(0x2545_F491_4F6C_DD1D);
        word.copy_from_slice(&x.to_le_bytes());
    }
}

/// The tag of a sector read at volume sector `sector`; `None` when it is no sector we wrote
/// there (garbage, or a sector of another place).
fn sector_tag(buf: &[u8], sector: u64) -> Option<u64> {
    if buf.iter().all(|&b| b == 0) {
        return Some(ZERO);
    }
    let tag = u64::from_le_bytes(buf[0..8].try_into().unwrap());
    let mut want = [0u8; SECTOR as usize];
    fill_sector(tag, sector, &mut want);
    (want[..] == *buf).then_some(tag)
}

fn sectors_data(tag: u64, first: u64, count: u64) -> Vec<u8> {
    let mut buf = vec![0u8; (count * SECTOR) as usize];
    for (i, s) in buf.chunks_mut(SECTOR as usize).enumerate() {
        fill_sector(tag, first + i as u64, s);
    }
    buf
}

/// A COW as a reused device holds it: old data everywhere but in the first four bytes (zero:
/// a new store). Stale data in an area must never be read as records: area 0 is zeroed
/// durably before the header is written, and each next area before an area fills.
fn cow_image(seed: u64, spec: &Spec) -> Vec<u8> {
    let mut img = Rng::new(seed ^ spec.chunk_sectors).bytes(spec.cow_bytes);
    img[..4].fill(0);
    img
}

fn origin_image() -> Vec<u8> {
    sectors_data(INIT, 0, ORIGIN_SECTORS)
}

// ---------------------------------------------------------------------------------------------
// The workload
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    OriginWrite {
        first: u64,
        count: u64,
        zero: bool,
    },
    SnapWrite {
        snap: usize,
        first: u64,
        count: u64,
        zero: bool,
    },
    FlushOrigin,
    FlushSnap(usize),
    FlushAll,
    ReadOrigin {
        first: u64,
        count: u64,
    },
    ReadSnap {
        snap: usize,
        first: u64,
        count: u64,
    },
}

struct Spec {
    name: String,
    kind: StoreKind,
    chunk_sectors: u64,
    cow_bytes: u64,
}

struct Workload {
    seed: u64,
    specs: Vec<Spec>,
    /// Initial COW images, per snapshot.
    cow_images: Vec<Vec<u8>>,
    ops: Vec<Op>,
    /// Origin first writes go through write-back (odd seeds).
    writeback: bool,
}

/// The write-back budget of the seeds that use it: most first writes fit, the largest do not.
const WRITEBACK_BYTES: u64 = 192 << 10;

fn options(w: &Workload) -> VolumeOptions {
    VolumeOptions {
        writeback_bytes: if w.writeback { WRITEBACK_BYTES } else { 0 },
        ..VolumeOptions::default()
    }
}

fn sector_range(rng: &mut Rng) -> (u64, u64) {
    let max = rng.pick(&[8u64, 64, 64, 200]);
    let count = rng.between(1, max);
    (rng.between(0, ORIGIN_SECTORS - count), count)
}

fn workload(seed: u64) -> Workload {
    let mut rng = Rng::new(seed);
    let writeback = seed % 2 == 1;
    let mut sizes = vec![1u64, rng.pick(&[8, 16]), 128];
    if rng.chance(40) {
        sizes.remove(rng.below(3) as usize);
    }
    let specs: Vec<Spec> = sizes
        .iter()
        .enumerate()
        .map(|(i, &cs)| {
            let kind = if rng.chance(30) { PO } else { P };
            Spec {
                name: format!("s{i}-{cs}"),
                kind,
                chunk_sectors: cs,
                // Never fills: an invalid snapshot after the crash is a failure. Chunks allocated
                // but not committed at a crash are lost space (as in the kernel); write-back holds
                // up to its budget of them, so those seeds get twice the room.
                cow_bytes: roomy_cow_bytes(kind, cs * SECTOR, ORIGIN_SECTORS * SECTOR)
                    * if writeback { 2 } else { 1 },
            }
        })
        .collect();
    let n = specs.len() as u64;
    let ops = (0..WORKLOAD_OPS)
        .map(|_| {
            let (first, count) = sector_range(&mut rng);
            let snap = rng.below(n) as usize;
            match rng.below(100) {
                0..=27 => Op::OriginWrite {
                    first,
                    count,
                    zero: false,
                },
                28..=32 => Op::OriginWrite {
                    first,
                    count,
                    zero: true,
                },
                33..=54 => Op::SnapWrite {
                    snap,
                    first,
                    count,
                    zero: false,
                },
                55..=59 => Op::SnapWrite {
                    snap,
                    first,
                    count,
                    zero: true,
                },
                60..=68 => Op::FlushOrigin,
                69..=77 => Op::FlushSnap(snap),
                78..=80 => Op::FlushAll,
                81..=88 => Op::ReadOrigin { first, count },
                _ => Op::ReadSnap { snap, first, count },
            }
        })
        .collect();
    let cow_images = specs.iter().map(|s| cow_image(seed, s)).collect();
    Workload {
        seed,
        specs,
        cow_images,
        ops,
        writeback,
    }
}

// ---------------------------------------------------------------------------------------------
// What each sector may hold
// ---------------------------------------------------------------------------------------------

/// Per sector, the tags it may hold after a crash; the last one is the current value.
struct View {
    name: String,
    cands: Vec<Vec<u64>>,
}

impl View {
    fn new(name: &str) -> View {
        View {
            name: name.to_string(),
            cands: vec![vec![INIT]; ORIGIN_SECTORS as usize],
        }
    }

    fn write(&mut self, sector: u64, tag: u64) {
        let c = &mut self.cands[sector as usize];
        c.retain(|&t| t != tag);
        c.push(tag);
    }

    /// The current value of the sector is durable.
    fn settle(&mut self, sector: u64) {
        let c = &mut self.cands[sector as usize];
        let last = *c.last().unwrap();
        c.clear();
        c.push(last);
    }

    fn settle_all(&mut self) {
        for s in 0..ORIGIN_SECTORS {
            self.settle(s);
        }
    }

    fn current(&self, sector: u64) -> u64 {
        *self.cands[sector as usize].last().unwrap()
    }
}

/// The candidate model: view 0 is the origin, view `1 + i` snapshot `i`.
struct Durability {
    views: Vec<View>,
    /// Per snapshot, which chunks have an exception.
    excepted: Vec<Vec<bool>>,
    chunk_sectors: Vec<u64>,
    /// Copy-outs commit after the origin write returns (write-back).
    deferred_commits: bool,
}

impl Durability {
    fn new(w: &Workload) -> Durability {
        let mut views = vec![View::new("origin")];
        views.extend(w.specs.iter().map(|s| View::new(&s.name)));
        Durability {
            views,
            excepted: w
                .specs
                .iter()
                .map(|s| vec![false; ORIGIN_SECTORS.div_ceil(s.chunk_sectors) as usize])
                .collect(),
            chunk_sectors: w.specs.iter().map(|s| s.chunk_sectors).collect(),
            deferred_commits: w.writeback,
        }
    }

    /// Marks the chunks of snapshot `i` under `[first, first + count)` as excepted; returns
    /// whether any was new (then the store committed, which flushed its COW).
    fn except(&mut self, i: usize, first: u64, count: u64) -> bool {
        let cs = self.chunk_sectors[i];
        let mut any = false;
        for c in first / cs..=(first + count - 1) / cs {
            let e = &mut self.excepted[i][c as usize];
            any |= !*e;
            *e = true;
        }
        any
    }

    fn origin_write_ok(&mut self, first: u64, count: u64, tag: u64) {
        for i in 0..self.excepted.len() {
            if self.except(i, first, count) && !self.deferred_commits {
                // The copy-out committed: everything written to this COW before is durable.
                self.views[1 + i].settle_all();
            }
        }
        for s in first..first + count {
            self.views[0].write(s, tag);
        }
    }

    fn snap_write_ok(&mut self, i: usize, first: u64, count: u64, tag: u64) {
        let cs = self.chunk_sectors[i];
        let fresh: Vec<u64> = (first / cs..=(first + count - 1) / cs)
            .filter(|&c| !self.excepted[i][c as usize])
            .collect();
        let view = &mut self.views[1 + i];
        if !fresh.is_empty() {
            view.settle_all();
        }
        for s in first..first + count {
            view.write(s, tag);
            // Data in a new exception was in place before its record was committed.
            if fresh.contains(&(s / cs)) {
                view.settle(s);
            }
        }
        self.except(i, first, count);
    }
}

// ---------------------------------------------------------------------------------------------
// Running the workload on one simulated world
// ---------------------------------------------------------------------------------------------

struct Outcome {
    world: Arc<SimWorld>,
    durability: Durability,
    /// Operations that completed.
    completed: usize,
    /// Whether the volume opened at all.
    opened: bool,
}

fn configs(w: &Workload, cows: &[snapfs::device::Device]) -> Vec<SnapshotConfig> {
    w.specs
        .iter()
        .zip(cows)
        .map(|(s, cow)| SnapshotConfig {
            name: s.name.clone(),
            cow: cow.clone(),
            kind: s.kind,
            chunk_sectors: s.chunk_sectors,
            features: Default::default(),
        })
        .collect()
}

/// Runs the workload, crashing at flush `freeze.0` if given; stops at the first error, which
/// must be due to the crash.
fn execute(w: &Workload, freeze: Option<(u64, CrashMode)>, ctx: &str) -> Outcome {
    let world = SimWorld::new();
    let origin: Arc<SimDevice> = world.device_from("origin", origin_image(), 512);
    let cows: Vec<snapfs::device::Device> = w
        .specs
        .iter()
        .zip(&w.cow_images)
        .map(|(s, img)| world.device_from(&s.name, img.clone(), 512) as snapfs::device::Device)
        .collect();
    if let Some((k, mode)) = freeze {
        world.freeze_at_flush(k, mode);
    }
    let mut d = Durability::new(w);
    let crashed = |what: &str| {
        assert!(
            world.crash_images().is_some(),
            "{ctx}: {what} failed without a crash"
        );
    };
    let vol = match Volume::open(origin.clone(), configs(w, &cows), options(w)) {
        Ok(v) => v,
        Err(e) => {
            crashed(&format!("Volume::open ({e})"));
            return Outcome {
                world,
                durability: d,
                completed: 0,
                opened: false,
            };
        }
    };
    let snaps: Vec<_> = w
        .specs
        .iter()
        .map(|s| vol.snapshot(&s.name).unwrap())
        .collect();
    let mut completed = 0;
    for (n, op) in w.ops.iter().enumerate() {
        let tag = 2 + n as u64;
        let what = format!("op {n} {op:?}");
        let ok = match *op {
            Op::OriginWrite { first, count, zero } => {
                let got = if zero {
                    vol.zero_origin(first * SECTOR, count * SECTOR)
                } else {
                    vol.write_origin(first * SECTOR, &sectors_data(tag, first, count))
                };
                let tag = if zero { ZERO } else { tag };
                match got {
                    Ok(()) => d.origin_write_ok(first, count, tag),
                    Err(_) => {
                        for s in first..first + count {
                            d.views[0].write(s, tag);
                        }
                    }
                }
                got.is_ok()
            }
            Op::SnapWrite {
                snap,
                first,
                count,
                zero,
            } => {
                let got = if zero {
                    vol.zero_snapshot(&snaps[snap], first * SECTOR, count * SECTOR)
                } else {
                    vol.write_snapshot(
                        &snaps[snap],
                        first * SECTOR,
                        &sectors_data(tag, first, count),
                    )
                };
                let tag = if zero { ZERO } else { tag };
                match got {
                    Ok(()) => d.snap_write_ok(snap, first, count, tag),
                    Err(_) => {
                        for s in first..first + count {
                            d.views[1 + snap].write(s, tag);
                        }
                    }
                }
                got.is_ok()
            }
            Op::FlushOrigin => {
                let got = vol.flush_origin();
                if got.is_ok() {
                    d.views[0].settle_all();
                }
                got.is_ok()
            }
            Op::FlushSnap(i) => {
                let got = vol.flush_snapshot(&snaps[i]);
                if got.is_ok() {
                    d.views[1 + i].settle_all();
                }
                got.is_ok()
            }
            Op::FlushAll => {
                let got = vol.flush_all();
                if got.is_ok() {
                    for v in &mut d.views {
                        v.settle_all();
                    }
                }
                got.is_ok()
            }
            Op::ReadOrigin { first, count } | Op::ReadSnap { first, count, .. } => {
                let mut buf = vec![0u8; (count * SECTOR) as usize];
                let (got, view) = match *op {
                    Op::ReadSnap { snap, .. } => (
                        vol.read_snapshot(&snaps[snap], first * SECTOR, &mut buf),
                        1 + snap,
                    ),
                    _ => (vol.read_origin(first * SECTOR, &mut buf), 0),
                };
                if got.is_ok() {
                    // Before the crash, what is read is exactly the current value.
                    for (j, sec) in buf.chunks(SECTOR as usize).enumerate() {
                        let s = first + j as u64;
                        let want = d.views[view].current(s);
                        assert_eq!(
                            sector_tag(sec, s),
                            Some(want),
                            "{ctx}: {what}: live read of {} sector {s}",
                            d.views[view].name
                        );
                    }
                }
                got.is_ok()
            }
        };
        if !ok {
            crashed(&what);
            break;
        }
        completed += 1;
    }
    Outcome {
        world,
        durability: d,
        completed,
        opened: true,
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// The flush points to crash at: every one, or an even sample.
fn points(count: u64) -> Vec<u64> {
    if let Some(k) = env_u64("SNAPFS_CRASH_POINT") {
        return vec![k];
    }
    let max = env_u64("SNAPFS_CRASH_MAX_POINTS").unwrap_or(DEFAULT_MAX_POINTS);
    if count <= max {
        return (1..=count).collect();
    }
    let mut v: Vec<u64> = (0..max).map(|i| 1 + i * (count - 1) / (max - 1)).collect();
    v.dedup();
    v
}

fn crash_every_flush_point(tear: bool, base: u64) {
    let (mut seeds, mut crashes, mut older) = (0u64, 0u64, 0u64);
    for seed in crash_seeds(base) {
        let w = workload(seed);
        let ctx = format!("seed {seed} (replay: SNAPFS_CRASH_SEED={seed})");
        let full = execute(&w, None, &ctx);
        assert_eq!(
            full.completed,
            w.ops.len(),
            "{ctx}: the workload failed without a crash"
        );
        let count = full.world.flush_count();
        assert!(
            count > 2 * w.specs.len() as u64,
            "{ctx}: only {count} flushes"
        );
        let mut stats = Stats::default();
        for k in points(count) {
            let mode = if tear {
                CrashMode::Tear {
                    seed: seed.wrapping_mul(31).wrapping_add(k),
                }
            } else {
                CrashMode::Drop
            };
            let point = format!("crash at flush {k} of {count} ({mode:?}; SNAPFS_CRASH_POINT={k})");
            let out = execute(&w, Some((k, mode)), &format!("{ctx} {point}"));
            if out.world.crash_images().is_none() {
                // With write-back the worker's grouping, and so the number of flushes, varies
                // from run to run: a point past this run's last flush crashes at the end.
                assert!(w.writeback, "{ctx} {point}: no crash");
                out.world.crash_now(mode);
            }
            check_recovery(&w, &out, &point, &mut stats);
        }
        // And a crash after the last operation.
        let end = if tear {
            CrashMode::Tear { seed }
        } else {
            CrashMode::Drop
        };
        full.world.crash_now(end);
        check_recovery(
            &w,
            &full,
            &format!("crash after the workload ({end:?})"),
            &mut stats,
        );
        eprintln!(
            "{ctx}: {} mode, {count} flush points, {} crashes checked, {} recovered sectors held \
             an older candidate",
            if tear { "Tear" } else { "Drop" },
            stats.points,
            stats.older
        );
        seeds += 1;
        crashes += stats.points;
        older += stats.older;
    }
    eprintln!(
        "{} mode: {seeds} seeds, {crashes} crashes recovered and checked",
        if tear { "Tear" } else { "Drop" }
    );
    if !tear && env_u64("SNAPFS_CRASH_POINT").is_none() {
        assert!(
            older > 0,
            "no crash ever lost a write: the test cannot tell durable from not"
        );
    }
}

#[test]
fn crash_at_every_flush_point_drop() {
    crash_every_flush_point(false, 0xC7A5_0000);
}

#[test]
fn crash_at_every_flush_point_tear() {
    crash_every_flush_point(true, 0xC7A5_0000);
}

/// A COW that held a snapshot store before and had only its start wiped (as `lvcreate -Z`
/// does) still holds that store's area 0. A crash while a new snapshot is created on it must
/// never make the old records load as the new snapshot's: after recovery the new snapshot is
/// either absent (no header) or empty, and reads exactly the origin.
#[test]
fn crash_while_creating_a_snapshot_on_a_reused_cow() {
    let ctx = "reused COW";
    let spec = Spec {
        name: "snap".into(),
        kind: P,
        chunk_sectors: 8,
        cow_bytes: roomy_cow_bytes(P, 8 * SECTOR, ORIGIN_SECTORS * SECTOR),
    };
    let w = Workload {
        seed: 0,
        specs: vec![spec],
        cow_images: Vec::new(),
        ops: Vec::new(),
        writeback: false,
    };
    // The old life of the COW: a snapshot with exceptions for chunks 0..8.
    let origin = Arc::new(MemDevice::from_bytes("origin", origin_image(), 512));
    let cow = Arc::new(MemDevice::new("cow", w.specs[0].cow_bytes));
    let vol = Volume::open(
        origin.clone(),
        configs(&w, &[cow.clone() as _]),
        VolumeOptions::default(),
    )
    .unwrap();
    vol.write_origin(0, &sectors_data(100, 0, 64)).unwrap();
    assert_eq!(vol.snapshot("snap").unwrap().exceptions(), 8, "{ctx}");
    vol.flush_all().unwrap();
    drop(vol);
    let mut stale = cow.contents();
    assert!(
        stale[4096..8192].iter().any(|&b| b != 0),
        "{ctx}: area 0 holds records"
    );
    stale[..4096].fill(0);
    let origin_now = origin.contents();
    let mut header_survived = 0;
    for k in 1..=3u64 {
        for tear in 0..24u64 {
            let mode = if tear == 0 {
                CrashMode::Drop
            } else {
                CrashMode::Tear { seed: tear }
            };
            let ctx = format!("{ctx}: crash at flush {k} ({mode:?})");
            let world = SimWorld::new();
            let o = world.device_from("origin", origin_now.clone(), 512);
            let c = world.device_from("cow", stale.clone(), 512);
            world.freeze_at_flush(k, mode);
            let opened = Volume::open(o, configs(&w, &[c as _]), VolumeOptions::default());
            let Some(images) = world.crash_images() else {
                // Creating the store takes fewer flushes than k.
                assert!(opened.is_ok(), "{ctx}: open failed without a crash");
                continue;
            };
            assert!(opened.is_err(), "{ctx}: open succeeded through a crash");
            header_survived += u64::from(images[1][..4] != [0; 4]);
            let o = Arc::new(MemDevice::from_bytes("origin", images[0].clone(), 512));
            let c = Arc::new(MemDevice::from_bytes("cow", images[1].clone(), 512));
            let vol = open_recovered(&w, &o, &[c], &ctx);
            let snap = vol.snapshot("snap").unwrap();
            assert_eq!(
                snap.exceptions(),
                0,
                "{ctx}: the old store's records loaded"
            );
            let tags = read_tags(&vol, 1, &["snap".to_string()], &ctx);
            for (s, t) in tags.iter().enumerate() {
                let want = if s < 64 { 100 } else { INIT };
                assert_eq!(*t, Some(want), "{ctx}: snapshot sector {s}");
            }
        }
    }
    assert!(header_survived > 0, "{ctx}: no crash kept the new header");
}
