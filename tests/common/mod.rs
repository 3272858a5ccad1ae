//! Helpers shared by the integration tests: a seeded generator, a byte-level model of an origin
//! and its snapshots (the kernel's dm-snapshot semantics, including COW space, overflow and
//! invalidation), the kernel's usage figures, and builders for volumes on memory and simulated
//! devices.

#![allow(dead_code)]

/// The format read and written byte by byte (the suites' one reference reader).
pub mod format;

use snapfs::device::{BlockDevice, Device, DeviceHooks, MemDevice, SimDevice, SimWorld, Wrapped};
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{SnapshotConfig, Volume, VolumeError, VolumeOptions};
use std::sync::Arc;

pub const SECTOR: u64 = 512;
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * 1024;

/// Chunk size in sectors of a new persistent store opened with chunk size 0.
pub const DEFAULT_PERSISTENT_SECTORS: u64 = 32;

pub const P: StoreKind = StoreKind::Persistent { overflow: false };
pub const PO: StoreKind = StoreKind::Persistent { overflow: true };
pub const N: StoreKind = StoreKind::Transient;

// ---------------------------------------------------------------------------------------------
// Seeds and the generator
// ---------------------------------------------------------------------------------------------

pub use snapfs::rng::Rng;

/// A number from the environment, decimal or `0x` hex; `None` when unset.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// The seeds to run: `one_var` replays exactly one seed; otherwise `count_var` (or
/// `default_count`) seeds starting at `base`.
pub fn seeds_from(one_var: &str, count_var: &str, default_count: u64, base: u64) -> Vec<u64> {
    if let Some(seed) = env_u64(one_var) {
        return vec![seed];
    }
    let count = env_u64(count_var).unwrap_or(default_count);
    (0..count).map(|i| base.wrapping_add(i)).collect()
}

