//! Model-based randomized tests of the volume against the kernel's dm-snapshot semantics.
//!
//! Every read is compared byte for byte with a model of the origin and of each snapshot
//! (tests/common). Seeded and replayable: every failure names its seed; `SNAPFS_SEED=<n>`
//! replays one seed, `SNAPFS_SEEDS=<count>` runs more.

mod common;

#[path = "model/concurrency.rs"]
mod concurrency;
#[path = "model/scenarios.rs"]
mod scenarios;

use common::*;
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{Snapshot, SnapshotConfig, Volume, VolumeError, VolumeOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// Seeds of the randomized test in a plain `cargo test` run.
const DEFAULT_SEEDS: u64 = 16;
/// The write-back budget of the tests that use one: smaller than the largest writes, so both
/// paths run.
const WRITEBACK: u64 = 1 << 20;
/// Options with write-back on.
fn writeback_on() -> VolumeOptions {
    VolumeOptions {
        writeback_bytes: WRITEBACK,
        ..VolumeOptions::default()
    }
}
/// Operations before and after the mid-run reopen.
const OPS_PER_PHASE: u64 = 400;

fn replay(seed: u64) -> String {
    format!("seed {seed} (replay: SNAPFS_SEED={seed})")
}

// ---------------------------------------------------------------------------------------------
// Random ranges
// ---------------------------------------------------------------------------------------------

/// A range of `[0, size)`: inside one chunk at any byte alignment, across a chunk boundary, a
/// whole chunk, several chunks, the very end of the volume, a few bytes, sector aligned, large,
/// or empty. `chunks` are the chunk sizes (bytes) to aim at.
fn gen_range(rng: &mut Rng, size: u64, chunks: &[u64]) -> (u64, u64) {
    let cb = rng.pick(chunks).min(size);
    let nchunks = size.div_ceil(cb);
    let (off, len) = match rng.below(12) {
        0 | 1 => {
            let start = rng.below(nchunks) * cb;
            let end = (start + cb).min(size);
            let off = rng.between(start, end - 1);
            (off, rng.between(1, end - off))
        }
        2 if nchunks >= 2 => {
            let b = rng.between(1, nchunks - 1) * cb;
            let before = rng.between(1, cb.min(b));
            let after = rng.between(1, cb.min(size - b));
            (b - before, before + after)
        }
        3 => {
            let start = rng.below(nchunks) * cb;
            (start, cb.min(size - start))
        }
        4 => {
            let start = rng.below(nchunks) * cb;
            (start, (rng.between(2, 8) * cb).min(size - start))
        }
        5 => {
            let len = rng.between(cb, 4 * cb).min(size);
            (rng.between(0, size - len), len)
        }
        6 => {
            let len = rng.between(1, (3 * cb).min(size));
            (size - len, len)
        }
        7 => {
            let len = rng.between(1, 16).min(size);
            (rng.between(0, size - len), len)
        }
        8 => {
            let sectors = size / SECTOR;
            let n = rng.between(1, sectors.min(64));
            (rng.between(0, sectors - n) * SECTOR, n * SECTOR)
        }
        9 | 10 => {
            // Both ends a few bytes from a chunk boundary (or the volume end).
            let near = |rng: &mut Rng, b: u64| {
                let d = rng.between(0, 2);
                if rng.chance(50) {
                    b.saturating_sub(d)
                } else {
                    (b + d).min(size)
                }
            };
            let b = rng.below(nchunks + 1) * cb;
            let a = near(rng, b.min(size));
            let far = (b + rng.between(0, 2) * cb).min(size);
            let z = near(rng, far);
            match (a.min(z), a.max(z)) {
                (lo, hi) if lo < hi => (lo, hi - lo),
                (lo, _) => (lo.min(size - 1), 1),
            }
        }
        _ if rng.chance(15) => (rng.between(0, size), 0),
        _ => {
            let max = rng.pick(&[32 * KIB, 128 * KIB, 512 * KIB]);
            let len = rng.between(1, size.min(max));
            (rng.between(0, size - len), len)
        }
    };
    assert!(off + len <= size);
    (off, len)
}

// ---------------------------------------------------------------------------------------------
// The randomized run
// ---------------------------------------------------------------------------------------------

struct Run {
    seed: u64,
    rng: Rng,
    backing: Backing,
    origin: Dev,
    model: Model,
    options: VolumeOptions,
    phase: &'static str,
    step: u64,
    /// Origin writes stay below this offset (so that a small COW fills up through snapshot
    /// writes, which makes a `PO` store overflow instead of dying on a copy-out).
    origin_limit: u64,
}

impl Run {
    fn ctx(&self, what: &str) -> String {
        format!(
            "{}, {} step {}: {what}",
            replay(self.seed),
            self.phase,
            self.step
        )
    }

    fn chunk_sizes(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.model.snaps.iter().map(|s| s.chunk_bytes).collect();
        v.extend([SECTOR, 4 * KIB]);
        v
    }

    fn range(&mut self) -> (u64, u64) {
        let chunks = self.chunk_sizes();
        gen_range(&mut self.rng, self.model.size, &chunks)
    }

    fn origin_range(&mut self) -> (u64, u64) {
        let chunks = self.chunk_sizes();
        gen_range(&mut self.rng, self.origin_limit, &chunks)
    }

    fn handle(&self, vol: &Volume, i: usize) -> Arc<Snapshot> {
        let name = &self.model.snaps[i].name;
        vol.snapshot(name)
            .unwrap_or_else(|| panic!("{}", self.ctx(&format!("snapshot {name} is missing"))))
    }

    /// Reads `[off, off + len)` of the origin and of every snapshot and compares.
    fn check_range_everywhere(&self, vol: &Volume, off: u64, len: u64, ctx: &str) {
        let mut buf = vec![0u8; len as usize];
        vol.read_origin(off, &mut buf)
            .unwrap_or_else(|e| panic!("{ctx}: origin read-back failed: {e}"));
        assert_bytes(
            &buf,
            &self.model.origin[off as usize..(off + len) as usize],
            off,
            &format!("{ctx}: origin read-back"),
        );
        for i in 0..self.model.snaps.len() {
            let snap = self.handle(vol, i);
            let got = vol.read_snapshot(&snap, off, &mut buf);
            let what = format!("{ctx}: read-back of snapshot {}", snap.name());
            match self.model.snap_read(i, off, len) {
                Ok(want) => {
                    got.unwrap_or_else(|e| panic!("{what} failed: {e}"));
                    assert_bytes(&buf, want, off, &what);
                }
                Err(w) => assert_result(got, Err(w), &what),
            }
        }
    }

    fn origin_write(&mut self, vol: &Volume, zero: bool) {
        let (off, len) = self.origin_range();
        let ctx = self.ctx(&format!(
            "origin {} {off}+{len}",
            if zero { "zero" } else { "write" }
        ));
        let data = (!zero).then(|| self.rng.bytes(len));
        let got = match &data {
            Some(d) => vol.write_origin(off, d),
            None => vol.zero_origin(off, len),
        };
        got.unwrap_or_else(|e| panic!("{ctx}: failed: {e}"));
        self.model.origin_write(off, len, data.as_deref());
        if self.rng.chance(30) {
            self.check_range_everywhere(vol, off, len, &ctx);
        }
    }

    fn origin_read(&mut self, vol: &Volume) {
        let (off, len) = self.range();
        let ctx = self.ctx(&format!("origin read {off}+{len}"));
        let mut buf = vec![0u8; len as usize];
        vol.read_origin(off, &mut buf)
            .unwrap_or_else(|e| panic!("{ctx}: failed: {e}"));
        assert_bytes(
            &buf,
            &self.model.origin[off as usize..(off + len) as usize],
            off,
            &ctx,
        );
    }

    /// A snapshot to operate on; the small-COW one gets extra attention so that it fills up
    /// through snapshot writes too (overflow), not only through copy-outs.
    fn pick_snap(&mut self) -> Option<usize> {
        let n = self.model.snaps.len() as u64;
        if n == 0 {
            return None;
        }
        if self.rng.chance(35)
            && let Some(i) = self.model.snaps.iter().position(|s| s.name == "small")
        {
            return Some(i);
        }
        Some(self.rng.below(n) as usize)
    }

    fn snap_write(&mut self, vol: &Volume, zero: bool) {
        let Some(i) = self.pick_snap() else { return };
        let (off, len) = self.range();
        let snap = self.handle(vol, i);
        let ctx = self.ctx(&format!(
            "snapshot {} {} {off}+{len}",
            snap.name(),
            if zero { "zero" } else { "write" }
        ));
        let data = (!zero).then(|| self.rng.bytes(len));
        let got = match &data {
            Some(d) => vol.write_snapshot(&snap, off, d),
            None => vol.zero_snapshot(&snap, off, len),
        };
        let want = self.model.snap_write(i, off, len, data.as_deref());
        assert_result(got, want, &ctx);
        if self.rng.chance(30) {
            self.check_range_everywhere(vol, off, len, &ctx);
        }
    }

    fn snap_read(&mut self, vol: &Volume) {
        let Some(i) = self.pick_snap() else { return };
        let (off, len) = self.range();
        let snap = self.handle(vol, i);
        let ctx = self.ctx(&format!("snapshot {} read {off}+{len}", snap.name()));
        let mut buf = vec![0u8; len as usize];
        let got = vol.read_snapshot(&snap, off, &mut buf);
        match self.model.snap_read(i, off, len) {
            Ok(want) => {
                got.unwrap_or_else(|e| panic!("{ctx}: failed: {e}"));
                assert_bytes(&buf, want, off, &ctx);
            }
            Err(w) => assert_result(got, Err(w), &ctx),
        }
    }

    fn snap_discard(&mut self, vol: &Volume) {
        let Some(i) = self.pick_snap() else { return };
        let (off, len) = self.range();
        let snap = self.handle(vol, i);
        let ctx = self.ctx(&format!("snapshot {} discard {off}+{len}", snap.name()));
        // A punch reads zeroes afterwards, chunks without an exception too (they get one); it
        // fails with NoSpace, changing nothing, where those do not fit (docs/discard.md). It
        // used to zero only chunks that had an exception and leave the rest reading old data.
        let got = vol.discard_snapshot(&snap, off, len);
        let want = self.model.snap_discard(i, off, len);
        assert_result(got, want, &ctx);
        self.check_range_everywhere(vol, off, len, &ctx);
    }

    fn origin_discard(&mut self, vol: &Volume) {
        let (off, len) = self.origin_range();
        let ctx = self.ctx(&format!(
            "origin discard {off}+{len} (origin_discard {})",
            self.options.origin_discard
        ));
        vol.discard_origin(off, len)
            .unwrap_or_else(|e| panic!("{ctx}: failed: {e}"));
        // Copied out first like any write, and zeroes afterwards, with the option or without
        // (it only says whether the device may free the space). It used to be a no-op without
        // the option: a punch answered 0 and the range still read the old bytes.
        self.model.origin_write(off, len, None);
        self.check_range_everywhere(vol, off, len, &ctx);
    }

    /// An operation that starts or ends beyond the volume: `OutOfRange` (after the snapshot
    /// state checks, which the kernel makes first too), no byte moved, nothing changed.
    fn out_of_range(&mut self, vol: &Volume) {
        let size = self.model.size;
        let r = &mut self.rng;
        let (off, len) = match r.below(6) {
            0 => (size, r.between(1, 4096)),
            1 => (size - r.between(0, 100), r.between(101, 4096)),
            2 => (size + r.between(1, 1 << 20), r.between(0, 100)),
            3 => (u64::MAX - r.below(100), r.between(100, 200)),
            4 => (r.between(0, size - 1), size + 1),
            _ => (size + 1, 0),
        };
        let kind = r.below(8);
        let ctx = self.ctx(&format!("out-of-range op {kind} at {off}+{len}"));
        let i = self.pick_snap();
        let snap = i.map(|i| self.handle(vol, i));
        let state = i.map(|i| self.model.snaps[i].state);
        let status = dm_lines(vol);
        let mut buf = vec![0xA5u8; len.min(size + 1) as usize];
        let data = vec![0x5Au8; len.min(size + 1) as usize];
        // Buffers are capped at size + 1 bytes: still beyond the end from any offset.
        let blen = buf.len() as u64;
        let expect_snap = |write: bool| match state {
            Some(SnapState::Invalid) => Some(Want::Invalid),
            Some(SnapState::Overflow) if write => Some(Want::Overflow),
            _ => None,
        };
        let (got, snap_want) = match (kind, &snap) {
            (0, _) => (vol.read_origin(off, &mut buf), None),
            (1, _) => (vol.write_origin(off, &data), None),
            (2, _) => (vol.zero_origin(off, len.max(blen)), None),
            (3, _) => (vol.discard_origin(off, len.max(blen)), None),
            (4, Some(s)) => (vol.read_snapshot(s, off, &mut buf), expect_snap(false)),
            (5, Some(s)) => (vol.write_snapshot(s, off, &data), expect_snap(true)),
            (6, Some(s)) => (vol.zero_snapshot(s, off, len.max(blen)), expect_snap(true)),
            (_, Some(s)) => (
                vol.discard_snapshot(s, off, len.max(blen)),
                expect_snap(true),
            ),
            (_, None) => (vol.read_origin(off, &mut buf), None),
        };
        match snap_want {
            Some(w) => assert_result(got, Err(w), &ctx),
            None => assert_out_of_range(got, &ctx),
        }
        assert!(
            buf.iter().all(|&b| b == 0xA5),
            "{ctx}: the failed read wrote the buffer"
        );
        assert_eq!(dm_lines(vol), status, "{ctx}: status changed");
        let tail = size.min(64 * KIB);
        self.check_range_everywhere(vol, size - tail, tail, &ctx);
    }

    fn flush(&mut self, vol: &Volume) {
        let ctx = self.ctx("flush");
        let got = match self.rng.below(3) {
            0 => vol.flush_origin(),
            1 => match self.pick_snap() {
                Some(i) => vol.flush_snapshot(&self.handle(vol, i)),
                None => vol.flush_origin(),
            },
            _ => vol.flush_all(),
        };
        got.unwrap_or_else(|e| panic!("{ctx}: failed: {e}"));
    }

    fn step(&mut self, vol: &Volume) {
        self.step += 1;
        match self.rng.below(100) {
            0..=17 => self.origin_write(vol, false),
            18..=21 => self.origin_write(vol, true),
            22..=31 => self.origin_read(vol),
            32..=47 => self.snap_write(vol, false),
            48..=51 => self.snap_write(vol, true),
            52..=69 => self.snap_read(vol),
            70..=75 => self.snap_discard(vol),
            76..=78 => self.origin_discard(vol),
            79..=86 => self.out_of_range(vol),
            87..=90 => self.flush(vol),
            91..=92 => {
                let ctx = self.ctx("full check");
                verify_all(vol, &self.model, &ctx);
            }
            _ => {
                let ctx = self.ctx("status");
                check_status(vol, &self.model, &ctx);
            }
        }
    }

    /// Closes the volume and reopens the persistent snapshots from the same devices (for
    /// simulated devices: new devices from the live images). Everything must read the same and
    /// each persistent store's usage figures must be unchanged.
    fn reopen(&mut self, vol: Volume, options: VolumeOptions) -> Volume {
        let ctx = self.ctx("reopen");
        let before: Vec<(String, String)> = self
            .model
            .snaps
            .iter()
            .filter(|s| s.kind.is_persistent())
            .map(|s| {
                let snap = vol.snapshot(&s.name).unwrap();
                let word = if snap.is_invalid() {
                    "Invalid".to_string()
                } else {
                    snap.usage().to_string()
                };
                let want = s.expected_usage().unwrap_or_else(|| "Invalid".to_string());
                assert_eq!(word, want, "{ctx}: usage of {} before the reopen", s.name);
                (s.name.clone(), word)
            })
            .collect();
        drop(vol);
        self.model.reopened();
        let backing = self.backing.fresh();
        self.origin = backing.reopen("origin", &self.origin);
        for s in &mut self.model.snaps {
            s.cow = backing.reopen(&s.name, &s.cow);
        }
        self.backing = backing;
        // The chunk size on disk wins over whatever is asked for now.
        let configs = self
            .model
            .snaps
            .iter()
            .map(|s| {
                let mut c = s.config();
                c.chunk_sectors = self.rng.pick(&[s.requested_sectors, 0, 8, 256]);
                c
            })
            .collect();
        let vol = Volume::open(self.origin.device(), configs, options)
            .unwrap_or_else(|e| panic!("{ctx}: Volume::open failed: {e}"));
        let after = status_words(&vol, &ctx);
        assert_eq!(
            after, before,
            "{ctx}: status words changed across the reopen"
        );
        for s in &self.model.snaps {
            let valid = header_valid(&s.cow.image());
            match s.state {
                SnapState::Invalid => assert_eq!(valid, 0, "{ctx}: header of {}", s.name),
                _ => assert_ne!(valid, 0, "{ctx}: header of {}", s.name),
            }
        }
        verify_all(&vol, &self.model, &ctx);
        vol
    }
}

/// A new COW: zero, or (`stale`) as a reused device holds it, old data everywhere but in the
/// first four bytes (which make it a new store). Stale data must never be read as records.
fn cow_image(rng: &mut Rng, stale: bool, bytes: u64) -> Vec<u8> {
    if !stale {
        return vec![0; bytes as usize];
    }
    let mut image = rng.bytes(bytes);
    image[..4].fill(0);
    image
}

fn run_random(seed: u64) {
    let mut rng = Rng::new(seed);
    let backing = if rng.chance(40) {
        Backing::new_sim()
    } else {
        Backing::Mem
    };
    let size = rng.pick(&[
        MIB + 4 * KIB,
        MIB,
        768 * KIB + SECTOR,
        2 * MIB - SECTOR,
        320 * KIB + 3 * SECTOR,
    ]);
    // An origin device whose size is not a multiple of 512 serves the whole sectors only.
    let slack = if rng.chance(20) {
        rng.between(1, 511)
    } else {
        0
    };
    let image = rng.bytes(size + slack);
    let origin = backing.device("origin", image.clone());
    let mut model = Model::new(image[..size as usize].to_vec());
    let options = VolumeOptions {
        read_only: false,
        origin_discard: rng.chance(50),
        // Odd seeds answer first writes from the write-back budget (reads must see them).
        writeback_bytes: if seed % 2 == 1 { WRITEBACK } else { 0 },
    };
    let sizes = [1, 8, 16, 128];
    let mut specs: Vec<(String, StoreKind, u64, Option<u64>)> = vec![
        ("p".into(), P, rng.pick(&[1, 8, 16, 128, 0]), None),
        ("po".into(), PO, rng.pick(&[1, 8, 16, 128, 0]), None),
        ("n".into(), N, rng.pick(&sizes), None),
    ];
    if rng.chance(50) {
        specs.push(("p2".into(), P, rng.pick(&sizes), None));
    }
    if rng.chance(50) {
        specs.push(("n2".into(), N, rng.pick(&sizes), None));
    }
    let mut origin_limit = size;
    if rng.chance(70) {
        // A COW that fills up: invalidation, overflow.
        let kind = rng.pick(&[P, PO, N]);
        let sectors = rng.pick(&[8, 16]);
        let chunks = if kind == PO || rng.chance(50) {
            // Origin writes stay in the first half in phase 1 and cannot fill it alone.
            origin_limit = size / 2;
            let half = size.div_ceil(sectors * SECTOR) / 2;
            rng.between(half + 6, half * 3 / 2 + 6)
        } else {
            rng.between(3, 150)
        };
        specs.push(("small".into(), kind, sectors, Some(chunks)));
    }
    let stale = rng.chance(50);
    for (name, kind, requested, small) in &specs {
        let cb = effective_chunk_bytes(*kind, *requested);
        let cow_bytes = match small {
            Some(chunks) => chunks * cb,
            None => roomy_cow_bytes(*kind, cb, size),
        };
        let cow = backing.device(name, cow_image(&mut rng, stale, cow_bytes));
        model.add_snapshot(name, *kind, *requested, cow);
    }
    let ctx0 = format!("{}: open", replay(seed));
    let vol = open_volume(&origin, &model, options, &ctx0);
    assert_eq!(vol.size_bytes(), size, "{ctx0}: volume size");
    verify_all(&vol, &model, &ctx0);

    let mut run = Run {
        seed,
        rng,
        backing,
        origin,
        model,
        options,
        phase: "phase 1",
        step: 0,
        origin_limit,
    };
    for _ in 0..OPS_PER_PHASE {
        run.step(&vol);
    }
    verify_all(&vol, &run.model, &run.ctx("end of phase 1"));
    let vol = run.reopen(vol, options);

    // Phase 2: snapshots attached now see the origin as it is now.
    run.phase = "phase 2";
    run.origin_limit = size;
    let ctx = run.ctx("attach");
    let late_p = run.rng.pick(&[1, 8, 16, 128, 0]);
    let late_n = run.rng.pick(&sizes);
    for (name, kind, requested) in [("late-p", P, late_p), ("late-n", N, late_n)] {
        let cb = effective_chunk_bytes(kind, requested);
        let image = cow_image(&mut run.rng, stale, roomy_cow_bytes(kind, cb, size));
        let cow = run.backing.device(name, image);
        run.model.add_snapshot(name, kind, requested, cow.clone());
        vol.attach_snapshot(SnapshotConfig {
            name: name.into(),
            cow: cow.device(),
            kind,
            chunk_sectors: requested,
            features: Default::default(),
        })
        .unwrap_or_else(|e| panic!("{ctx}: attach {name} failed: {e}"));
    }
    let dup = vol.attach_snapshot(SnapshotConfig {
        name: "late-p".into(),
        cow: run
            .backing
            .device("dup", vec![0; 64 * KIB as usize])
            .device(),
        kind: P,
        chunk_sectors: 8,
        features: Default::default(),
    });
    assert!(
        dup.is_err(),
        "{ctx}: a second snapshot named late-p was attached"
    );
    verify_all(&vol, &run.model, &ctx);
    for _ in 0..OPS_PER_PHASE / 2 {
        run.step(&vol);
    }

    // Detach one snapshot: its I/O fails and origin writes stop copying into it.
    let victim = run.rng.below(run.model.snaps.len() as u64) as usize;
    let name = run.model.snaps[victim].name.clone();
    let ctx = run.ctx(&format!("detach {name}"));
    let detached = vol
        .detach_snapshot(&name)
        .unwrap_or_else(|| panic!("{ctx}: not attached"));
    run.model.snaps.remove(victim);
    let exceptions = detached.exceptions();
    let (off, len) = run.range();
    let data = run.rng.bytes(len);
    vol.write_origin(off, &data)
        .unwrap_or_else(|e| panic!("{ctx}: origin write failed: {e}"));
    run.model.origin_write(off, len, Some(&data));
    assert_eq!(
        detached.exceptions(),
        exceptions,
        "{ctx}: copied into a detached snapshot"
    );
    let mut buf = [0u8; 16];
    assert!(
        matches!(
            vol.read_snapshot(&detached, 0, &mut buf),
            Err(VolumeError::Detached)
        ),
        "{ctx}: read of a detached snapshot"
    );
    assert!(
        matches!(
            vol.write_snapshot(&detached, 0, &buf),
            Err(VolumeError::Detached)
        ),
        "{ctx}: write of a detached snapshot"
    );
    assert!(vol.snapshot(&name).is_none(), "{ctx}: still listed");
    verify_all(&vol, &run.model, &ctx);
    for _ in 0..OPS_PER_PHASE / 2 {
        run.step(&vol);
    }
    verify_all(&vol, &run.model, &run.ctx("end of phase 2"));
    let vol = run.reopen(vol, options);

    // Read-only: the same content, every write refused, no device written.
    run.phase = "read-only";
    let ctx = run.ctx("read-only reopen");
    drop(vol);
    let images: Vec<Vec<u8>> = std::iter::once(run.origin.image())
        .chain(run.model.snaps.iter().map(|s| s.cow.image()))
        .collect();
    let ro = VolumeOptions::read_only(options.origin_discard);
    let vol = open_volume(&run.origin, &run.model, ro, &ctx);
    assert!(vol.is_read_only(), "{ctx}");
    verify_all(&vol, &run.model, &ctx);
    assert!(
        matches!(vol.write_origin(0, &[1]), Err(VolumeError::ReadOnly)),
        "{ctx}"
    );
    assert!(
        matches!(vol.zero_origin(0, 1), Err(VolumeError::ReadOnly)),
        "{ctx}"
    );
    for s in vol.snapshots() {
        assert!(
            matches!(vol.write_snapshot(&s, 0, &[1]), Err(VolumeError::ReadOnly)),
            "{ctx}: write of {}",
            s.name()
        );
        assert!(
            matches!(vol.discard_snapshot(&s, 0, 512), Err(VolumeError::ReadOnly)),
            "{ctx}: discard of {}",
            s.name()
        );
    }
    vol.flush_all()
        .unwrap_or_else(|e| panic!("{ctx}: flush_all failed: {e}"));
    verify_all(&vol, &run.model, &ctx);
    drop(vol);
    let after: Vec<Vec<u8>> = std::iter::once(run.origin.image())
        .chain(run.model.snaps.iter().map(|s| s.cow.image()))
        .collect();
    assert!(after == images, "{ctx}: a read-only volume wrote a device");
}

#[test]
fn random_operations_match_the_model() {
    for seed in seeds(DEFAULT_SEEDS, 0x5EED_0000) {
        run_random(seed);
    }
}
