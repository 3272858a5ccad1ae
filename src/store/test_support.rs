//! What the store unit tests share (persistent: `persistent_tests/`, transient:
//! `transient_tests.rs`): the format's geometry recomputed from the format document's formulas,
//! hand-written COW images, devices that record or sprawl, and store helpers that use only the
//! `ExceptionStore` interface.
//!
//! COW images are built with `put_header` / `put_record`, which write the bytes of the format
//! document (sections 2.2 and 2.4) directly, never with the encoder under test; the geometry
//! helpers recompute the layout from the document's formulas for the same reason.

use super::{ExceptionStore, Loaded, OriginGeometry, StoreError};
use crate::device::{BlockDevice, DeviceHooks, MemDevice, Wrapped};
use parking_lot::Mutex;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// Geometry, from the format document's formulas (2.1, 2.4, 2.6).

pub(crate) const SECTOR: u64 = 512;
/// The worked example's COW: 204800 sectors (100 MiB).
pub(crate) const COW_204800: u64 = 204_800 * SECTOR;
/// An origin big enough for every old chunk used here (2^50 bytes).
pub(crate) const BIG_ORIGIN: u64 = 1 << 50;
/// `"SnAp"` as the little-endian u32 at offset 0 of the header.
pub(crate) const SNAP: u32 = u32::from_le_bytes(*b"SnAp");

/// Bytes 0..16 of a header chunk as the format document spells them (2.2), byte by byte: the
/// magic "SnAp", `valid`, version 1 and the chunk size in sectors, each a little-endian u32.
pub(crate) fn header_bytes(valid: u8, chunk_sectors: u8) -> [u8; 16] {
    #[rustfmt::skip]
    let bytes = [
        0x53, 0x6e, 0x41, 0x70,          // magic "SnAp"
        valid, 0x00, 0x00, 0x00,         // valid
        0x01, 0x00, 0x00, 0x00,          // version = 1
        chunk_sectors, 0x00, 0x00, 0x00, // chunk size in sectors
    ];
    bytes
}

pub(crate) fn chunk_bytes(cs: u64) -> u64 {
    cs * SECTOR
}

/// `E`: records per area.
pub(crate) fn per_area(cs: u64) -> u64 {
    chunk_bytes(cs) / 16
}

/// Chunk of metadata area `n`: `1 + n * (E + 1)`.
pub(crate) fn area_at(cs: u64, n: u64) -> u64 {
    1 + n * (per_area(cs) + 1)
}

/// Byte offset of record `i` of area `n`: `(1 + n*(E+1)) * B + 16*i`.
pub(crate) fn record_offset(cs: u64, n: u64, i: u64) -> u64 {
    area_at(cs, n) * chunk_bytes(cs) + 16 * i
}

/// COW chunk of the k-th exception (k from 0) when everything is committed in order.
pub(crate) fn kth_chunk(cs: u64, k: u64) -> u64 {
    2 + k + k / per_area(cs)
}

// ------------------------------------------------------------------------------------------------
// Hand-written images.

/// Writes the 16 header bytes at offset 0.
pub(crate) fn put_header(img: &mut [u8], magic: u32, valid: u32, version: u32, chunk_sectors: u32) {
    img[0..4].copy_from_slice(&magic.to_le_bytes()); // magic, u32 LE ("SnAp" = 53 6e 41 70)
    img[4..8].copy_from_slice(&valid.to_le_bytes()); // valid, u32 LE (0 = invalidated)
    img[8..12].copy_from_slice(&version.to_le_bytes()); // version, u32 LE (1)
    img[12..16].copy_from_slice(&chunk_sectors.to_le_bytes()); // chunk size in sectors, u32 LE
}

/// Writes record `i` of area `n`.
pub(crate) fn put_record(img: &mut [u8], cs: u64, n: u64, i: u64, old: u64, new: u64) {
    let at = record_offset(cs, n, i) as usize;
    img[at..at + 8].copy_from_slice(&old.to_le_bytes()); // old_chunk: origin chunk, u64 LE
    img[at + 8..at + 16].copy_from_slice(&new.to_le_bytes()); // new_chunk: COW chunk, u64 LE
}

/// Reads record `at` (a byte offset) back as `(old, new)`.
pub(crate) fn record_in(bytes: &[u8], at: u64) -> (u64, u64) {
    let at = at as usize;
    let old = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let new = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
    (old, new)
}

/// A valid store of `chunks` chunks of `cs` sectors holding `list`, laid out E records per area
/// in order; everything else is zero (so the list ends with a terminator or an empty area).
pub(crate) fn store_image(cs: u64, chunks: u64, list: &[(u64, u64)]) -> Vec<u8> {
    let mut img = vec![0u8; (chunks * chunk_bytes(cs)) as usize];
    put_header(&mut img, SNAP, 1, 1, cs as u32);
    for (k, &(old, new)) in (0u64..).zip(list) {
        put_record(&mut img, cs, k / per_area(cs), k % per_area(cs), old, new);
    }
    img
}

/// A valid store image with one record in area 0.
pub(crate) fn one_record_image(cs: u64, chunks: u64, old: u64, new: u64) -> Vec<u8> {
    store_image(cs, chunks, &[(old, new)])
}