/// `SNAPFS_SEED=<n>` replays one seed, `SNAPFS_SEEDS=<count>` runs more.
pub fn seeds(default_count: u64, base: u64) -> Vec<u64> {
    seeds_from("SNAPFS_SEED", "SNAPFS_SEEDS", default_count, base)
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

/// A device handle that can give back its current image.
#[derive(Clone)]
pub enum Dev {
    Mem(Arc<MemDevice>),
    Sim(Arc<SimDevice>),
}

impl Dev {
    pub fn device(&self) -> Device {
        match self {
            Dev::Mem(d) => d.clone(),
            Dev::Sim(d) => d.clone(),
        }
    }

    /// What reads see now.
    pub fn image(&self) -> Vec<u8> {
        match self {
            Dev::Mem(d) => d.contents(),
            Dev::Sim(d) => d.live_image(),
        }
    }

    pub fn size_bytes(&self) -> u64 {
        self.device().size_bytes()
    }
}

/// Where new devices are made: plain memory, or one simulated world.
#[derive(Clone)]
pub enum Backing {
    Mem,
    Sim(Arc<SimWorld>),
}

impl Backing {
    pub fn new_sim() -> Backing {
        Backing::Sim(SimWorld::new())
    }

    pub fn is_sim(&self) -> bool {
        matches!(self, Backing::Sim(_))
    }

    pub fn device(&self, name: &str, image: Vec<u8>) -> Dev {
        match self {
            Backing::Mem => Dev::Mem(Arc::new(MemDevice::from_bytes(name, image, 512))),
            Backing::Sim(world) => Dev::Sim(world.device_from(name, image, 512)),
        }
    }

    /// The same kind of backing, fresh (a new world for simulated devices).
    pub fn fresh(&self) -> Backing {
        match self {
            Backing::Mem => Backing::Mem,
            Backing::Sim(_) => Backing::new_sim(),
        }
    }

    /// A device with the current image of `dev` (for a memory device: the same device).
    pub fn reopen(&self, name: &str, dev: &Dev) -> Dev {
        match (self, dev) {
            (Backing::Mem, Dev::Mem(_)) => dev.clone(),
            _ => self.device(name, dev.image()),
        }
    }
}

/// A zeroed memory device of `size` bytes.
pub fn mem(name: &str, size: u64) -> Dev {
    Backing::Mem.device(name, vec![0; size as usize])
}

/// A memory origin of `size` random bytes (from `seed`) and the model over the same image.
pub fn random_origin(seed: u64, size: u64) -> (Dev, Model) {
    let image = Rng::new(seed).bytes(size);
    (
        Backing::Mem.device("origin", image.clone()),
        Model::new(image),
    )
}

// ---------------------------------------------------------------------------------------------
// The kernel's store arithmetic (docs/format.md), for expected usage figures and COW capacity
// ---------------------------------------------------------------------------------------------

pub fn records_per_area(chunk_bytes: u64) -> u64 {
    chunk_bytes / 16
}

pub fn is_area_chunk(chunk_bytes: u64, c: u64) -> bool {
    c >= 1 && c % (records_per_area(chunk_bytes) + 1) == 1
}

/// `next_free` of a persistent store after `n` allocations.
pub fn persistent_next_free(chunk_bytes: u64, n: u64) -> u64 {
    let e = records_per_area(chunk_bytes);
    // Closed form of the stepping: full groups of E data chunks plus one area each.
    let mut next = 2 + n + n / e;
    if is_area_chunk(chunk_bytes, next) {
        next += 1;
    }
    next
}

/// How many exceptions a persistent store on a COW of `cow_bytes` can hold. A chunk is
/// allocatable when it fits (the kernel checks nothing else); but when the last allocatable
/// chunk fills an area whose next area lies past the end, its commit fails the store (zeroing
/// that area fails), so it holds one fewer: see [`persistent_fills_past_the_end`].
pub fn persistent_capacity(chunk_bytes: u64, cow_bytes: u64) -> u64 {
    let fits = |c: u64| (c + 1) * chunk_bytes <= cow_bytes;
    let mut n = 0;
    while fits(persistent_next_free(chunk_bytes, n)) {
        n += 1;
    }
    n - persistent_fills_past_the_end(chunk_bytes, cow_bytes) as u64
}

/// Whether the last chunk a persistent store can allocate fills an area whose next area lies
/// (even in part) past the end of the COW: allocating it succeeds, its commit fails the store,
/// whatever the store type (the kernel's zeroing write past the end fails).
pub fn persistent_fills_past_the_end(chunk_bytes: u64, cow_bytes: u64) -> bool {
    let e = records_per_area(chunk_bytes);
    let mut n = 0;
    while (persistent_next_free(chunk_bytes, n) + 1) * chunk_bytes <= cow_bytes {
        n += 1;
    }
    let next_area = 1 + (n / e) * (e + 1);
    n > 0 && n.is_multiple_of(e) && (next_area + 1) * chunk_bytes > cow_bytes
}

/// How many exceptions a store can hold.
pub fn capacity(kind: StoreKind, chunk_bytes: u64, cow_bytes: u64) -> u64 {
    match kind {
        StoreKind::Persistent { .. } => persistent_capacity(chunk_bytes, cow_bytes),
        StoreKind::Transient => (cow_bytes / SECTOR) / (chunk_bytes / SECTOR),
    }
}

/// The `A/T M` word of a store holding `n` exceptions.
pub fn expected_usage(kind: StoreKind, chunk_bytes: u64, cow_bytes: u64, n: u64) -> String {
    let cs = chunk_bytes / SECTOR;
    let total = cow_bytes / SECTOR;
    match kind {
        StoreKind::Persistent { .. } => {
            let area = n / records_per_area(chunk_bytes);
            format!(
                "{}/{} {}",
                persistent_next_free(chunk_bytes, n) * cs,
                total,
                (area + 2) * cs
            )
        }
        StoreKind::Transient => format!("{}/{} 0", n * cs, total),
    }
}

/// A COW size that never fills for an origin of `origin_bytes` (every chunk copied, plus slack).
pub fn roomy_cow_bytes(kind: StoreKind, chunk_bytes: u64, origin_bytes: u64) -> u64 {
    let n = origin_bytes.div_ceil(chunk_bytes);
    let bytes = match kind {
        StoreKind::Persistent { .. } => {
            (2 + n + n / records_per_area(chunk_bytes) + 3) * chunk_bytes
        }
        StoreKind::Transient => (n + 1) * chunk_bytes,
    };
    assert!(capacity(kind, chunk_bytes, bytes) >= n);
    bytes
}

/// The chunk size a store ends up with for a requested size (`0`: the persistent default).
pub fn effective_chunk_bytes(kind: StoreKind, requested_sectors: u64) -> u64 {
    match (kind, requested_sectors) {
        (StoreKind::Persistent { .. }, 0) => DEFAULT_PERSISTENT_SECTORS * SECTOR,
        (_, s) => s * SECTOR,
    }
}

// ---------------------------------------------------------------------------------------------
// The byte-level model
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapState {
    Active,
    /// `PO` only: snapshot writes fail, reads work (in memory: gone after a reopen).
    Overflow,
    /// Every snapshot I/O fails; persisted for persistent stores.
    Invalid,
}

/// The error a modelled operation must fail with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Want {
    Invalid,
    Overflow,
    /// A punch whose exceptions do not fit: nothing changed (`VolumeError::NoSpace`).
    NoSpace,
}

