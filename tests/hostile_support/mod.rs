//! Helpers for the hostile-input tests and the fuzzer: COW images built byte by byte (see
//! docs/format.md), a device that counts every write, a seeded generator, and the checks every
//! refused load must pass (a clear one-line error, no byte written).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use parking_lot::RwLock;
use snapfs::device::{BlockDevice, Device};
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{OpenError, SnapshotConfig, Volume, VolumeOptions};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const SECTOR: u64 = 512;
/// `"SnAp"` read as a little-endian u32.
pub const SNAP: u32 = u32::from_le_bytes(*b"SnAp");
/// snapfs's merge marker in bytes 16..28 of chunk 0: `snapfsMG` and version 1 (u32 LE).
pub const MARKER: [u8; 12] = *b"snapfsMG\x01\x00\x00\x00";
pub const P: StoreKind = StoreKind::Persistent { overflow: false };
pub const PO: StoreKind = StoreKind::Persistent { overflow: true };
pub const N: StoreKind = StoreKind::Transient;

// ----- generator ------------------------------------------------------------------------------

/// A number from the environment (`SNAPFS_FUZZ_ITERS=100000`), if set.
pub fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
    )
}

// ----- a device that counts writes ------------------------------------------------------------

/// An in-memory device that counts every call that could change it (writes, zeroing, discards)
/// and every flush, so a test can assert that nothing was even attempted.
pub struct Watch {
    name: String,
    block_bytes: u32,
    data: RwLock<Vec<u8>>,
    writes: AtomicU64,
    flushes: AtomicU64,
}

impl Watch {
    pub fn new(name: &str, image: Vec<u8>, block_bytes: u32) -> Arc<Watch> {
        Arc::new(Watch {
            name: name.to_string(),
            block_bytes,
            data: RwLock::new(image),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
        })
    }

    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    /// Write-like calls so far (write, write_zeroes, discard), successful or not.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    pub fn device(self: &Arc<Self>) -> Device {
        self.clone()
    }

    /// Fails the test if the device was written or its bytes differ from `image`.
    pub fn assert_untouched(&self, image: &[u8], ctx: &str) {
        assert_eq!(self.writes(), 0, "{ctx}: {} was written", self.name);
        let data = self.data.read();
        assert_eq!(data.len(), image.len(), "{ctx}: {} changed size", self.name);
        if let Some(i) = data.iter().zip(image).position(|(a, b)| a != b) {
            panic!("{ctx}: {} changed at byte {i}", self.name);
        }
    }

    fn check(&self, offset: u64, len: u64) -> io::Result<()> {
        let size = self.data.read().len() as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("range {offset}+{len} beyond {size}"),
            )),
        }
    }
}