/// A list of `n` records as the store writes them: new chunks in allocation order.
pub(crate) fn in_order_list(cs: u64, n: u64, old: impl Fn(u64) -> u64) -> Vec<(u64, u64)> {
    (0..n).map(|k| (old(k), kth_chunk(cs, k))).collect()
}

// ------------------------------------------------------------------------------------------------
// Devices.

/// One device operation, as seen by `Recorder`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Write { offset: u64, len: u64, zeroes: bool },
    Flush,
}

pub(crate) fn write_op(offset: u64, len: u64, zeroes: bool) -> Op {
    Op::Write {
        offset,
        len,
        zeroes,
    }
}

/// A memory device that logs its writes and flushes, to check what the store writes and in
/// which order. Flushes are only logged: a memory device is durable at once.
pub(crate) type Recorder = Wrapped<MemDevice, OpLog>;

/// The log of a [`Recorder`]; a discard is logged (and done) as a write of zeroes.
#[derive(Default)]
pub(crate) struct OpLog(Mutex<Vec<Op>>);

impl OpLog {
    pub(crate) fn take_ops(&self) -> Vec<Op> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl DeviceHooks<MemDevice> for OpLog {
    fn write_at(&self, mem: &MemDevice, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let zeroes = buf.iter().all(|&b| b == 0);
        self.0
            .lock()
            .push(write_op(offset, buf.len() as u64, zeroes));
        mem.write_at(buf, offset)
    }
    fn flush(&self, _: &MemDevice) -> std::io::Result<()> {
        self.0.lock().push(Op::Flush);
        Ok(())
    }
    fn discard(&self, mem: &MemDevice, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(mem, offset, len)
    }
    fn write_zeroes(&self, mem: &MemDevice, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.lock().push(write_op(offset, len, true));
        mem.write_zeroes(offset, len)
    }
}

impl Recorder {
    pub(crate) fn new(img: Vec<u8>) -> Arc<Recorder> {
        let mem = MemDevice::from_bytes("recorder", img, 512);
        Arc::new(Wrapped::around(Arc::new(mem), OpLog::default()))
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        self.inner.contents()
    }
}

/// A device that grows when written past its end, as a regular file does under `pwrite`: the
/// store must never write there (FileDevice refuses such writes, but the store does not count
/// on it). A write past the end shows as a larger size.
pub(crate) type Sprawling = Wrapped<MemDevice, Sprawl>;

/// The hook of a [`Sprawling`] device.
pub(crate) struct Sprawl;

impl DeviceHooks<MemDevice> for Sprawl {
    fn write_at(&self, mem: &MemDevice, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > mem.size_bytes() {
            mem.resize(end);
        }
        mem.write_at(buf, offset)
    }
}

pub(crate) fn mem(img: Vec<u8>) -> Arc<MemDevice> {
    Arc::new(MemDevice::from_bytes("cow", img, 512))
}

pub(crate) fn read_bytes(dev: &dyn BlockDevice, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    dev.read_at(&mut buf, offset).unwrap();
    buf
}

pub(crate) fn all_bytes(bytes: &[u8], value: u8) -> bool {
    bytes.iter().all(|&b| b == value)
}

/// Record `i` of area `n` as it is on the device.
pub(crate) fn record_on(dev: &dyn BlockDevice, cs: u64, n: u64, i: u64) -> (u64, u64) {
    record_in(&read_bytes(dev, record_offset(cs, n, i), 16), 0)
}

/// A whole chunk of the device.
pub(crate) fn chunk_on(dev: &dyn BlockDevice, cs: u64, c: u64) -> Vec<u8> {
    read_bytes(dev, c * chunk_bytes(cs), chunk_bytes(cs))
}

// ------------------------------------------------------------------------------------------------
// Store helpers.

pub(crate) fn geometry(size_bytes: u64) -> OriginGeometry {
    OriginGeometry {
        size_bytes,
        block_bytes: 512,
    }
}

pub(crate) fn valid_list(loaded: Result<Loaded, StoreError>) -> Vec<(u64, u64)> {
    match loaded {
        Ok(Loaded::Valid(list)) => list,
        other => panic!("expected a valid store, got {other:?}"),
    }
}

/// Prepares and commits one batch; returns the new chunks.
pub(crate) fn commit(st: &dyn ExceptionStore, olds: &[u64]) -> Vec<u64> {
    let p = st.prepare_exceptions(olds.len()).unwrap();
    let chunks = p.new_chunks.clone();
    st.commit_exceptions(p, olds, true).unwrap();
    chunks
}

/// Commits `olds` in batches of 1, 2, .., 13, 1, 2, ..; returns the records in order.
pub(crate) fn commit_many(st: &dyn ExceptionStore, olds: &[u64]) -> Vec<(u64, u64)> {
    let mut list = Vec::new();
    let mut at = 0;
    let mut size = 1;
    while at < olds.len() {
        let end = (at + size).min(olds.len());
        let news = commit(st, &olds[at..end]);
        list.extend(olds[at..end].iter().copied().zip(news));
        at = end;
        size = size % 13 + 1;
    }
    list
}

pub(crate) fn usage(st: &dyn ExceptionStore) -> String {
    st.usage().to_string()
}

pub(crate) fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}