pub struct SnapModel {
    pub name: String,
    pub kind: StoreKind,
    /// Chunk size asked for when the snapshot was created (0 = default).
    pub requested_sectors: u64,
    pub chunk_bytes: u64,
    pub cow: Dev,
    pub cow_bytes: u64,
    /// What the snapshot reads.
    pub data: Vec<u8>,
    /// Which chunks have an exception.
    pub excepted: Vec<bool>,
    pub exceptions: u64,
    pub capacity: u64,
    /// One more exception than `capacity` can be allocated, and its commit fails the store.
    pub fills_past_the_end: bool,
    pub state: SnapState,
}

impl SnapModel {
    /// A snapshot of `origin` as it is now, with an empty store.
    pub fn new(
        name: &str,
        kind: StoreKind,
        requested_sectors: u64,
        cow: Dev,
        origin: &[u8],
    ) -> SnapModel {
        let chunk_bytes = effective_chunk_bytes(kind, requested_sectors);
        let cow_bytes = cow.size_bytes();
        SnapModel {
            name: name.to_string(),
            kind,
            requested_sectors,
            chunk_bytes,
            cow,
            cow_bytes,
            data: origin.to_vec(),
            excepted: vec![false; (origin.len() as u64).div_ceil(chunk_bytes) as usize],
            exceptions: 0,
            capacity: capacity(kind, chunk_bytes, cow_bytes),
            fills_past_the_end: kind.is_persistent()
                && persistent_fills_past_the_end(chunk_bytes, cow_bytes),
            state: SnapState::Active,
        }
    }

    pub fn config(&self) -> SnapshotConfig {
        SnapshotConfig {
            name: self.name.clone(),
            cow: self.cow.device(),
            kind: self.kind,
            chunk_sectors: self.requested_sectors,
            features: Default::default(),
        }
    }

    /// Chunks of `[off, off + len)` without an exception.
    fn missing(&self, off: u64, len: u64) -> Vec<u64> {
        if len == 0 {
            return Vec::new();
        }
        let first = off / self.chunk_bytes;
        let last = (off + len - 1) / self.chunk_bytes;
        (first..=last)
            .filter(|&c| !self.excepted[c as usize])
            .collect()
    }

    fn add_exceptions(&mut self, chunks: &[u64]) {
        for &c in chunks {
            self.excepted[c as usize] = true;
        }
        self.exceptions += chunks.len() as u64;
    }

    /// The word `status()` must print for this snapshot.
    pub fn expected_word(&self) -> String {
        match self.state {
            SnapState::Invalid => "Invalid".to_string(),
            SnapState::Overflow => "Overflow".to_string(),
            SnapState::Active => {
                expected_usage(self.kind, self.chunk_bytes, self.cow_bytes, self.exceptions)
            }
        }
    }

