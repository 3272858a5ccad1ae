//! Helpers for the hostile-input tests and the fuzzer: COW images built byte by byte (see
//! docs/format.md), a device that counts every write, a seeded generator, and the checks every
//! refused load must pass (a clear one-line error, no byte written).
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

#[path = "../common/format.rs"]
mod format;

pub use format::*;
use parking_lot::RwLock;
use snapfs::device::{BlockDevice, Device};
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{OpenError, SnapshotConfig, Volume, VolumeOptions};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const SECTOR: u64 = 512;
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
