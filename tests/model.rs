//! Model-based randomized tests of the volume against the kernel's dm-snapshot semantics.
//!
//! Every read is compared byte for byte with a model of the origin and of each snapshot
//! (tests/common). Seeded and replayable: every failure names its seed; `SNAPFS_SEED=<n>`
//! replays one seed, `SNAPFS_SEEDS=<count>` runs more.

mod common;

use common::*;
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
        let status = vol.status();
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
        assert_eq!(vol.status(), status, "{ctx}: status changed");
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
    let ro = VolumeOptions {
        read_only: true,
        origin_discard: options.origin_discard,
        ..VolumeOptions::default()
    };
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

// ---------------------------------------------------------------------------------------------
// Deterministic scenarios
// ---------------------------------------------------------------------------------------------

#[test]
fn open_rules_chunk_sizes_and_odd_sizes() {
    let ctx = "open rules";
    // A transient store needs an explicit chunk size.
    let origin = mem("origin", 64 * KIB);
    let got = Volume::open(
        origin.device(),
        vec![SnapshotConfig {
            name: "n".into(),
            cow: mem("cow", 64 * KIB).device(),
            kind: N,
            chunk_sectors: 0,
            features: Default::default(),
        }],
        VolumeOptions::default(),
    );
    assert!(got.is_err(), "{ctx}: N with chunk size 0 was accepted");
    // P with 0 takes the default of 32 sectors; the origin's odd tail is not served.
    let size = MIB + 4 * KIB;
    let mut image = Rng::new(1).bytes(size + 100);
    image[size as usize..].fill(0xEE);
    let origin = Backing::Mem.device("origin", image.clone());
    let mut model = Model::new(image[..size as usize].to_vec());
    model.add_snapshot("p", P, 0, mem("p", roomy_cow_bytes(P, 16 * KIB, size)));
    model.add_snapshot(
        "big",
        P,
        128,
        mem("big", roomy_cow_bytes(P, 64 * KIB, size)),
    );
    model.add_snapshot("n", N, 128, mem("n", roomy_cow_bytes(N, 64 * KIB, size)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(vol.size_bytes(), size, "{ctx}: size");
    assert_eq!(
        vol.snapshot("p").unwrap().chunk_size().sectors(),
        32,
        "{ctx}"
    );
    verify_all(&vol, &model, ctx);
    // The last 64 KiB chunk holds only 4 KiB of origin.
    let data = Rng::new(2).bytes(8 * KIB);
    vol.write_origin(size - 8 * KIB, &data).unwrap();
    model.origin_write(size - 8 * KIB, 8 * KIB, Some(&data));
    let p = vol.snapshot("big").unwrap();
    vol.write_snapshot(&p, size - 100, &data[..100]).unwrap();
    model
        .snap_write(1, size - 100, 100, Some(&data[..100]))
        .unwrap();
    assert_out_of_range(vol.write_origin(size - 1, &[1, 2]), ctx);
    assert_out_of_range(vol.read_snapshot(&p, size, &mut [0]), ctx);
    verify_all(&vol, &model, ctx);
    assert_eq!(
        &origin.image()[size as usize..],
        &[0xEE; 100][..],
        "{ctx}: the origin's odd tail was written"
    );
    drop(vol);
    // An origin smaller than one chunk.
    let ctx = "origin smaller than a chunk";
    let size = 3 * SECTOR;
    let (origin, mut model) = random_origin(7, size);
    model.add_snapshot("p", P, 16, mem("p", roomy_cow_bytes(P, 8 * KIB, size)));
    model.add_snapshot("n", N, 8, mem("n", roomy_cow_bytes(N, 4 * KIB, size)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    vol.write_origin(700, &[1; 100]).unwrap();
    model.origin_write(700, 100, Some(&[1; 100]));
    let n = vol.snapshot("n").unwrap();
    vol.write_snapshot(&n, size - 10, &[2; 10]).unwrap();
    model.snap_write(1, size - 10, 10, Some(&[2; 10])).unwrap();
    assert_out_of_range(vol.write_snapshot(&n, size - 10, &[2; 11]), ctx);
    verify_all(&vol, &model, ctx);
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    verify_all(&vol, &model, ctx);
}

/// A punch reads zeroes on every chunk it covers. This test used to say the opposite
/// (`snapshot_discard_zeroes_only_chunks_with_an_exception`, and an origin discard that changed
/// nothing without `origin_discard`): that was the old behaviour, which answered 0 for a
/// `fallocate -p` whose range still read the old bytes (issue 13; docs/discard.md).
#[test]
fn snapshot_and_origin_punches_read_zeroes() {
    let ctx = "discard";
    let cb = 8 * KIB;
    let (origin, mut model) = random_origin(3, 32 * cb);
    let before = model.origin.clone();
    model.add_snapshot("p", P, 16, mem("p", roomy_cow_bytes(P, cb, 32 * cb)));
    model.add_snapshot("n", N, 16, mem("n", roomy_cow_bytes(N, cb, 32 * cb)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let p = vol.snapshot("p").unwrap();
    // Chunk 0 gets an exception by a snapshot write, chunk 2 by an origin write.
    vol.write_snapshot(&p, 100, &[7; 100]).unwrap();
    model.snap_write(0, 100, 100, Some(&[7; 100])).unwrap();
    vol.write_origin(2 * cb + 10, &[9; 10]).unwrap();
    model.origin_write(2 * cb + 10, 10, Some(&[9; 10]));
    assert_eq!(p.exceptions(), 2, "{ctx}");
    let (off, end) = (50, 3 * cb + 100);
    vol.discard_snapshot(&p, off, end - off).unwrap();
    model.snap_discard(0, off, end - off).unwrap();
    assert_eq!(p.exceptions(), 4, "{ctx}: chunks 1 and 3 get exceptions");
    let mut got = vec![0u8; 4 * cb as usize];
    vol.read_snapshot(&p, 0, &mut got).unwrap();
    // Spelled out, not just the model: zero from 50 to 3 * cb + 100, the rest as it was.
    let mut want = before[..4 * cb as usize].to_vec();
    want[off as usize..end as usize].fill(0);
    assert_bytes(&got, &want, 0, ctx);
    verify_all(&vol, &model, ctx);
    // An origin punch without the option: copied out first, zeroes afterwards.
    vol.discard_origin(5 * cb, 2 * cb).unwrap();
    model.origin_write(5 * cb, 2 * cb, None);
    assert_eq!(p.exceptions(), 6, "{ctx}: discard_origin did not copy out");
    verify_all(&vol, &model, ctx);
    drop(vol);
    // With origin_discard: the same, the device may free the space.
    model.reopened();
    let vol = open_volume(
        &origin,
        &model,
        VolumeOptions {
            read_only: false,
            origin_discard: true,
            ..VolumeOptions::default()
        },
        ctx,
    );
    let p = vol.snapshot("p").unwrap();
    vol.discard_origin(9 * cb, 2 * cb).unwrap();
    model.origin_write(9 * cb, 2 * cb, None);
    assert_eq!(p.exceptions(), 8, "{ctx}: discard_origin did not copy out");
    verify_all(&vol, &model, ctx);
}

#[test]
fn cow_full_invalidates_a_persistent_snapshot() {
    let ctx = "COW full (P)";
    let cb = 4 * KIB;
    let size = 256 * KIB;
    let (origin, mut model) = random_origin(4, size);
    // 8 chunks: header, area 0, data chunks 2..=7: room for 6 exceptions.
    model.add_snapshot("small", P, 8, mem("small", 8 * cb));
    model.add_snapshot("big", P, 16, mem("big", roomy_cow_bytes(P, 8 * KIB, size)));
    model.add_snapshot("n", N, 8, mem("n", roomy_cow_bytes(N, cb, size)));
    assert_eq!(model.snaps[0].capacity, 6, "{ctx}");
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let small = vol.snapshot("small").unwrap();
    for c in 0..6 {
        let data = [c as u8 + 1; 100];
        vol.write_origin(c * cb + 7, &data).unwrap();
        model.origin_write(c * cb + 7, 100, Some(&data));
    }
    let words = status_words(&vol, ctx);
    assert_eq!(words[0].1, "64/64 16", "{ctx}: full but valid");
    verify_all(&vol, &model, ctx);
    // The seventh chunk cannot be copied: the snapshot dies, the origin write succeeds.
    vol.write_origin(10 * cb, &[0xAB; 4096]).unwrap();
    model.origin_write(10 * cb, 4096, Some(&[0xAB; 4096]));
    assert_eq!(model.snaps[0].state, SnapState::Invalid, "{ctx}: model");
    assert_eq!(status_words(&vol, ctx)[0].1, "Invalid", "{ctx}");
    let mut buf = [0u8; 512];
    assert!(
        matches!(
            vol.read_snapshot(&small, 0, &mut buf),
            Err(VolumeError::Invalid)
        ),
        "{ctx}"
    );
    assert!(
        matches!(
            vol.write_snapshot(&small, 0, &buf),
            Err(VolumeError::Invalid)
        ),
        "{ctx}"
    );
    assert!(
        matches!(vol.zero_snapshot(&small, 0, 512), Err(VolumeError::Invalid)),
        "{ctx}"
    );
    assert!(
        matches!(
            vol.discard_snapshot(&small, 0, 512),
            Err(VolumeError::Invalid)
        ),
        "{ctx}"
    );
    assert_eq!(
        header_valid(&model.snaps[0].cow.image()),
        0,
        "{ctx}: header valid=0"
    );
    // Later origin writes go on; the other snapshots keep their content.
    vol.write_origin(0, &[0xCD; 64 * 1024]).unwrap();
    model.origin_write(0, 64 * KIB, Some(&[0xCD; 64 * 1024]));
    verify_all(&vol, &model, ctx);
    // A snapshot write that needs room invalidates a P snapshot (it does not overflow).
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(
        status_words(&vol, ctx)[0].1,
        "Invalid",
        "{ctx}: after reopen"
    );
    verify_all(&vol, &model, ctx);
    drop(vol);
    let (origin, mut model) = random_origin(5, size);
    model.add_snapshot("small", P, 8, mem("small", 3 * cb));
    assert_eq!(model.snaps[0].capacity, 1, "{ctx}");
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let small = vol.snapshot("small").unwrap();
    vol.write_snapshot(&small, 0, &[1; 10]).unwrap();
    model.snap_write(0, 0, 10, Some(&[1; 10])).unwrap();
    vol.write_snapshot(&small, 4, &[2; 10]).unwrap();
    model.snap_write(0, 4, 10, Some(&[2; 10])).unwrap();
    let got = vol.write_snapshot(&small, cb, &[3; 10]);
    assert_result(got, model.snap_write(0, cb, 10, Some(&[3; 10])), ctx);
    assert_eq!(model.snaps[0].state, SnapState::Invalid, "{ctx}: model");
    verify_all(&vol, &model, ctx);
}

#[test]
fn overflow_of_a_po_snapshot() {
    let ctx = "COW full (PO)";
    let cb = 4 * KIB;
    let size = 256 * KIB;
    let (origin, mut model) = random_origin(6, size);
    model.add_snapshot("po", PO, 8, mem("po", 8 * cb));
    model.add_snapshot("big", P, 1, mem("big", roomy_cow_bytes(P, SECTOR, size)));
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    let po = vol.snapshot("po").unwrap();
    let write = |vol: &Volume, model: &mut Model, off: u64, data: &[u8]| {
        let got = vol.write_snapshot(&vol.snapshot("po").unwrap(), off, data);
        let want = model.snap_write(0, off, data.len() as u64, Some(data));
        assert_result(
            got,
            want,
            &format!("{ctx}: snapshot write {off}+{}", data.len()),
        );
    };
    // Four of six chunks used, one of them whole.
    write(&vol, &mut model, 0, &[1; 4096]);
    write(&vol, &mut model, cb + 1, &[2; 10]);
    write(&vol, &mut model, 2 * cb + 4000, &[3; 200]);
    assert_eq!(status_words(&vol, ctx)[0].1, "48/64 16", "{ctx}");
    // A write needing three chunks with two left: overflow; nothing of it lands.
    write(&vol, &mut model, 4 * cb + 5, &[4; 2 * 4096]);
    assert_eq!(model.snaps[0].state, SnapState::Overflow, "{ctx}: model");
    assert_eq!(status_words(&vol, ctx)[0].1, "Overflow", "{ctx}");
    verify_all(&vol, &model, ctx);
    // Every write now fails, also to chunks with an exception; reads work.
    write(&vol, &mut model, 0, &[5; 10]);
    assert!(
        matches!(vol.zero_snapshot(&po, 0, 10), Err(VolumeError::Overflow)),
        "{ctx}"
    );
    assert!(
        matches!(vol.discard_snapshot(&po, 0, 10), Err(VolumeError::Overflow)),
        "{ctx}"
    );
    // Origin writes still copy while there is room.
    vol.write_origin(9 * cb, &[6; 100]).unwrap();
    model.origin_write(9 * cb, 100, Some(&[6; 100]));
    assert_eq!(po.exceptions(), 5, "{ctx}: the origin write copied out");
    assert_eq!(model.snaps[0].state, SnapState::Overflow, "{ctx}: model");
    verify_all(&vol, &model, ctx);
    // Overflow is not persistent; the figures are the same after a reopen.
    let usage = po.usage().to_string();
    assert_eq!(usage, "56/64 16", "{ctx}");
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(status_words(&vol, ctx)[0].1, usage, "{ctx}: after reopen");
    verify_all(&vol, &model, ctx);
    write(&vol, &mut model, 0, &[7; 10]);
    write(&vol, &mut model, 12 * cb, &[8; 10]);
    write(&vol, &mut model, 13 * cb, &[9; 10]);
    assert_eq!(model.snaps[0].state, SnapState::Overflow, "{ctx}: model");
    assert_eq!(status_words(&vol, ctx)[0].1, "Overflow", "{ctx}");
    // An origin write needing a copy with no room left invalidates it.
    vol.write_origin(20 * cb, &[10; 100]).unwrap();
    model.origin_write(20 * cb, 100, Some(&[10; 100]));
    assert_eq!(model.snaps[0].state, SnapState::Invalid, "{ctx}: model");
    verify_all(&vol, &model, ctx);
    drop(vol);
    model.reopened();
    let vol = open_volume(&origin, &model, VolumeOptions::default(), ctx);
    assert_eq!(
        header_valid(&model.snaps[0].cow.image()),
        0,
        "{ctx}: header valid=0"
    );
    verify_all(&vol, &model, ctx);
}

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