    /// The usage figures the store holds (also while `Overflow`); `None` when invalid.
    pub fn expected_usage(&self) -> Option<String> {
        (self.state != SnapState::Invalid)
            .then(|| expected_usage(self.kind, self.chunk_bytes, self.cow_bytes, self.exceptions))
    }
}

/// The origin and its snapshots, byte for byte.
pub struct Model {
    pub size: u64,
    pub origin: Vec<u8>,
    pub snaps: Vec<SnapModel>,
}

impl Model {
    pub fn new(origin: Vec<u8>) -> Model {
        Model {
            size: origin.len() as u64,
            origin,
            snaps: Vec::new(),
        }
    }

    pub fn index(&self, name: &str) -> usize {
        self.snaps
            .iter()
            .position(|s| s.name == name)
            .unwrap_or_else(|| panic!("no snapshot {name} in the model"))
    }

    /// Takes a snapshot of the origin as it is now (open or attach).
    pub fn add_snapshot(&mut self, name: &str, kind: StoreKind, requested: u64, cow: Dev) {
        let snap = SnapModel::new(name, kind, requested, cow, &self.origin);
        self.snaps.push(snap);
    }

    /// An origin write (`data`, or zeroes when `None`) of `len` bytes: every snapshot that takes
    /// copies first copies the chunks it lacks, all or none per snapshot; a snapshot whose COW
    /// cannot hold them becomes invalid (`PO` too: the kernel invalidates on an origin write).
    pub fn origin_write(&mut self, off: u64, len: u64, data: Option<&[u8]>) {
        for s in &mut self.snaps {
            if s.state == SnapState::Invalid {
                continue;
            }
            let missing = s.missing(off, len);
            if s.exceptions + missing.len() as u64 > s.capacity {
                s.state = SnapState::Invalid;
            } else {
                s.add_exceptions(&missing);
            }
        }
        let range = off as usize..(off + len) as usize;
        match data {
            Some(d) => self.origin[range].copy_from_slice(d),
            None => self.origin[range].fill(0),
        }
    }

    /// A snapshot write. Fails as the kernel does: invalid -> Invalid; overflowed `PO` ->
    /// Overflow for every write; no room -> `PO` overflows, `P`/`N` become invalid (`PO` too
    /// when the write reaches a chunk whose commit fails: `fills_past_the_end`). A failed write
    /// changes nothing.
    pub fn snap_write(
        &mut self,
        i: usize,
        off: u64,
        len: u64,
        data: Option<&[u8]>,
    ) -> Result<(), Want> {
        let s = &mut self.snaps[i];
        match s.state {
            SnapState::Invalid => return Err(Want::Invalid),
            SnapState::Overflow => return Err(Want::Overflow),
            SnapState::Active => {}
        }
        let missing = s.missing(off, len);
        if s.exceptions + missing.len() as u64 > s.capacity {
            return if s.kind == PO && !s.fills_past_the_end {
                s.state = SnapState::Overflow;
                Err(Want::Overflow)
            } else {
                s.state = SnapState::Invalid;
                Err(Want::Invalid)
            };
        }
        s.add_exceptions(&missing);
        let range = off as usize..(off + len) as usize;
        match data {
            Some(d) => s.data[range].copy_from_slice(d),
            None => s.data[range].fill(0),
        }
        Ok(())
    }

    /// A punch of a snapshot (`discard_snapshot`) without `discard_passdown_origin`: the range
    /// reads zero afterwards, every chunk (those without an exception get one), as a zeroing
    /// write; but when the exceptions do not fit it fails with `NoSpace` and changes nothing
    /// (no overflow, no invalidation: a discard must not destroy a snapshot).
    pub fn snap_discard(&mut self, i: usize, off: u64, len: u64) -> Result<(), Want> {
        let s = &mut self.snaps[i];
        match s.state {
            SnapState::Invalid => return Err(Want::Invalid),
            SnapState::Overflow => return Err(Want::Overflow),
            SnapState::Active => {}
        }
        let missing = s.missing(off, len);
        if s.exceptions + missing.len() as u64 > s.capacity {
            return Err(Want::NoSpace);
        }
        s.add_exceptions(&missing);
        s.data[off as usize..(off + len) as usize].fill(0);
        Ok(())
    }