impl BlockDevice for Watch {
    fn size_bytes(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn logical_block_size(&self) -> u32 {
        self.block_bytes
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.check(offset, buf.len() as u64)?;
        let data = self.data.read();
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.check(offset, buf.len() as u64)?;
        let mut data = self.data.write();
        data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.check(offset, len)?;
        self.data.write()[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

// ----- the COW format, byte by byte -----------------------------------------------------------

/// Geometry of a persistent store: chunk size in sectors.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub cs: u64,
}

impl Layout {
    pub fn bytes(self) -> u64 {
        self.cs * SECTOR
    }

    /// `E`: records per metadata area.
    pub fn per_area(self) -> u64 {
        self.bytes() / 16
    }

    /// Chunk of metadata area `n`: `1 + n * (E + 1)`.
    pub fn area(self, n: u64) -> u64 {
        1 + n * (self.per_area() + 1)
    }

    pub fn is_area(self, c: u64) -> bool {
        c >= 1 && c % (self.per_area() + 1) == 1
    }

    /// COW chunk of the k-th exception (from 0) when allocated in order.
    pub fn kth(self, k: u64) -> u64 {
        2 + k + k / self.per_area()
    }

    /// Byte offset of record `i` of area `n`.
    pub fn record_at(self, n: u64, i: u64) -> usize {
        (self.area(n) * self.bytes() + 16 * i) as usize
    }

    /// Byte offset of the k-th record of the list.
    pub fn kth_record_at(self, k: u64) -> usize {
        self.record_at(k / self.per_area(), k % self.per_area())
    }
}

/// Writes the kernel's 16 header bytes.
pub fn put_header(img: &mut [u8], magic: u32, valid: u32, version: u32, chunk_sectors: u32) {
    img[0..4].copy_from_slice(&magic.to_le_bytes());
    img[4..8].copy_from_slice(&valid.to_le_bytes());
    img[8..12].copy_from_slice(&version.to_le_bytes());
    img[12..16].copy_from_slice(&chunk_sectors.to_le_bytes());
}

/// Writes `(old, new)` at byte `at`.
pub fn put_record_at(img: &mut [u8], at: usize, old: u64, new: u64) {
    img[at..at + 8].copy_from_slice(&old.to_le_bytes());
    img[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
}

pub fn record_from(img: &[u8], at: usize) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(img[i..i + 8].try_into().unwrap());
    (word(at), word(at + 8))
}

/// A valid store of `chunks` chunks holding `list` (k-th record in place k), all else zero.
pub fn store_image(l: Layout, chunks: u64, list: &[(u64, u64)]) -> Vec<u8> {
    let mut img = vec![0u8; (chunks * l.bytes()) as usize];
    put_header(&mut img, SNAP, 1, 1, l.cs as u32);
    for (k, &(old, new)) in (0u64..).zip(list) {
        put_record_at(&mut img, l.kth_record_at(k), old, new);
    }
    img
}

/// `n` records as the store allocates them, origin chunks `old(k)`.
pub fn in_order(l: Layout, n: u64, old: impl Fn(u64) -> u64) -> Vec<(u64, u64)> {
    (0..n).map(|k| (old(k), l.kth(k))).collect()
}

/// Data chunk `new` of a store image filled with a recognisable pattern.
pub fn fill_chunk(img: &mut [u8], l: Layout, new: u64, tag: u8) {
    let at = (new * l.bytes()) as usize;
    for (i, b) in img[at..at + l.bytes() as usize].iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
}

// ----- volumes over watched devices -----------------------------------------------------------

/// One snapshot to attach: a name and a COW image.
pub struct CowSpec {
    pub name: String,
    pub image: Vec<u8>,
    pub block_bytes: u32,
    pub kind: StoreKind,
    pub chunk_sectors: u64,
}

impl CowSpec {
    pub fn p(name: &str, image: Vec<u8>) -> CowSpec {
        CowSpec {
            name: name.to_string(),
            image,
            block_bytes: 512,
            kind: P,
            chunk_sectors: 0,
        }
    }

    pub fn chunk(mut self, sectors: u64) -> CowSpec {
        self.chunk_sectors = sectors;
        self
    }

    pub fn kind(mut self, kind: StoreKind) -> CowSpec {
        self.kind = kind;
        self
    }

    pub fn block(mut self, bytes: u32) -> CowSpec {
        self.block_bytes = bytes;
        self
    }
}

/// An origin and COWs on [`Watch`] devices, with the images they started from.
pub struct Rig {
    pub origin: Arc<Watch>,
    pub origin_image: Vec<u8>,
    pub cows: Vec<Arc<Watch>>,
    pub cow_images: Vec<Vec<u8>>,
}

impl Rig {
    pub fn new(origin_image: Vec<u8>, origin_block: u32, cows: &[CowSpec]) -> Rig {
        Rig {
            origin: Watch::new("origin", origin_image.clone(), origin_block),
            origin_image,
            cows: cows
                .iter()
                .map(|c| Watch::new(&format!("{}.cow", c.name), c.image.clone(), c.block_bytes))
                .collect(),
            cow_images: cows.iter().map(|c| c.image.clone()).collect(),
        }
    }

    pub fn configs(&self, cows: &[CowSpec]) -> Vec<SnapshotConfig> {
        cows.iter()
            .zip(&self.cows)
            .map(|(c, dev)| SnapshotConfig {
                name: c.name.clone(),
                cow: dev.device(),
                kind: c.kind,
                chunk_sectors: c.chunk_sectors,
                features: Default::default(),
            })
            .collect()
    }

    pub fn open(&self, cows: &[CowSpec], options: VolumeOptions) -> Result<Volume, OpenError> {
        Volume::open(self.origin.device(), self.configs(cows), options)
    }

    /// Fails unless no device was written and every byte is as it started.
    pub fn assert_untouched(&self, ctx: &str) {
        self.origin.assert_untouched(&self.origin_image, ctx);
        for (dev, img) in self.cows.iter().zip(&self.cow_images) {
            dev.assert_untouched(img, ctx);
        }
    }
}

/// Checks a refusal is a clear error: one line, naming what was refused and why.
pub fn assert_clear_error(msg: &str, needles: &[&str], ctx: &str) {
    assert!(!msg.trim().is_empty(), "{ctx}: empty error");
    assert!(
        !msg.contains('\n') && !msg.contains('\r'),
        "{ctx}: error is not one line: {msg:?}"
    );
    for needle in needles {
        assert!(
            msg.contains(needle),
            "{ctx}: {msg:?} should mention {needle:?}"
        );
    }
}

/// Opens a volume expected to be refused; checks the error and that nothing was written.
pub fn expect_refusal(
    origin_image: Vec<u8>,
    origin_block: u32,
    cows: &[CowSpec],
    needles: &[&str],
    ctx: &str,
) {
    let rig = Rig::new(origin_image, origin_block, cows);
    match rig.open(cows, VolumeOptions::default()) {
        Ok(v) => panic!("{ctx}: accepted: {}", dm_lines(&v)),
        Err(e) => assert_clear_error(&e.to_string(), needles, ctx),
    }
    rig.assert_untouched(ctx);
}