    /// What a snapshot read of `[off, off + len)` returns.
    pub fn snap_read(&self, i: usize, off: u64, len: u64) -> Result<&[u8], Want> {
        let s = &self.snaps[i];
        match s.state {
            SnapState::Invalid => Err(Want::Invalid),
            _ => Ok(&s.data[off as usize..(off + len) as usize]),
        }
    }

    /// After a close and reopen: transient snapshots are gone, overflow is forgotten.
    pub fn reopened(&mut self) {
        self.snaps.retain(|s| s.kind.is_persistent());
        for s in &mut self.snaps {
            if s.state == SnapState::Overflow {
                s.state = SnapState::Active;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// Where two buffers first differ.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    if a == b {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .position(|(x, y)| x != y)
            .unwrap_or(a.len().min(b.len())),
    )
}

/// Asserts that `got` (read at `off`) equals `want`, naming the first differing byte.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], off: u64, ctx: &str) {
    if let Some(i) = first_diff(got, want) {
        let show = |v: &[u8]| {
            let end = (i + 16).min(v.len());
            format!("{:02x?}", &v[i.min(end)..end])
        };
        panic!(
            "{ctx}: data differs at byte {} (offset {i} of a {}-byte read at {off}): got {} \
             want {}",
            off + i as u64,
            got.len(),
            show(got),
            show(want)
        );
    }
}

/// Asserts that a volume result is what the model wants.
#[track_caller]
pub fn assert_result(got: Result<(), VolumeError>, want: Result<(), Want>, ctx: &str) {
    match (&got, want) {
        (Ok(()), Ok(())) => {}
        (Err(VolumeError::Invalid), Err(Want::Invalid)) => {}
        (Err(VolumeError::Overflow), Err(Want::Overflow)) => {}
        (Err(VolumeError::NoSpace), Err(Want::NoSpace)) => {}
        _ => panic!("{ctx}: got {got:?}, the model wants {want:?}"),
    }
}

#[track_caller]
pub fn assert_out_of_range<T: std::fmt::Debug>(got: Result<T, VolumeError>, ctx: &str) {
    assert!(
        matches!(got, Err(VolumeError::OutOfRange { .. })),
        "{ctx}: expected OutOfRange, got {got:?}"
    );
}

/// The status word of snapshot `name` (`Invalid`, or its usage figures).
pub fn status_word(vol: &Volume, name: &str) -> String {
    let status = dm_lines(vol);
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("{name} in {status}"));
    line.splitn(5, ' ').nth(4).unwrap().to_string()
}

/// The snapshot lines of `status()` as `(name, word)`, after checking the origin line.
pub fn status_words(vol: &Volume, ctx: &str) -> Vec<(String, String)> {
    let status = dm_lines(vol);
    let sectors = vol.size_bytes() / SECTOR;
    let mut lines = status.lines();
    assert_eq!(
        lines.next(),
        Some(format!("origin: 0 {sectors} snapshot-origin").as_str()),
        "{ctx}: status origin line of {status:?}"
    );
    lines
        .map(|line| {
            let (name, rest) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("{ctx}: bad status line {line:?}"));
            let prefix = format!("0 {sectors} snapshot ");
            let word = rest
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{ctx}: bad status line {line:?}"));
            (name.to_string(), word.to_string())
        })
        .collect()
}

/// Checks `status()` and each snapshot's exception count against the model.
pub fn check_status(vol: &Volume, model: &Model, ctx: &str) {
    let words = status_words(vol, ctx);
    let names: Vec<&str> = words.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<&str> = model.snaps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, want, "{ctx}: snapshots listed by status()");
    for ((name, word), s) in words.iter().zip(&model.snaps) {
        assert_eq!(*word, s.expected_word(), "{ctx}: status word of {name}");
        if s.state != SnapState::Invalid {
            let snap = vol
                .snapshot(name)
                .unwrap_or_else(|| panic!("{ctx}: snapshot {name} is missing"));
            assert_eq!(
                snap.exceptions(),
                s.exceptions,
                "{ctx}: exception count of {name}"
            );
            assert_eq!(
                snap.chunk_size().bytes(),
                s.chunk_bytes,
                "{ctx}: chunk size of {name}"
            );
        }
    }
}

/// Reads the whole origin and every snapshot and compares them with the model; checks status.
pub fn verify_all(vol: &Volume, model: &Model, ctx: &str) {
    assert_eq!(vol.size_bytes(), model.size, "{ctx}: volume size");
    let mut buf = vec![0u8; model.size as usize];
    vol.read_origin(0, &mut buf)
        .unwrap_or_else(|e| panic!("{ctx}: origin read failed: {e}"));
    assert_bytes(&buf, &model.origin, 0, &format!("{ctx}: origin"));
    for (i, s) in model.snaps.iter().enumerate() {
        let snap = vol
            .snapshot(&s.name)
            .unwrap_or_else(|| panic!("{ctx}: snapshot {} is missing", s.name));
        let got = vol.read_snapshot(&snap, 0, &mut buf);
        match model.snap_read(i, 0, model.size) {
            Ok(want) => {
                got.unwrap_or_else(|e| panic!("{ctx}: read of snapshot {} failed: {e}", s.name));
                assert_bytes(&buf, want, 0, &format!("{ctx}: snapshot {}", s.name));
            }
            Err(w) => assert_result(got, Err(w), &format!("{ctx}: read of snapshot {}", s.name)),
        }
    }
    check_status(vol, model, ctx);
}

/// Opens a volume over `origin` with the model's snapshots, in model order.
pub fn open_volume(origin: &Dev, model: &Model, options: VolumeOptions, ctx: &str) -> Volume {
    let configs = model.snaps.iter().map(|s| s.config()).collect();
    Volume::open(origin.device(), configs, options)
        .unwrap_or_else(|e| panic!("{ctx}: Volume::open failed: {e}"))
}

/// The persistent header's `valid` word of a COW image.
pub fn header_valid(image: &[u8]) -> u32 {
    format::word32(image, 4)
}

/// A device whose flushes take a millisecond, so that a merge takes long enough to be stopped
/// in the middle (each merge step flushes the origin).
pub fn slow_flush(dev: Device) -> Device {
    struct SlowFlush;
    impl DeviceHooks<dyn BlockDevice> for SlowFlush {
        fn flush(&self, inner: &dyn BlockDevice) -> std::io::Result<()> {
            std::thread::sleep(std::time::Duration::from_millis(1));
            inner.flush()
        }
    }
    Arc::new(Wrapped::around(dev, SlowFlush))
}

// ----- merge tests: snapshot configs and whole-volume checks ---------------------------------

pub fn config(
    name: &str,
    cow: &snapfs::device::Device,
    kind: snapfs::store::StoreKind,
    chunk: u64,
) -> snapfs::SnapshotConfig {
    snapfs::SnapshotConfig {
        name: name.to_string(),
        cow: cow.clone(),
        kind,
        chunk_sectors: chunk,
        features: Default::default(),
    }
}

pub fn write_model(model: &mut [u8], off: u64, data: &[u8]) {
    model[off as usize..off as usize + data.len()].copy_from_slice(data);
}

pub fn check_origin(vol: &snapfs::Volume, model: &[u8], seed: u64, when: &str) {
    let mut buf = vec![0u8; model.len()];
    vol.read_origin(0, &mut buf).unwrap();
    if let Some(i) = buf.iter().zip(model).position(|(a, b)| a != b) {
        panic!("seed {seed}: origin differs from the model at byte {i} {when}");
    }
}

pub fn check_snapshot(vol: &snapfs::Volume, name: &str, model: &[u8], seed: u64, when: &str) {
    let snap = vol.snapshot(name).unwrap();
    let mut buf = vec![0u8; model.len()];
    vol.read_snapshot(&snap, 0, &mut buf).unwrap();
    if let Some(i) = buf.iter().zip(model).position(|(a, b)| a != b) {
        panic!("seed {seed}: snapshot {name} differs from the model at byte {i} {when}");
    }
}
