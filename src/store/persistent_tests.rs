//! Unit tests of the persistent store (hand-written COW images, field by field), and of the
//! transient store at the end.
//!
//! COW images are built with `put_header` / `put_record`, which write the bytes of the format
//! document (sections 2.2 and 2.4) directly, never with the encoder under test; the geometry
//! helpers below recompute the layout from the document's formulas for the same reason.
//!
//! Sections: geometry, images, devices, store helpers, then the tests in the order of the format
//! document: new store, allocation and placement, reload, area zeroing, commit order and
//! grouping, rejections, header and invalidation, failures, ENOSPC, merge, the merge marker,
//! transient store, crashes, and finally the tests that show known bugs (they fail until the
//! store is fixed).

use super::*;
use crate::device::{BlockDevice, CrashMode, MemDevice, SimDevice, SimWorld};
use crate::store::TransientStore;
use crate::units::ChunkSizeError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------------------
// Geometry, from the format document's formulas (2.1, 2.4, 2.6).

const SECTOR: u64 = 512;
/// The worked example's COW: 204800 sectors (100 MiB).
const COW_204800: u64 = 204_800 * SECTOR;
/// An origin big enough for every old chunk used here (2^50 bytes).
const BIG_ORIGIN: u64 = 1 << 50;
/// `"SnAp"` as the little-endian u32 at offset 0 of the header.
const SNAP: u32 = u32::from_le_bytes(*b"SnAp");

fn chunk_bytes(cs: u64) -> u64 {
    cs * SECTOR
}

/// `E`: records per area.
fn per_area(cs: u64) -> u64 {
    chunk_bytes(cs) / 16
}

/// Chunk of metadata area `n`: `1 + n * (E + 1)`.
fn area_at(cs: u64, n: u64) -> u64 {
    1 + n * (per_area(cs) + 1)
}

/// Byte offset of record `i` of area `n`: `(1 + n*(E+1)) * B + 16*i`.
fn record_offset(cs: u64, n: u64, i: u64) -> u64 {
    area_at(cs, n) * chunk_bytes(cs) + 16 * i
}

/// COW chunk of the k-th exception (k from 0) when everything is committed in order.
fn kth_chunk(cs: u64, k: u64) -> u64 {
    2 + k + k / per_area(cs)
}

// ------------------------------------------------------------------------------------------------
// Hand-written images.

/// Writes the 16 header bytes at offset 0.
fn put_header(img: &mut [u8], magic: u32, valid: u32, version: u32, chunk_sectors: u32) {
    img[0..4].copy_from_slice(&magic.to_le_bytes()); // magic, u32 LE ("SnAp" = 53 6e 41 70)
    img[4..8].copy_from_slice(&valid.to_le_bytes()); // valid, u32 LE (0 = invalidated)
    img[8..12].copy_from_slice(&version.to_le_bytes()); // version, u32 LE (1)
    img[12..16].copy_from_slice(&chunk_sectors.to_le_bytes()); // chunk size in sectors, u32 LE
}

/// Writes record `i` of area `n`.
fn put_record(img: &mut [u8], cs: u64, n: u64, i: u64, old: u64, new: u64) {
    let at = record_offset(cs, n, i) as usize;
    img[at..at + 8].copy_from_slice(&old.to_le_bytes()); // old_chunk: origin chunk, u64 LE
    img[at + 8..at + 16].copy_from_slice(&new.to_le_bytes()); // new_chunk: COW chunk, u64 LE
}

/// Reads record `at` (a byte offset) back as `(old, new)`.
fn record_in(bytes: &[u8], at: u64) -> (u64, u64) {
    let at = at as usize;
    let old = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
    let new = u64::from_le_bytes(bytes[at + 8..at + 16].try_into().unwrap());
    (old, new)
}

/// A valid store of `chunks` chunks of `cs` sectors holding `list`, laid out E records per area
/// in order; everything else is zero (so the list ends with a terminator or an empty area).
fn store_image(cs: u64, chunks: u64, list: &[(u64, u64)]) -> Vec<u8> {
    let mut img = vec![0u8; (chunks * chunk_bytes(cs)) as usize];
    put_header(&mut img, SNAP, 1, 1, cs as u32);
    for (k, &(old, new)) in (0u64..).zip(list) {
        put_record(&mut img, cs, k / per_area(cs), k % per_area(cs), old, new);
    }
    img
}

/// A valid store image with one record in area 0.
fn one_record_image(cs: u64, chunks: u64, old: u64, new: u64) -> Vec<u8> {
    store_image(cs, chunks, &[(old, new)])
}

/// A list of `n` records as the store writes them: new chunks in allocation order.
fn in_order_list(cs: u64, n: u64, old: impl Fn(u64) -> u64) -> Vec<(u64, u64)> {
    (0..n).map(|k| (old(k), kth_chunk(cs, k))).collect()
}

// ------------------------------------------------------------------------------------------------
// Devices.

/// One device operation, as seen by `Recorder`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Op {
    Write { offset: u64, len: u64, zeroes: bool },
    Flush,
}

fn write_op(offset: u64, len: u64, zeroes: bool) -> Op {
    Op::Write {
        offset,
        len,
        zeroes,
    }
}

/// A memory device that logs its writes and flushes, to check what the store writes and in
/// which order.
struct Recorder {
    mem: MemDevice,
    ops: Mutex<Vec<Op>>,
}

impl Recorder {
    fn new(img: Vec<u8>) -> Arc<Recorder> {
        Arc::new(Recorder {
            mem: MemDevice::from_bytes("recorder", img, 512),
            ops: Mutex::new(Vec::new()),
        })
    }

    fn take_ops(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock())
    }

    fn contents(&self) -> Vec<u8> {
        self.mem.contents()
    }
}

impl BlockDevice for Recorder {
    fn size_bytes(&self) -> u64 {
        self.mem.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.mem.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let zeroes = buf.iter().all(|&b| b == 0);
        self.ops
            .lock()
            .push(write_op(offset, buf.len() as u64, zeroes));
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.ops.lock().push(Op::Flush);
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.write_zeroes(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.ops.lock().push(write_op(offset, len, true));
        self.mem.write_zeroes(offset, len)
    }
    fn name(&self) -> String {
        "recorder".to_string()
    }
}

/// A device that grows when written past its end, as a regular file does under `pwrite`: the
/// store must never write there (FileDevice refuses such writes, but the store does not count
/// on it). A write past the end shows as a larger size.
struct Sprawling(MemDevice);

impl BlockDevice for Sprawling {
    fn size_bytes(&self) -> u64 {
        self.0.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.0.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        let end = offset + buf.len() as u64;
        if end > self.0.size_bytes() {
            self.0.resize(end);
        }
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.0.write_zeroes(offset, len)
    }
    fn name(&self) -> String {
        self.0.name()
    }
}

fn mem(img: Vec<u8>) -> Arc<MemDevice> {
    Arc::new(MemDevice::from_bytes("cow", img, 512))
}

fn read_bytes(dev: &dyn BlockDevice, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    dev.read_at(&mut buf, offset).unwrap();
    buf
}

fn all_bytes(bytes: &[u8], value: u8) -> bool {
    bytes.iter().all(|&b| b == value)
}

/// Record `i` of area `n` as it is on the device.
fn record_on(dev: &dyn BlockDevice, cs: u64, n: u64, i: u64) -> (u64, u64) {
    record_in(&read_bytes(dev, record_offset(cs, n, i), 16), 0)
}

/// A whole chunk of the device.
fn chunk_on(dev: &dyn BlockDevice, cs: u64, c: u64) -> Vec<u8> {
    read_bytes(dev, c * chunk_bytes(cs), chunk_bytes(cs))
}

// ------------------------------------------------------------------------------------------------
// Store helpers.

fn geometry(size_bytes: u64) -> OriginGeometry {
    OriginGeometry {
        size_bytes,
        block_bytes: 512,
    }
}

fn persistent(dev: Device, requested_sectors: u64) -> PersistentStore {
    PersistentStore::new(dev, false, requested_sectors, geometry(BIG_ORIGIN), false)
}

fn valid_list(loaded: Result<Loaded, StoreError>) -> Vec<(u64, u64)> {
    match loaded {
        Ok(Loaded::Valid(list)) => list,
        other => panic!("expected a valid store, got {other:?}"),
    }
}

/// A store on `dev` after `read_metadata`, and the list it loaded.
fn open(dev: Device, requested_sectors: u64) -> (PersistentStore, Vec<(u64, u64)>) {
    let mut st = persistent(dev, requested_sectors);
    let list = valid_list(st.read_metadata());
    (st, list)
}

/// A new store on a COW whose first four bytes are zero: loaded and initialised.
fn format(dev: Device, cs: u64) -> PersistentStore {
    let (mut st, list) = open(dev, cs);
    assert!(list.is_empty());
    assert_eq!(st.chunk_size().sectors(), cs);
    st.initialise().unwrap();
    st
}

/// Prepares and commits one batch; returns the new chunks.
fn commit(st: &dyn ExceptionStore, olds: &[u64]) -> Vec<u64> {
    let p = st.prepare_exceptions(olds.len()).unwrap();
    let chunks = p.new_chunks.clone();
    st.commit_exceptions(p, olds, true).unwrap();
    chunks
}

/// Commits `olds` in batches of 1, 2, .., 13, 1, 2, ..; returns the records in order.
fn commit_many(st: &dyn ExceptionStore, olds: &[u64]) -> Vec<(u64, u64)> {
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

fn usage(st: &dyn ExceptionStore) -> String {
    st.usage().to_string()
}

fn next_free(st: &PersistentStore) -> u64 {
    st.state.lock().next_free
}

fn current_area(st: &PersistentStore) -> u64 {
    st.state.lock().current_area
}

fn ready_batches(st: &PersistentStore) -> usize {
    st.state.lock().queued.len()
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

// ------------------------------------------------------------------------------------------------
// New store (format document 2.3).

#[test]
fn new_store_is_accepted_without_writing_then_initialise_writes_header_and_area_0() {
    let mut img = vec![0u8; COW_204800 as usize];
    // Stale bytes everywhere in the first chunks but the magic: a new store is told by the
    // first four bytes only.
    img[4..3 * 4096].fill(0xA5);
    let dev = Recorder::new(img);
    let before = read_bytes(&*dev, 0, 3 * 4096);

    let (mut st, list) = open(dev.clone(), 8);
    assert!(list.is_empty());
    assert_eq!(dev.take_ops(), [], "read_metadata writes nothing");
    assert_eq!(read_bytes(&*dev, 0, 3 * 4096), before);
    assert_eq!(st.kind(), StoreKind::Persistent { overflow: false });
    assert_eq!(st.chunk_size().sectors(), 8);

    st.initialise().unwrap();
    let mut ops = dev.take_ops();
    assert_eq!(ops.last(), Some(&Op::Flush), "initialise ends durable");
    ops.retain(|op| *op != Op::Flush);
    ops.sort_by_key(|op| match op {
        Op::Write { offset, .. } => *offset,
        Op::Flush => 0,
    });
    assert_eq!(
        ops,
        [write_op(0, 4096, false), write_op(4096, 4096, true)],
        "exactly the header chunk and area 0"
    );
    let header = chunk_on(&*dev, 8, 0);
    #[rustfmt::skip]
    let expected: [u8; 16] = [
        0x53, 0x6e, 0x41, 0x70, // magic "SnAp"
        0x01, 0x00, 0x00, 0x00, // valid = 1
        0x01, 0x00, 0x00, 0x00, // version = 1
        0x08, 0x00, 0x00, 0x00, // chunk size = 8 sectors
    ];
    assert_eq!(&header[..16], &expected);
    assert!(
        all_bytes(&header[16..], 0),
        "rest of the header chunk is zero"
    );
    assert!(all_bytes(&chunk_on(&*dev, 8, 1), 0), "area 0 is zero");
    assert!(
        all_bytes(&chunk_on(&*dev, 8, 2), 0xA5),
        "data chunks are not zeroed"
    );
    assert_eq!(usage(&st), "16/204800 16");

    st.initialise().unwrap();
    assert_eq!(dev.take_ops(), [], "a second initialise is a no-op");
}

#[test]
fn new_store_default_chunk_size_is_16k_or_the_cow_block() {
    // 0 requested: max(32, logical block size / 512) sectors.
    let (mut st, _) = open(mem(vec![0; 3 * 16384]), 0);
    assert_eq!(st.chunk_size().sectors(), 32);
    st.initialise().unwrap();
    let dev = Arc::new(MemDevice::with_block_size("cow", 3 * 32768, 32768));
    let (mut big, _) = open(dev.clone(), 0);
    assert_eq!(big.chunk_size().sectors(), 64);
    big.initialise().unwrap();
    assert_eq!(
        &read_bytes(&*dev, 12, 4),
        &[64, 0, 0, 0],
        "header chunk size field"
    );
    assert_eq!(big.usage().to_string(), "128/192 128");
}

#[test]
fn initialise_is_a_noop_for_an_existing_store() {
    let dev = Recorder::new(one_record_image(8, 16, 7, 2));
    let (mut st, list) = open(dev.clone(), 8);
    assert_eq!(list, [(7, 2)]);
    st.initialise().unwrap();
    assert_eq!(dev.take_ops(), []);
}

#[test]
fn loads_a_hand_written_image_and_keeps_what_follows_the_terminator_dead() {
    // cs = 1 sector: B = 512, E = 32; a COW of 8 chunks.
    let mut img = vec![0u8; 8 * 512];
    #[rustfmt::skip]
    let header: [u8; 16] = [
        0x53, 0x6e, 0x41, 0x70, // magic "SnAp"
        0x01, 0x00, 0x00, 0x00, // valid = 1
        0x01, 0x00, 0x00, 0x00, // version = 1
        0x01, 0x00, 0x00, 0x00, // chunk size = 1 sector
    ];
    #[rustfmt::skip]
    let area0: [u8; 64] = [
        // record 0: origin chunk 0x1234 -> COW chunk 2
        0x34, 0x12, 0, 0, 0, 0, 0, 0,    0x02, 0, 0, 0, 0, 0, 0, 0,
        // record 1: origin chunk 0 (a valid origin chunk) -> COW chunk 5
        0, 0, 0, 0, 0, 0, 0, 0,          0x05, 0, 0, 0, 0, 0, 0, 0,
        // record 2: new_chunk 0 ends the list (old_chunk is not looked at)
        0xff, 0xff, 0, 0, 0, 0, 0, 0,    0, 0, 0, 0, 0, 0, 0, 0,
        // record 3: garbage after the terminator, ignored (it would be refused if read)
        0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
        0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77, 0x77,
    ];
    img[..16].copy_from_slice(&header);
    img[512..576].copy_from_slice(&area0);
    let dev = mem(img);
    let (st, list) = open(dev.clone(), 0);
    assert_eq!(list, [(0x1234, 2), (0, 5)]);
    assert_eq!(st.chunk_size().sectors(), 1);
    // next_free = max(new) + 1 = 6: allocated 6 sectors of 8, metadata header + area 0.
    assert_eq!(usage(&st), "6/8 2");

    assert_eq!(commit(&st, &[9]), [6]);
    #[rustfmt::skip]
    let expected: [u8; 32] = [
        // record 2: origin chunk 9 -> COW chunk 6
        0x09, 0, 0, 0, 0, 0, 0, 0,       0x06, 0, 0, 0, 0, 0, 0, 0,
        // record 3: the stale bytes were not written back: a terminator
        0, 0, 0, 0, 0, 0, 0, 0,          0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(read_bytes(&*dev, 512 + 32, 32), expected);
    assert_eq!(open(dev, 0).1, [(0x1234, 2), (0, 5), (9, 6)]);
}

// ------------------------------------------------------------------------------------------------
// Allocation, placement and usage (2.4, 2.6, 5.1, 10).

#[test]
fn worked_example_cs8_usage_and_bytes() {
    let dev = Arc::new(MemDevice::new("cow", COW_204800));
    // Stale bytes in area 1 (chunk 258): it must be zeroed when area 0 fills.
    dev.write_at(&[0xEE; 4096], 258 * 4096).unwrap();
    let st = format(dev.clone(), 8);
    assert_eq!(usage(&st), "16/204800 16");

    assert_eq!(commit(&st, &[0x1234]), [2]);
    assert_eq!(commit(&st, &[1, 2]), [3, 4]);
    assert_eq!(usage(&st), "40/204800 16", "next_free 5");
    #[rustfmt::skip]
    let expected: [u8; 32] = [
        // 0x1000: record 0 of area 0, origin chunk 0x1234 saved in COW chunk 2
        0x34, 0x12, 0, 0, 0, 0, 0, 0,    0x02, 0, 0, 0, 0, 0, 0, 0,
        // 0x1010: record 1, origin chunk 1 in COW chunk 3
        0x01, 0, 0, 0, 0, 0, 0, 0,       0x03, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(read_bytes(&*dev, 0x1000, 32), expected);

    let olds: Vec<u64> = (3..256).map(|k| 100 + k).collect();
    commit_many(&st, &olds);
    // 256 exceptions: next_free skipped 258 -> 259, area 1 zeroed, current_area 1.
    assert_eq!(usage(&st), "2072/204800 24");
    assert_eq!(next_free(&st), 259);
    assert_eq!(current_area(&st), 1);
    assert!(all_bytes(&chunk_on(&*dev, 8, 258), 0), "area 1 zeroed");
    assert_eq!(
        record_on(&*dev, 8, 0, 255),
        (355, 257),
        "last data chunk of area 0"
    );

    // The 257th exception: origin chunk 2^32 in COW chunk 259, record 0 of area 1.
    assert_eq!(commit(&st, &[1 << 32]), [259]);
    #[rustfmt::skip]
    let expected: [u8; 16] = [
        0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, // old_chunk = 2^32
        0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // new_chunk = 259
    ];
    assert_eq!(read_bytes(&*dev, 0x102000, 16), expected);
    assert_eq!(usage(&st), "2080/204800 24");
}

/// Commits `n` exceptions with chunk size `cs` and checks where each one lands.
fn check_placement(cs: u64, n: u64) {
    let e = per_area(cs);
    let chunks = kth_chunk(cs, n) + 2;
    let dev = mem(vec![0; (chunks * chunk_bytes(cs)) as usize]);
    let st = format(dev.clone(), cs);
    let olds: Vec<u64> = (0..n).map(|k| 3 * k + 1).collect();
    let list = commit_many(&st, &olds);
    for (k, &(old, new)) in (0u64..).zip(&list) {
        assert_eq!(new, 2 + k + k / e, "cs {cs}: exception {k}");
        assert_eq!(old, 3 * k + 1);
        assert_eq!(
            record_on(&*dev, cs, k / e, k % e),
            (old, new),
            "cs {cs}: record {k}"
        );
    }
    // Every full area's successor starts with a terminator (or more records).
    assert_eq!(current_area(&st), n / e);
    assert_eq!(record_on(&*dev, cs, n / e, n % e), (0, 0), "terminator");
}

#[test]
fn kth_exception_lands_at_2_plus_k_plus_k_div_e() {
    check_placement(8, 700);
    check_placement(1, 300);
    check_placement(1, 64);
    check_placement(16, 513);
}

// ------------------------------------------------------------------------------------------------
// Reload (2.5), including CVE-2013-4299.

/// Commits `n`, reopens, checks list, usage and where allocation continues; then commits more
/// and reopens again (the partial area must have been carried into the working buffer).
fn check_reload(cs: u64, n: u64) {
    let more = 40;
    let chunks = kth_chunk(cs, n + more) + 2;
    let dev = mem(vec![0; (chunks * chunk_bytes(cs)) as usize]);
    let olds: Vec<u64> = (0..n + more).map(|k| 5 * k + 2).collect();
    let st = format(dev.clone(), cs);
    let list = commit_many(&st, &olds[..n as usize]);
    let figures = usage(&st);
    drop(st);

    let what = format!("cs {cs}, {n} exceptions");
    let (st, loaded) = open(dev.clone(), cs);
    assert_eq!(loaded, list, "{what}: same records in the same order");
    assert_eq!(usage(&st), figures, "{what}: same usage");
    assert_eq!(current_area(&st), n / per_area(cs), "{what}");
    let added = commit_many(&st, &olds[n as usize..]);
    let expected_new: Vec<u64> = (n..n + more).map(|k| kth_chunk(cs, k)).collect();
    let added_new: Vec<u64> = added.iter().map(|&(_, new)| new).collect();
    assert_eq!(added_new, expected_new, "{what}: allocation continues");
    drop(st);

    let (st, all) = open(dev, 0);
    assert_eq!(all, in_order_list(cs, n + more, |k| 5 * k + 2), "{what}");
    assert_eq!(next_free(&st), kth_chunk(cs, n + more));
}

#[test]
fn reload_returns_the_same_list_and_usage_and_continues() {
    for (cs, n) in [
        (8, 700),
        (8, 512),
        (8, 1),
        (1, 300),
        (1, 32),
        (1, 31),
        (1, 5),
        (1, 0),
    ] {
        check_reload(cs, n);
    }
}

#[test]
fn cve_2013_4299_loaded_next_free_skips_the_area_chunk() {
    // cs = 8: a single record whose new chunk is 257, the last data chunk before area 1.
    let dev = mem(one_record_image(8, 300, 42, 257));
    let (st, list) = open(dev.clone(), 8);
    assert_eq!(list, [(42, 257)]);
    assert_eq!(next_free(&st), 259, "258 is area 1");
    assert_eq!(usage(&st), "2072/2400 16");
    assert_eq!(commit(&st, &[43]), [259]);
    assert_eq!(record_on(&*dev, 8, 0, 1), (43, 259));
    assert_eq!(&chunk_on(&*dev, 8, 258), &[0u8; 4096], "area 1 untouched");

    // cs = 1 (E = 32): area 0 exactly full, new chunks 2..=33; area 1 at 34 is empty.
    let list = in_order_list(1, 32, |k| k);
    let dev = mem(store_image(1, 40, &list));
    let (st, loaded) = open(dev.clone(), 1);
    assert_eq!(loaded, list);
    assert_eq!(next_free(&st), 35);
    assert_eq!(current_area(&st), 1);
    assert_eq!(usage(&st), "35/40 3");
    assert_eq!(commit(&st, &[100]), [35]);
    assert_eq!(record_on(&*dev, 1, 1, 0), (100, 35));
}

// ------------------------------------------------------------------------------------------------
// Area N+1 zeroing (3.2 step 5, 3.3).

#[test]
fn filling_an_area_zeroes_the_next_one_and_nothing_else() {
    const CS: u64 = 8;
    let chunks = 800;
    let mut img = vec![0xFF; (chunks * 4096) as usize];
    img[..4].fill(0); // a new store, with garbage everywhere else
    let dev = mem(img);
    let st = format(dev.clone(), CS);
    assert!(all_bytes(&chunk_on(&*dev, CS, 258), 0xFF), "not zeroed yet");

    let olds: Vec<u64> = (0..256).map(|k| 1000 + k).collect();
    let list = commit_many(&st, &olds);
    assert!(all_bytes(&chunk_on(&*dev, CS, 258), 0), "area 1 zeroed");
    assert!(
        all_bytes(&chunk_on(&*dev, CS, 515), 0xFF),
        "area 2 untouched"
    );
    assert!(all_bytes(&chunk_on(&*dev, CS, 2), 0xFF), "no data written");
    drop(st);

    let (st, loaded) = open(dev.clone(), 0);
    assert_eq!(loaded, list, "no stale record read from area 1");
    assert_eq!(commit(&st, &[7]), [259]);
    drop(st);
    assert_eq!(open(dev, 0).1.len(), 257);

    // What the zeroing prevents: a full area 0 followed by a stale area 1 is refused.
    let mut stale = store_image(CS, 300, &in_order_list(CS, 256, |k| k));
    stale[258 * 4096..259 * 4096].fill(0xFF);
    let err = refuse(stale, Opts::default());
    assert_corrupt(&err, "record 0 of area 1");
}

#[test]
fn write_and_flush_order_of_commits() {
    // cs = 1: B = 512, E = 32, area 0 at byte 512, area 1 at chunk 34.
    let dev = Recorder::new(vec![0; 100 * 512]);
    let st = format(dev.clone(), 1);
    dev.take_ops();
    let area0 = 512;
    let area1 = 34 * 512;

    commit(&st, &[1]);
    assert_eq!(
        dev.take_ops(),
        [Op::Flush, write_op(area0, 512, false), Op::Flush],
        "data durable, then the whole area, then durable"
    );
    commit(&st, &(2..32).collect::<Vec<_>>());
    assert_eq!(
        dev.take_ops(),
        [Op::Flush, write_op(area0, 512, false), Op::Flush],
        "a batch is one area write"
    );
    // 31 records so far: 3 more fill area 0 and put 2 records in area 1.
    commit(&st, &[40, 41, 42]);
    assert_eq!(
        dev.take_ops(),
        [
            Op::Flush,
            write_op(area1, 512, true),  // zero area 1 ...
            Op::Flush,                   // ... durably, before
            write_op(area0, 512, false), // area 0 is written full
            Op::Flush,
            write_op(area1, 512, false), // then the records of area 1
            Op::Flush,
        ]
    );
    // Exactly filling area 1 writes no trailing partial area.
    commit(&st, &(50..80).collect::<Vec<_>>());
    let area2 = 67 * 512;
    assert_eq!(
        dev.take_ops(),
        [
            Op::Flush,
            write_op(area2, 512, true),
            Op::Flush,
            write_op(area1, 512, false),
            Op::Flush,
        ]
    );
}

// ------------------------------------------------------------------------------------------------
// Group commit and ordering (3.1-3.3).

/// Batches commit in the order they arrive, as the kernel's do: a batch prepared later never
/// waits for one prepared earlier that has not arrived (a slow copy holds up nobody else).
#[test]
fn batches_commit_in_arrival_order_without_waiting_for_earlier_allocations() {
    let world = SimWorld::new();
    let dev = world.device("cow", 64 * 4096);
    let st = Arc::new(format(dev.clone(), 8));
    let first = st.prepare_exceptions(2).unwrap();
    let second = st.prepare_exceptions(3).unwrap();
    assert_eq!(first.new_chunks, [2, 3]);
    assert_eq!(second.new_chunks, [4, 5, 6]);
    let flushes = world.flush_count();
    // The later batch commits alone, durably, while the earlier one is still being copied. (On
    // its own thread: a store that waited for `first` would never return.)
    let (tx, rx) = mpsc::channel();
    let committer = Arc::clone(&st);
    thread::spawn(move || tx.send(committer.commit_exceptions(second, &[10, 11, 12], true)));
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => result.unwrap(),
        Err(_) => panic!("the later batch waited for the earlier one"),
    }
    assert_eq!(
        world.flush_count() - flushes,
        2,
        "one data flush and one area write with its flush"
    );
    let durable = world.durable_images().remove(0);
    let (_, list) = open(mem(durable), 0);
    assert_eq!(list, [(10, 4), (11, 5), (12, 6)]);
    st.commit_exceptions(first, &[20, 21], true).unwrap();
    let durable = world.durable_images().remove(0);
    let (reloaded, list) = open(mem(durable), 0);
    assert_eq!(list, [(10, 4), (11, 5), (12, 6), (20, 2), (21, 3)]);
    assert_eq!(next_free(&reloaded), 7, "the highest recorded chunk + 1");
}

/// Batches queued while a writer works are written together by the next one, in one group.
#[test]
fn batches_queued_during_a_write_form_one_group() {
    let rec = Recorder::new(vec![0; 64 * 4096]);
    let gate = Arc::new(GatedFlush::new(rec.clone()));
    let st = format(gate.clone(), 8);
    rec.take_ops();
    let batches: Vec<Prepared> = (0..5).map(|_| st.prepare_exceptions(1).unwrap()).collect();
    gate.hold();
    thread::scope(|s| {
        let mut batches = batches.into_iter();
        let first = batches.next().unwrap();
        let writer = s.spawn(|| st.commit_exceptions(first, &[100], true));
        wait_until("the writer in its data flush", || gate.in_flush());
        let others: Vec<_> = batches
            .enumerate()
            .map(|(i, p)| {
                let st = &st;
                s.spawn(move || st.commit_exceptions(p, &[200 + i as u64], true))
            })
            .collect();
        // The writer's own batch stays queued until its data flush completes.
        wait_until("5 queued batches", || ready_batches(&st) == 5);
        gate.release();
        writer.join().unwrap().unwrap();
        for h in others {
            h.join().unwrap().unwrap();
        }
    });
    let area0 = 4096;
    assert_eq!(
        rec.take_ops(),
        [
            Op::Flush,                    // the first batch's data (and the others')
            write_op(area0, 4096, false), // its record
            Op::Flush,                    // durable; covers the other batches' data
            write_op(area0, 4096, false), // the four others, one group, no flush first
            Op::Flush,
        ]
    );
    let (_, list) = open(rec.clone(), 0);
    let mut olds: Vec<u64> = list.iter().map(|&(old, _)| old).collect();
    assert_eq!(olds[0], 100);
    olds.sort_unstable();
    assert_eq!(olds, [100, 200, 201, 202, 203]);
}

/// A recorder whose flushes wait while held.
struct GatedFlush {
    rec: Arc<Recorder>,
    held: parking_lot::Mutex<bool>,
    released: parking_lot::Condvar,
    in_flush: AtomicBool,
}

impl GatedFlush {
    fn new(rec: Arc<Recorder>) -> GatedFlush {
        GatedFlush {
            rec,
            held: parking_lot::Mutex::new(false),
            released: parking_lot::Condvar::new(),
            in_flush: AtomicBool::new(false),
        }
    }
    fn hold(&self) {
        *self.held.lock() = true;
        self.in_flush.store(false, Ordering::SeqCst);
    }
    fn release(&self) {
        *self.held.lock() = false;
        self.released.notify_all();
    }
    fn in_flush(&self) -> bool {
        self.in_flush.load(Ordering::SeqCst)
    }
}

impl BlockDevice for GatedFlush {
    fn size_bytes(&self) -> u64 {
        self.rec.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.rec.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.rec.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.rec.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        let mut held = self.held.lock();
        self.in_flush.store(true, Ordering::SeqCst);
        while *held {
            self.released.wait(&mut held);
        }
        drop(held);
        self.rec.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.rec.discard(offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.rec.write_zeroes(offset, len)
    }
    fn name(&self) -> String {
        "gated".to_string()
    }
}

/// Pipelining: a batch queued while the writer is still before its final flush is covered by
/// that flush, so its own area write goes without a flush first. The order each record sees is
/// unchanged: its data flushed, its area written, flushed.
#[test]
fn a_batch_queued_before_the_writers_final_flush_needs_no_data_flush() {
    let rec = Recorder::new(vec![0; 64 * 4096]);
    let dev = Arc::new(GatedFlush::new(rec.clone()));
    let st = format(dev.clone(), 8);
    rec.take_ops();
    let (a, b) = (
        st.prepare_exceptions(1).unwrap(),
        st.prepare_exceptions(2).unwrap(),
    );
    // Formatting flushed already: only the writer's own flush may count from here.
    dev.hold();
    thread::scope(|s| {
        let writer = s.spawn(|| st.commit_exceptions(a, &[10], true));
        wait_until("the writer in its data flush", || dev.in_flush());
        let second = s.spawn(|| st.commit_exceptions(b, &[20, 21], true));
        // Both: the writer's own batch stays queued until its data flush completes.
        wait_until("the second batch queued", || ready_batches(&st) == 2);
        dev.release();
        writer.join().unwrap().unwrap();
        second.join().unwrap().unwrap();
    });
    let area0 = 4096;
    assert_eq!(
        rec.take_ops(),
        [
            Op::Flush,                    // the first batch's data
            write_op(area0, 4096, false), // its record
            Op::Flush,                    // durable; covers the second batch's data too
            write_op(area0, 4096, false), // the second batch's records
            Op::Flush,
        ]
    );
    let (_, list) = open(rec.clone(), 0);
    assert_eq!(list, [(10, 2), (20, 3), (21, 4)]);
}

#[test]
fn concurrent_prepare_and_commit_record_every_batch_durably() {
    const THREADS: u64 = 8;
    const ROUNDS: u64 = 40;
    let world = SimWorld::new();
    let dev = world.device("cow", 1200 * 512);
    let st = format(dev.clone(), 1);
    let mut committed: Vec<(u64, u64)> = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let st = &st;
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for r in 0..ROUNDS {
                        let n = 1 + (t + r) % 3;
                        let olds: Vec<u64> = (0..n).map(|j| t * 10_000 + r * 10 + j).collect();
                        let p = st.prepare_exceptions(n as usize).unwrap();
                        mine.extend(olds.iter().copied().zip(p.new_chunks.iter().copied()));
                        st.commit_exceptions(p, &olds, true).unwrap();
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    committed.sort_by_key(|&(_, new)| new);
    let total = committed.len() as u64;

    let image = world.durable_images().remove(0);
    let (st, mut list) = open(mem(image), 0);
    list.sort_by_key(|&(_, new)| new);
    assert_eq!(list, committed, "every committed record, durable");
    let news: Vec<u64> = list.iter().map(|&(_, new)| new).collect();
    let expected: Vec<u64> = (0..total).map(|k| kth_chunk(1, k)).collect();
    assert_eq!(
        news, expected,
        "a gap-free prefix of the allocation sequence"
    );
    assert_eq!(next_free(&st), kth_chunk(1, total));
}

/// `prepare_exceptions(0)` returns a batch whose `first_seq` is the next batch's too (batch ids
/// are first sequence numbers). An empty batch must never enter the queue, or it could take the
/// other batch's outcome, or its place, and leave that batch's committer waiting forever.
#[test]
fn empty_batch_shares_no_state_with_the_batch_that_has_its_id() {
    let rec = Recorder::new(vec![0; 16 * 4096]);
    let gate = Arc::new(GatedFlush::new(rec.clone()));
    let st = Arc::new(format(gate.clone(), 8));
    let a = st.prepare_exceptions(1).unwrap();
    let empty = st.prepare_exceptions(0).unwrap();
    let b = st.prepare_exceptions(1).unwrap();
    assert_eq!((a.first_seq, empty.first_seq, b.first_seq), (0, 1, 1));
    assert!(empty.new_chunks.is_empty());

    gate.hold();
    let (tx, rx) = mpsc::channel();
    let committer = Arc::clone(&st);
    thread::spawn(move || tx.send(committer.commit_exceptions(b, &[2], true)));
    wait_until("batch b in its writer's flush", || gate.in_flush());
    assert!(st.commit_exceptions(empty, &[], true).is_ok());
    assert_eq!(
        ready_batches(&st),
        1,
        "only b is queued: the empty batch never was"
    );
    gate.release();
    st.commit_exceptions(a, &[1], true).unwrap();
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(result) => assert!(result.is_ok()),
        Err(_) => panic!("batch b was never committed: its committer is stuck"),
    }
    assert_eq!(open(st.cow.clone(), 0).1, [(2, 3), (1, 2)]);
}

// ------------------------------------------------------------------------------------------------
// Rejections on load (9). Each refusal must leave the device untouched.

#[derive(Clone, Copy)]
struct Opts {
    cow_block_bytes: u32,
    origin: OriginGeometry,
    requested: u64,
    read_only: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            cow_block_bytes: 512,
            origin: geometry(BIG_ORIGIN),
            requested: 0,
            read_only: false,
        }
    }
}

/// Opens a store on `img`, expects `read_metadata` to fail, checks nothing was written.
fn refuse(img: Vec<u8>, opts: Opts) -> StoreError {
    let dev = Arc::new(MemDevice::from_bytes(
        "cow",
        img.clone(),
        opts.cow_block_bytes,
    ));
    let mut st = PersistentStore::new(
        dev.clone(),
        false,
        opts.requested,
        opts.origin,
        opts.read_only,
    );
    let err = match st.read_metadata() {
        Ok(loaded) => panic!("accepted: {loaded:?}"),
        Err(e) => e,
    };
    assert!(
        dev.contents() == img,
        "a refused COW is not written ({err})"
    );
    err
}

fn assert_corrupt(err: &StoreError, needle: &str) {
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
}

/// A header with the given fields over a zero COW of `chunks` chunks of 8 sectors.
fn header_image(magic: u32, valid: u32, version: u32, chunk_sectors: u32) -> Vec<u8> {
    let mut img = vec![0u8; 300 * 4096];
    put_header(&mut img, magic, valid, version, chunk_sectors);
    img
}

#[test]
fn refuses_bad_magic_and_version() {
    let err = refuse(header_image(0x1234_5678, 1, 1, 8), Opts::default());
    assert_corrupt(&err, "no snapshot header (magic 0x12345678");
    // "SnAP": one bit off.
    let err = refuse(
        header_image(u32::from_le_bytes(*b"SnAP"), 1, 1, 8),
        Opts::default(),
    );
    assert_corrupt(&err, "no snapshot header");
    let err = refuse(header_image(SNAP, 1, 2, 8), Opts::default());
    assert_corrupt(&err, "unable to handle snapshot disk version 2");
    // The version is checked before valid.
    let err = refuse(header_image(SNAP, 0, 0, 8), Opts::default());
    assert_corrupt(&err, "disk version 0");
}

#[test]
fn refuses_bad_on_disk_chunk_sizes() {
    for (sectors, needle) in [
        (0, "not set"),
        (3, "not a power of 2 (3 sectors)"),
        (12, "not a power of 2 (12 sectors)"),
        (1 << 22, "too high (4194304 sectors"),
    ] {
        let err = refuse(header_image(SNAP, 1, 1, sectors), Opts::default());
        assert_corrupt(&err, "invalid on-disk chunk size");
        assert_corrupt(&err, needle);
    }
    // 4 sectors = 2048 bytes is not a multiple of a 4096-byte logical block, on either device.
    let cow_4k = Opts {
        cow_block_bytes: 4096,
        ..Opts::default()
    };
    let err = refuse(header_image(SNAP, 1, 1, 4), cow_4k);
    assert_corrupt(
        &err,
        "not a multiple of device blocksize (4 sectors, logical block size 4096",
    );
    let origin_4k = Opts {
        origin: OriginGeometry {
            size_bytes: BIG_ORIGIN,
            block_bytes: 4096,
        },
        ..Opts::default()
    };
    let err = refuse(header_image(SNAP, 1, 1, 4), origin_4k);
    assert_corrupt(&err, "not a multiple of device blocksize");
    // 8 sectors on 4096-byte blocks is fine.
    let dev = Arc::new(MemDevice::from_bytes(
        "cow",
        header_image(SNAP, 1, 1, 8),
        4096,
    ));
    let mut st = PersistentStore::new(dev, false, 0, origin_4k.origin, false);
    assert!(valid_list(st.read_metadata()).is_empty());
}

#[test]
fn refuses_an_invalid_requested_chunk_size() {
    let err = refuse(
        vec![0; 64 * 512],
        Opts {
            requested: 3,
            ..Opts::default()
        },
    );
    assert!(matches!(
        err,
        StoreError::ChunkSize(ChunkSizeError::NotPowerOfTwo(3))
    ));
    assert!(err.to_string().contains("not a power of 2"));
}

#[test]
fn refuses_records_pointing_at_metadata_chunks() {
    // new_chunk 0 is the terminator, so the header cannot be named; area 0 (1) and area 1 (258)
    // can.
    for new in [1, 258] {
        let err = refuse(one_record_image(8, 300, 5, new), Opts::default());
        assert_corrupt(
            &err,
            &format!("record 0 of area 0 (origin chunk 5, COW chunk {new})"),
        );
        assert_corrupt(&err, "points at a metadata chunk");
    }
    // Record 1 of area 0 with cs = 1: area 1 is chunk 34.
    let err = refuse(store_image(1, 40, &[(0, 2), (1, 34)]), Opts::default());
    assert_corrupt(
        &err,
        "record 1 of area 0 (origin chunk 1, COW chunk 34) points at a metadata",
    );
}

#[test]
fn refuses_records_beyond_the_cow_or_the_origin() {
    // COW of 300 chunks: chunk 299 is the last one.
    assert_eq!(open(mem(one_record_image(8, 300, 5, 299)), 0).1, [(5, 299)]);
    let err = refuse(one_record_image(8, 300, 5, 300), Opts::default());
    assert_corrupt(&err, "points beyond the end of the COW");
    // A partial last chunk cannot hold data.
    let mut img = one_record_image(8, 300, 5, 300);
    img.extend_from_slice(&[0; 2048]);
    assert_corrupt(&refuse(img, Opts::default()), "beyond the end of the COW");

    let err = refuse(one_record_image(8, 300, 5, 1 << 56), Opts::default());
    assert_corrupt(&err, "COW chunk beyond 2^56");
    let err = refuse(one_record_image(8, 300, 5, u64::MAX), Opts::default());
    assert_corrupt(&err, "COW chunk beyond 2^56");

    // Origin of 1 MiB = 256 chunks of 4 KiB: 255 is the last origin chunk.
    let small = |size_bytes| Opts {
        origin: geometry(size_bytes),
        ..Opts::default()
    };
    let err = refuse(one_record_image(8, 300, 256, 2), small(1 << 20));
    assert_corrupt(
        &err,
        "origin chunk 256, COW chunk 2) names an origin chunk beyond",
    );
    let accepted = |old, size_bytes| {
        let mut st = PersistentStore::new(
            mem(one_record_image(8, 300, old, 2)),
            false,
            0,
            geometry(size_bytes),
            false,
        );
        valid_list(st.read_metadata())
    };
    assert_eq!(accepted(255, 1 << 20), [(255, 2)]);
    // A partial last origin chunk is still an origin chunk.
    assert_eq!(accepted(256, (1 << 20) + 512), [(256, 2)]);
}

#[test]
fn refuses_duplicate_chunks() {
    let list = [(5, 2), (6, 3), (5, 4)];
    let err = refuse(store_image(8, 300, &list), Opts::default());
    assert_corrupt(&err, "origin chunk 5 appears in two records");
    let list = [(5, 2), (6, 3), (7, 3)];
    let err = refuse(store_image(8, 300, &list), Opts::default());
    assert_corrupt(&err, "COW chunk 3 appears in two records");
    // Across areas (cs = 1, E = 32): record 0 of area 1 repeats origin chunk 0.
    let mut list = in_order_list(1, 33, |k| k);
    list[32].0 = 0;
    let err = refuse(store_image(1, 40, &list), Opts::default());
    assert_corrupt(&err, "origin chunk 0 appears in two records");
}

#[test]
fn refuses_a_full_last_area() {
    // cs = 1, COW of 34 chunks: area 0 full (new 2..=33), area 1 would be chunk 34.
    let img = store_image(1, 34, &in_order_list(1, 32, |k| k));
    let err = refuse(img, Opts::default());
    assert_corrupt(
        &err,
        "metadata area 1 (chunk 34) lies beyond the end of the COW (34 chunks)",
    );
    // One more chunk and it loads.
    let img = store_image(1, 35, &in_order_list(1, 32, |k| k));
    assert_eq!(open(mem(img), 0).1.len(), 32);
}

#[test]
fn refuses_too_small_cows() {
    // New store: 3 chunks needed.
    let opts = Opts {
        requested: 8,
        ..Opts::default()
    };
    let err = refuse(vec![0; 2 * 4096], opts);
    assert_corrupt(&err, "needs at least 3 chunks (12288 bytes)");
    let err = refuse(vec![0; 3 * 4096 - 512], opts);
    assert_corrupt(&err, "at least 3 chunks");
    assert!(open(mem(vec![0; 3 * 4096]), 8).1.is_empty());
    // Existing store: 2 chunks needed.
    let mut img = vec![0; 4096 + 512];
    put_header(&mut img, SNAP, 1, 1, 8);
    assert_corrupt(
        &refuse(img, Opts::default()),
        "smaller than two chunks of 8 sectors",
    );
    // Not even a header.
    assert_corrupt(
        &refuse(vec![0; 8], Opts::default()),
        "cannot read the header",
    );
}

#[test]
fn refuses_to_create_a_store_when_read_only() {
    let opts = Opts {
        requested: 8,
        read_only: true,
        ..Opts::default()
    };
    let err = refuse(vec![0; 16 * 4096], opts);
    assert_corrupt(&err, "not initialised and the mount is read-only");
}

#[test]
fn read_only_existing_store_loads_but_never_writes() {
    let img = store_image(8, 16, &[(5, 2), (6, 3)]);
    let dev = mem(img.clone());
    let mut st = PersistentStore::new(dev.clone(), false, 0, geometry(BIG_ORIGIN), true);
    assert_eq!(valid_list(st.read_metadata()), [(5, 2), (6, 3)]);
    st.initialise().unwrap();
    assert!(matches!(
        st.prepare_exceptions(1),
        Err(StoreError::ReadOnly)
    ));
    st.drop_snapshot();
    assert!(
        dev.contents() == img,
        "drop_snapshot on a read-only store writes nothing"
    );
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
}

#[test]
fn area_read_error_fails_the_load() {
    let world = SimWorld::new();
    let dev = world.device_from("cow", one_record_image(8, 16, 5, 2), 512);
    dev.fail_reads(true);
    let mut st = persistent(dev.clone(), 0);
    assert_corrupt(&st.read_metadata().unwrap_err(), "cannot read the header");
    // Header readable, area 0 not: a SimDevice fails all reads, so use a device that fails
    // reads past the header.
    struct AreaUnreadable(Arc<SimDevice>);
    impl BlockDevice for AreaUnreadable {
        fn size_bytes(&self) -> u64 {
            self.0.size_bytes()
        }
        fn logical_block_size(&self) -> u32 {
            self.0.logical_block_size()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            if offset > 0 {
                return Err(std::io::Error::other("injected area read error"));
            }
            self.0.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
            self.0.write_at(buf, offset)
        }
        fn flush(&self) -> std::io::Result<()> {
            self.0.flush()
        }
        fn discard(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.0.discard(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> std::io::Result<()> {
            self.0.write_zeroes(offset, len)
        }
        fn name(&self) -> String {
            self.0.name()
        }
    }
    dev.fail_reads(false);
    let mut st = persistent(Arc::new(AreaUnreadable(dev)), 0);
    assert!(matches!(st.read_metadata(), Err(StoreError::Io(_))));
}

// ------------------------------------------------------------------------------------------------
// Header: chunk size, valid flag, drop_snapshot (2.2, 3.5).

#[test]
fn header_chunk_size_wins_over_the_requested_one() {
    // cs = 8 on disk (E = 256): area 0 full, 2 records in area 1.
    let list = in_order_list(8, 258, |k| 2 * k);
    let img = store_image(8, 300, &list);
    let dev = mem(img.clone());
    let (st, loaded) = open(dev.clone(), 16);
    assert_eq!(st.chunk_size().sectors(), 8);
    assert_eq!(loaded, list, "records read with E = 256");
    assert_eq!(usage(&st), "2088/2400 24");
    assert!(dev.contents() == img, "the header is not rewritten");
    assert_eq!(commit(&st, &[9999]), [261]);
}

#[test]
fn invalid_header_loads_as_invalid_without_reading_records() {
    let mut img = header_image(SNAP, 0, 1, 8);
    // A record that would be refused if it were read.
    put_record(&mut img, 8, 0, 0, 5, 1);
    let dev = mem(img.clone());
    let mut st = persistent(dev.clone(), 8);
    assert!(matches!(st.read_metadata(), Ok(Loaded::Invalid)));
    st.initialise().unwrap();
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    assert!(matches!(st.commit_merge(0), Err(StoreError::Invalid)));
    assert!(dev.contents() == img);

    // Any non-zero valid counts as valid.
    let mut img = one_record_image(8, 300, 5, 2);
    img[4..8].copy_from_slice(&2u32.to_le_bytes()); // valid = 2
    assert_eq!(open(mem(img), 0).1, [(5, 2)]);
}

#[test]
fn drop_snapshot_clears_valid_and_nothing_else() {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[10, 11, 12]);
    let before = dev.contents();
    dev.take_ops();

    st.drop_snapshot();
    assert_eq!(dev.take_ops(), [write_op(0, 4096, false), Op::Flush]);
    let after = dev.contents();
    #[rustfmt::skip]
    let expected: [u8; 16] = [
        0x53, 0x6e, 0x41, 0x70, // magic "SnAp"
        0x00, 0x00, 0x00, 0x00, // valid = 0
        0x01, 0x00, 0x00, 0x00, // version = 1
        0x08, 0x00, 0x00, 0x00, // chunk size = 8 sectors
    ];
    assert_eq!(&after[..16], &expected);
    assert!(all_bytes(&after[16..4096], 0));
    assert!(after[4096..] == before[4096..], "areas and data untouched");

    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    let mut reopened = persistent(dev.clone(), 8);
    assert!(matches!(reopened.read_metadata(), Ok(Loaded::Invalid)));
}

// ------------------------------------------------------------------------------------------------
// Failures: copy errors and metadata I/O errors poison the store (3.2 step 1, 3.4).

#[test]
fn failed_copy_poisons_the_store_and_writes_nothing() {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[10, 11, 12]);
    let before = dev.contents();
    dev.take_ops();

    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!(p.new_chunks, [5, 6]);
    assert!(matches!(
        st.commit_exceptions(p, &[20, 21], false),
        Err(StoreError::Invalid)
    ));
    assert_eq!(dev.take_ops(), [], "no flush, no area write");
    assert!(dev.contents() == before);
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert_eq!(
        open(dev, 0).1,
        [(10, 2), (11, 3), (12, 4)],
        "list as before"
    );
}

#[test]
fn failed_copy_fails_it_and_every_batch_not_yet_written() {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    dev.take_ops();
    let good = st.prepare_exceptions(1).unwrap();
    let bad = st.prepare_exceptions(1).unwrap();
    let late = st.prepare_exceptions(1).unwrap();
    // The failed copy poisons the store at once: prepared earlier or later, nothing more is
    // recorded.
    assert!(matches!(
        st.commit_exceptions(bad, &[2], false),
        Err(StoreError::Invalid)
    ));
    for (p, old) in [(good, 1), (late, 3)] {
        assert!(matches!(
            st.commit_exceptions(p, &[old], true),
            Err(StoreError::Invalid)
        ));
    }
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert_eq!(dev.take_ops(), []);
    assert!(open(dev, 0).1.is_empty());
}

#[test]
fn metadata_write_or_flush_failure_poisons_the_store() {
    for fail_flush in [false, true] {
        let world = SimWorld::new();
        let dev = world.device("cow", 32 * 4096);
        let st = format(dev.clone(), 8);
        commit(&st, &[10]);
        if fail_flush {
            dev.fail_flushes(true);
        } else {
            dev.fail_writes(true);
        }
        let p = st.prepare_exceptions(1).unwrap();
        assert!(matches!(
            st.commit_exceptions(p, &[11], true),
            Err(StoreError::Invalid)
        ));
        assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
        let durable = world.durable_images().remove(0);
        assert_eq!(
            open(mem(durable), 0).1,
            [(10, 2)],
            "flush failure {fail_flush}"
        );
    }
}

// ------------------------------------------------------------------------------------------------
// ENOSPC (2.6, 3.4).

#[test]
fn no_space_when_the_chunk_does_not_fit() {
    // cs = 8, 5 whole chunks and half a chunk: data chunks 2, 3 and 4 fit.
    let dev = mem(vec![0; 5 * 4096 + 2048]);
    let st = format(dev, 8);
    assert_eq!(commit(&st, &[1, 2, 3]), [2, 3, 4]);
    assert_eq!(usage(&st), "40/44 16");
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
    assert_eq!(usage(&st), "40/44 16", "nothing allocated");
}

/// A store on a new COW of `cow_bytes` bytes (a device that grows when written past its end,
/// as a regular file does; 0xEE everywhere but the magic), loaded and initialised.
fn sprawling_store(cs: u64, cow_bytes: u64, overflow: bool) -> (PersistentStore, Arc<Sprawling>) {
    let mut img = vec![0xEE; cow_bytes as usize];
    img[..4].fill(0);
    let dev = Arc::new(Sprawling(MemDevice::from_bytes("cow", img, 512)));
    let mut st = PersistentStore::new(dev.clone(), overflow, cs, geometry(BIG_ORIGIN), false);
    assert!(valid_list(st.read_metadata()).is_empty());
    st.initialise().unwrap();
    (st, dev)
}

/// The bytes a test puts in COW chunk `c` before committing it (as the volume fills a chunk).
fn fill_chunk(dev: &dyn BlockDevice, cs: u64, c: u64) {
    let byte = 0x40 | (c as u8 & 0x3F);
    dev.write_at(&vec![byte; chunk_bytes(cs) as usize], c * chunk_bytes(cs))
        .unwrap();
}

/// One exception at a time, as the kernel's single-chunk writes make them: prepare, fill,
/// commit. Returns the chunk.
fn commit_one(st: &PersistentStore, dev: &dyn BlockDevice, cs: u64, old: u64) -> u64 {
    let p = st.prepare_exceptions(1).unwrap();
    let c = p.new_chunks[0];
    fill_chunk(dev, cs, c);
    st.commit_exceptions(p, &[old], true).unwrap();
    c
}

/// The sequence (issue 13, item 11): cs = 1 (E = 32), a COW of 34 sectors (header,
/// area 0, data chunks 2..=33), 32 single-chunk exceptions. The kernel only checks that a chunk
/// itself fits, so the 32nd is allocated (chunk 33, the last data chunk of area 0); its commit
/// fills area 0, zeroing area 1 (chunk 34, past the end) fails, area 0 is not written, and the
/// store is invalid: the snapshot shows `Invalid` and gets `valid = 0` in its header, with `P`
/// and with `PO` alike. Nothing is ever written past the end of the COW.
#[test]
fn a_full_area_whose_next_area_is_past_the_cow_fails_at_commit_as_in_the_kernel() {
    for overflow in [true, false] {
        let what = if overflow { "PO" } else { "P" };
        let (st, dev) = sprawling_store(1, 34 * SECTOR, overflow);
        for k in 0..31 {
            assert_eq!(commit_one(&st, &*dev, 1, 100 + k), 2 + k, "{what}");
        }
        assert_eq!(
            usage(&st),
            "33/34 2",
            "{what}: the kernel's figures after 31"
        );

        let p = st.prepare_exceptions(1).unwrap();
        assert_eq!(
            p.new_chunks,
            [33],
            "{what}: the kernel allocates the last data chunk"
        );
        assert_eq!(
            usage(&st),
            "35/34 2",
            "{what}: next_free stepped over area 1"
        );
        fill_chunk(&*dev, 1, 33);
        assert!(
            matches!(
                st.commit_exceptions(p, &[131], true),
                Err(StoreError::Invalid)
            ),
            "{what}: the commit fails"
        );
        assert_eq!(
            dev.size_bytes(),
            34 * SECTOR,
            "{what}: nothing written past the end"
        );
        assert!(
            matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)),
            "{what}: the store is invalid"
        );
        // The volume then invalidates the snapshot (drop_snapshot), as the kernel does.
        st.drop_snapshot();
        let img = dev.0.contents();
        #[rustfmt::skip]
        let header: [u8; 16] = [
            0x53, 0x6e, 0x41, 0x70, // magic "SnAp"
            0x00, 0x00, 0x00, 0x00, // valid = 0
            0x01, 0x00, 0x00, 0x00, // version = 1
            0x01, 0x00, 0x00, 0x00, // chunk size = 1 sector
        ];
        assert_eq!(&img[..16], &header, "{what}: header");
        assert!(
            all_bytes(&img[16..512], 0),
            "{what}: rest of the header chunk"
        );
        for k in 0..31 {
            assert_eq!(
                record_in(&img, record_offset(1, 0, k)),
                (100 + k, 2 + k),
                "{what}"
            );
        }
        assert_eq!(
            record_in(&img, record_offset(1, 0, 31)),
            (0, 0),
            "{what}: area 0 as the 31st commit left it (the 32nd was never written)"
        );
        assert!(
            all_bytes(&img[33 * 512..], 0x40 | 33),
            "{what}: chunk 33 holds its data"
        );
        let mut reloaded = persistent(dev.clone(), 0);
        assert!(
            matches!(reloaded.read_metadata(), Ok(Loaded::Invalid)),
            "{what}: reloaded Invalid"
        );
    }
}

/// A batch that reaches the last data chunk of an area whose next area lies past the end: when
/// it fits, it is allocated and its commit fails (as above); when it needs more chunks than are
/// left, the kernel would still have allocated that chunk (it allocates chunk by chunk) and
/// failed the store at its commit, so allocation fails with that error, not `NoSpace` (which
/// would make a `PO` snapshot `Overflow` where the kernel's is `Invalid`), allocating nothing.
#[test]
fn a_batch_reaching_a_full_area_whose_next_area_is_past_the_cow_is_not_no_space() {
    let (st, dev) = sprawling_store(1, 34 * SECTOR, true);
    for k in 0..30 {
        commit_one(&st, &*dev, 1, k);
    }
    assert_eq!(usage(&st), "32/34 2");
    let err = st.prepare_exceptions(3).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "not NoSpace: {err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("metadata area 1") && msg.contains("chunk 34") && msg.contains("17408"),
        "{msg}"
    );
    assert_eq!(usage(&st), "32/34 2", "nothing allocated");
    assert_eq!(dev.size_bytes(), 34 * SECTOR);
    assert_eq!(open(dev.clone(), 0).1.len(), 30, "the list as it was");

    // Exactly the chunks left: allocated, and the commit fails.
    let (st, dev) = sprawling_store(1, 34 * SECTOR, true);
    for k in 0..30 {
        commit_one(&st, &*dev, 1, k);
    }
    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!(p.new_chunks, [32, 33]);
    assert!(matches!(
        st.commit_exceptions(p, &[40, 41], true),
        Err(StoreError::Invalid)
    ));
    assert_eq!(dev.size_bytes(), 34 * SECTOR);
    assert_eq!(open(dev, 0).1.len(), 30, "neither record was written");

    // Only chunk 33 left and two asked: the kernel allocates 33, then runs out; the store fails.
    let (st, dev) = sprawling_store(1, 34 * SECTOR, true);
    for k in 0..31 {
        commit_one(&st, &*dev, 1, k);
    }
    assert!(matches!(st.prepare_exceptions(2), Err(StoreError::Io(_))));
    assert_eq!(usage(&st), "33/34 2", "nothing allocated");
}

/// The next area cut by the end of the COW (its size not a whole number of chunks) lies past
/// the end too: the kernel's zeroing write of the whole chunk fails. cs = 2 (E = 64): area 1
/// is chunk 66, sectors 132..134; a COW of 133 sectors ends inside it.
#[test]
fn a_next_area_cut_by_the_end_of_the_cow_is_past_it_too() {
    let (st, dev) = sprawling_store(2, 133 * SECTOR, true);
    for k in 0..63 {
        commit_one(&st, &*dev, 2, k);
    }
    assert_eq!(usage(&st), "130/133 4");
    let p = st.prepare_exceptions(1).unwrap();
    assert_eq!(p.new_chunks, [65]);
    fill_chunk(&*dev, 2, 65);
    assert!(matches!(
        st.commit_exceptions(p, &[63], true),
        Err(StoreError::Invalid)
    ));
    assert_eq!(dev.size_bytes(), 133 * SECTOR, "the COW did not grow");
    assert!(
        all_bytes(&dev.0.contents()[66 * 1024..], 0xEE),
        "area 1 was not written, not even the part inside the COW"
    );

    // One sector more and area 1 fits: all 64 data chunks of area 0 are used, then nothing.
    let (st, dev) = sprawling_store(2, 134 * SECTOR, true);
    for k in 0..64 {
        commit_one(&st, &*dev, 2, k);
    }
    assert!(all_bytes(&chunk_on(&*dev, 2, 66), 0), "area 1 zeroed");
    assert_eq!(usage(&st), "134/134 6");
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
}

#[test]
fn with_room_for_the_next_area_every_data_chunk_is_used() {
    // cs = 1, COW of 35 chunks: area 1 fits, all 32 data chunks of area 0 can be used, then
    // the kernel's ENOSPC (a `PO` snapshot overflows).
    let dev = mem(vec![0xFF; 35 * 512]);
    dev.write_at(&[0; 4], 0).unwrap();
    let st = format(dev.clone(), 1);
    let olds: Vec<u64> = (0..32).collect();
    assert_eq!(commit_many(&st, &olds).last(), Some(&(31, 33)));
    assert!(all_bytes(&chunk_on(&*dev, 1, 34), 0), "area 1 zeroed");
    assert_eq!(usage(&st), "35/35 3");
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));

    // A grown COW is used at once.
    dev.resize(36 * 512);
    assert_eq!(commit(&st, &[99]), [35]);
}

/// A COW that shrinks under the store (a truncated file) is said to have shrunk, naming the
/// device and the sizes, instead of being "full" (`NoSpace`, which lets a `PO` snapshot merely
/// overflow: what was cut off may have held exceptions). A shrink that leaves room for the next
/// chunk is used as it is, as the kernel does.
#[test]
fn a_cow_that_shrinks_under_the_store_is_reported_as_shrunk() {
    let dev = mem(vec![0; 64 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[1, 2, 3]);
    dev.resize(16 * 4096);
    assert_eq!(
        commit(&st, &[4]),
        [5],
        "still room: used as the kernel would"
    );
    dev.resize(5 * 4096);
    let err = st.prepare_exceptions(1).unwrap_err();
    assert!(!matches!(err, StoreError::NoSpace), "{err:?}");
    let msg = err.to_string();
    for needle in ["cow", "shrank", "262144", "20480"] {
        assert!(msg.contains(needle), "{needle:?} missing from {msg:?}");
    }

    // A COW that is simply full says so (NoSpace); grown, it is used; shrunk again, it says so.
    let dev = mem(vec![0; 5 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[1, 2, 3]);
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
    dev.resize(8 * 4096);
    assert_eq!(commit(&st, &[4]), [5]);
    dev.resize(6 * 4096);
    let err = st.prepare_exceptions(1).unwrap_err();
    assert!(err.to_string().contains("shrank"), "{err}");

    // Shrunk past the area the next commit writes: the commit fails, writing nothing there.
    let (st, dev) = sprawling_store(1, 300 * SECTOR, false);
    let p = st.prepare_exceptions(1).unwrap();
    dev.0.resize(SECTOR);
    assert!(matches!(
        st.commit_exceptions(p, &[7], true),
        Err(StoreError::Invalid)
    ));
    assert_eq!(
        dev.size_bytes(),
        SECTOR,
        "area 0 was not written past the end"
    );
}

#[test]
fn failed_prepare_allocates_nothing() {
    // cs = 1, COW of 35 chunks: 30 exceptions in chunks 2..=31, then 32 and 33 are left.
    let st = format(mem(vec![0; 35 * 512]), 1);
    let olds: Vec<u64> = (0..30).collect();
    commit_many(&st, &olds);
    assert_eq!(usage(&st), "32/35 2");
    assert!(matches!(st.prepare_exceptions(3), Err(StoreError::NoSpace)));
    assert!(matches!(
        st.prepare_exceptions(100),
        Err(StoreError::NoSpace)
    ));
    assert_eq!(usage(&st), "32/35 2");
    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!(p.new_chunks, [32, 33]);
    assert_eq!(p.first_seq, 30, "failed prepares took no sequence numbers");
    st.commit_exceptions(p, &[100, 101], true).unwrap();
    assert_eq!(usage(&st), "35/35 3");
}

// ------------------------------------------------------------------------------------------------
// Merge (4.1, 4.2, 5.1).

#[test]
fn merge_on_an_empty_store_offers_nothing() {
    let st = format(mem(vec![0; 16 * 4096]), 8);
    assert_eq!(st.prepare_merge().unwrap(), None);
    assert_eq!(usage(&st), "16/128 16");
}

/// Old chunks of the merge example: runs of 156, 100, 20 and 24 exceptions.
fn merge_old(k: u64) -> u64 {
    match k {
        0..156 => 10_000 + k,
        156..256 => 20_000 + k,
        256..276 => 30_000 + k,
        _ => 40_000 + k,
    }
}

#[test]
fn merge_worked_example_cs8() {
    let dev = Arc::new(MemDevice::new("cow", COW_204800));
    let st = format(dev.clone(), 8);
    let olds: Vec<u64> = (0..300).map(merge_old).collect();
    let list = commit_many(&st, &olds);
    assert_eq!(usage(&st), "2424/204800 24", "next_free 303, area 1");
    let reload = |n: usize| {
        let (st, loaded) = open(dev.clone(), 0);
        assert_eq!(loaded, list[..n], "reload after merging down to {n}");
        st
    };

    // Area 1 holds exceptions 256..300 (new 259..=302). Its tail run: 24 records, consecutive
    // in old and new. Record 19 (old 30275, new 278) continues the new chunks but not the old.
    let run = |last_old, last_new, count| {
        Some(MergeRun {
            last_old,
            last_new,
            count,
        })
    };
    assert_eq!(st.prepare_merge().unwrap(), run(40_299, 302, 24));
    st.commit_merge(24).unwrap();
    assert!(all_bytes(
        &read_bytes(&*dev, record_offset(8, 1, 20), 24 * 16),
        0
    ));
    assert_eq!(
        record_on(&*dev, 8, 1, 19),
        (30_275, 278),
        "records before the run stay"
    );
    // next_free = area 1 (258) + 20 remaining + 1.
    assert_eq!(usage(&st), "2232/204800 24");
    assert_eq!(usage(&reload(276)), "2232/204800 24");

    // A shorter commit than offered is allowed.
    assert_eq!(st.prepare_merge().unwrap(), run(30_275, 278, 20));
    st.commit_merge(5).unwrap();
    assert_eq!(usage(&st), "2192/204800 24", "next_free 258 + 15 + 1");
    assert_eq!(st.prepare_merge().unwrap(), run(30_270, 273, 15));
    st.commit_merge(15).unwrap();
    assert_eq!(usage(&st), "2072/204800 24", "area 1 empty: next_free 259");
    assert!(all_bytes(&chunk_on(&*dev, 8, 258), 0));
    reload(256);

    // Area 1 is empty: the next prepare steps back to area 0 and reads it from disk (the working
    // buffer was cleared when area 0 filled). next_free is not updated until commit_merge.
    assert_eq!(st.prepare_merge().unwrap(), run(20_255, 257, 100));
    assert_eq!(usage(&st), "2072/204800 16");
    st.commit_merge(100).unwrap();
    assert_eq!(usage(&st), "1264/204800 16", "next_free 1 + 156 + 1");
    assert_eq!(usage(&reload(156)), "1264/204800 16");

    assert_eq!(st.prepare_merge().unwrap(), run(10_155, 157, 156));
    st.commit_merge(156).unwrap();
    assert_eq!(usage(&st), "16/204800 16", "merged: allocated == metadata");
    assert_eq!(st.prepare_merge().unwrap(), None);
    assert!(all_bytes(&chunk_on(&*dev, 8, 1), 0));
    assert_eq!(usage(&reload(0)), "16/204800 16");

    // The empty store allocates from chunk 2 again.
    assert_eq!(commit(&st, &[5]), [2]);
}

#[test]
fn merge_runs_stop_at_the_area_boundary_and_step_back_from_disk() {
    // cs = 8 (E = 256), hand-made (not in allocation order): area 0 records i < 255 are
    // (10000 + i, 2 + i), record 255 is (5000, 260); area 1 holds (5001, 261), (5002, 262).
    // Records 255 of area 0 and 0..2 of area 1 are consecutive in both old and new.
    let mut list: Vec<(u64, u64)> = (0..255).map(|i| (10_000 + i, 2 + i)).collect();
    list.extend([(5_000, 260), (5_001, 261), (5_002, 262)]);
    let world = SimWorld::new();
    let dev = world.device_from("cow", store_image(8, 300, &list), 512);
    let (st, loaded) = open(dev.clone(), 0);
    assert_eq!(loaded, list);
    assert_eq!(usage(&st), "2104/2400 24", "next_free 263");
    let run = |last_old, last_new, count| {
        Some(MergeRun {
            last_old,
            last_new,
            count,
        })
    };

    assert_eq!(
        st.prepare_merge().unwrap(),
        run(5_002, 262, 2),
        "not 3: one area only"
    );
    st.commit_merge(2).unwrap();
    assert_eq!(usage(&st), "2072/2400 24");

    // Stepping back reads area 0: a read error fails the step and changes nothing.
    dev.fail_reads(true);
    assert!(matches!(st.prepare_merge(), Err(StoreError::Io(_))));
    assert_eq!(usage(&st), "2072/2400 24");
    dev.fail_reads(false);
    assert_eq!(st.prepare_merge().unwrap(), run(5_000, 260, 1));
    assert_eq!(usage(&st), "2072/2400 16");
    st.commit_merge(1).unwrap();
    assert_eq!(usage(&st), "2056/2400 16", "next_free 1 + 255 + 1");
    assert_eq!(st.prepare_merge().unwrap(), run(10_254, 256, 255));
}

#[test]
fn merge_runs_need_consecutive_old_and_new_chunks() {
    let run = |last_old, last_new, count| {
        Some(MergeRun {
            last_old,
            last_new,
            count,
        })
    };
    // cs = 1, hand-made lists. Old chunks consecutive, new chunks not (3 -> 5): a run of 2.
    let list = [(100, 2), (101, 3), (102, 5), (103, 6)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(103, 6, 2));
    // New chunks consecutive, old chunks not (7 -> 9): a run of 2.
    let list = [(7, 2), (9, 3), (10, 4)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(10, 4, 2));
    // Descending old chunks are not a run.
    let list = [(9, 2), (8, 3)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(8, 3, 1));
    // Origin chunk 0 can end a run.
    let list = [(0, 2), (1, 3)];
    let (st, _) = open(mem(store_image(1, 16, &list)), 0);
    assert_eq!(st.prepare_merge().unwrap(), run(1, 3, 2));
    st.commit_merge(1).unwrap();
    assert_eq!(st.prepare_merge().unwrap(), run(0, 2, 1));
}

#[test]
fn merge_on_an_invalid_store_fails() {
    let (st, _) = open(mem(one_record_image(8, 16, 5, 2)), 0);
    st.drop_snapshot();
    assert!(matches!(st.prepare_merge(), Err(StoreError::Invalid)));
    assert!(matches!(st.commit_merge(1), Err(StoreError::Invalid)));
}

// ------------------------------------------------------------------------------------------------
// snapfs's merge marker: bytes 16..28 of chunk 0, ignored by the kernel (format.rs).

/// Header bytes 0..28 of a valid cs = 8 store with the merge marker set.
#[rustfmt::skip]
const MERGING_HEADER: [u8; 28] = [
    0x53, 0x6e, 0x41, 0x70, // magic "SnAp"
    0x01, 0x00, 0x00, 0x00, // valid = 1
    0x01, 0x00, 0x00, 0x00, // version = 1
    0x08, 0x00, 0x00, 0x00, // chunk size = 8 sectors
    b's', b'n', b'a', b'p', b'f', b's', b'M', b'G', // marker "snapfsMG"
    0x01, 0x00, 0x00, 0x00, // marker version 1
];

#[test]
fn merge_marker_is_written_durably_and_reloaded() {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[10, 11]);
    let areas = dev.contents()[4096..].to_vec();
    assert!(!st.merge_marker());
    dev.take_ops();

    st.set_merge_marker(true).unwrap();
    assert!(st.merge_marker());
    assert_eq!(dev.take_ops(), [write_op(0, 4096, false), Op::Flush]);
    let header = chunk_on(&*dev, 8, 0);
    assert_eq!(&header[..28], &MERGING_HEADER);
    assert!(all_bytes(&header[28..], 0));
    assert!(dev.contents()[4096..] == areas[..], "only chunk 0 written");
    let (reopened, list) = open(dev.clone(), 0);
    assert!(reopened.merge_marker());
    assert_eq!(list, [(10, 2), (11, 3)]);
    drop(reopened);

    st.set_merge_marker(false).unwrap();
    assert!(!st.merge_marker());
    assert!(all_bytes(&chunk_on(&*dev, 8, 0)[16..], 0), "marker cleared");
    assert!(!open(dev, 0).0.merge_marker());
}

#[test]
fn drop_snapshot_keeps_the_merge_marker() {
    let dev = mem(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    st.set_merge_marker(true).unwrap();
    st.drop_snapshot();
    let header = chunk_on(&*dev, 8, 0);
    assert_eq!(&header[4..8], &[0, 0, 0, 0], "valid = 0");
    assert_eq!(&header[..4], &MERGING_HEADER[..4]);
    assert_eq!(
        &header[8..28],
        &MERGING_HEADER[8..28],
        "rest of the header intact"
    );
    assert!(matches!(
        st.set_merge_marker(false),
        Err(StoreError::Invalid)
    ));
    assert_eq!(&chunk_on(&*dev, 8, 0)[16..28], &MERGING_HEADER[16..28]);
    // An invalid store still reports its marker.
    let mut reopened = persistent(dev, 0);
    assert!(matches!(reopened.read_metadata(), Ok(Loaded::Invalid)));
    assert!(reopened.merge_marker());
}

#[test]
fn merge_marker_needs_its_exact_bytes() {
    // A marker with version 2, or a misspelt one, is not a marker.
    for (at, byte) in [(24, 2), (16, b'S')] {
        let mut img = store_image(8, 16, &[(5, 2)]);
        img[..28].copy_from_slice(&MERGING_HEADER);
        img[at] = byte;
        let (st, list) = open(mem(img), 0);
        assert!(!st.merge_marker(), "byte {at} = {byte}");
        assert_eq!(list, [(5, 2)]);
    }
    // A new store (magic 0) ignores stale marker bytes, and initialise clears them.
    let mut img = vec![0u8; 16 * 4096];
    img[..28].copy_from_slice(&MERGING_HEADER);
    img[..4].fill(0);
    let dev = mem(img);
    let st = format(dev.clone(), 8);
    assert!(!st.merge_marker());
    assert!(all_bytes(&chunk_on(&*dev, 8, 0)[16..], 0));
}

#[test]
fn failed_merge_marker_write_leaves_the_marker_unchanged() {
    let world = SimWorld::new();
    let dev = world.device("cow", 16 * 4096);
    let st = format(dev.clone(), 8);
    dev.fail_writes(true);
    assert!(matches!(st.set_merge_marker(true), Err(StoreError::Io(_))));
    assert!(!st.merge_marker(), "the marker is not set in memory either");
    dev.fail_writes(false);
    st.set_merge_marker(true).unwrap();
    dev.fail_flushes(true);
    assert!(st.set_merge_marker(false).is_err());
    assert!(
        st.merge_marker(),
        "a clear that did not become durable is not a clear"
    );
}

#[test]
fn merge_marker_on_a_read_only_store_is_read_not_written() {
    let mut img = store_image(8, 16, &[(5, 2)]);
    img[..28].copy_from_slice(&MERGING_HEADER);
    let dev = mem(img.clone());
    let mut st = PersistentStore::new(dev.clone(), false, 0, geometry(BIG_ORIGIN), true);
    valid_list(st.read_metadata());
    assert!(st.merge_marker());
    assert!(matches!(
        st.set_merge_marker(false),
        Err(StoreError::ReadOnly)
    ));
    assert!(st.merge_marker());
    assert!(dev.contents() == img);
}

// ------------------------------------------------------------------------------------------------
// Transient store (6).

fn transient(dev: Device, cs: u64) -> TransientStore {
    match TransientStore::new(dev, cs, 512) {
        Ok(st) => st,
        Err(e) => panic!("transient store refused: {e}"),
    }
}

#[test]
fn transient_allocates_from_chunk_0_and_writes_nothing() {
    let dev = Recorder::new(vec![0; COW_204800 as usize]);
    let mut st = transient(dev.clone(), 8);
    assert!(valid_list(st.read_metadata()).is_empty());
    st.initialise().unwrap();
    assert_eq!(st.kind(), StoreKind::Transient);
    assert_eq!(st.chunk_size().sectors(), 8);
    assert_eq!(usage(&st), "0/204800 0");

    let p = st.prepare_exceptions(1).unwrap();
    assert_eq!((p.first_seq, p.new_chunks.as_slice()), (0, &[0][..]));
    st.commit_exceptions(p, &[7], true).unwrap();
    let p = st.prepare_exceptions(2).unwrap();
    assert_eq!((p.first_seq, p.new_chunks.as_slice()), (1, &[1, 2][..]));
    st.commit_exceptions(p, &[8, 9], true).unwrap();
    assert_eq!(usage(&st), "24/204800 0");
    assert_eq!(dev.take_ops(), [], "no metadata, no I/O");
}

#[test]
fn transient_no_space_all_or_nothing() {
    // 20 sectors with cs = 8: two whole chunks.
    let st = transient(mem(vec![0; 20 * 512]), 8);
    assert!(matches!(st.prepare_exceptions(3), Err(StoreError::NoSpace)));
    assert_eq!(usage(&st), "0/20 0");
    assert_eq!(commit(&st, &[1, 2]), [0, 1]);
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::NoSpace)));
    assert_eq!(usage(&st), "16/20 0");
}

#[test]
fn transient_refuses_bad_chunk_sizes() {
    let err = |dev: Device, cs, origin_block| match TransientStore::new(dev, cs, origin_block) {
        Ok(_) => panic!("chunk size {cs} accepted"),
        Err(e) => e,
    };
    let cow = || -> Device { mem(vec![0; 64 * 4096]) };
    let e = err(cow(), 0, 512);
    assert!(matches!(e, StoreError::ChunkSize(ChunkSizeError::Zero)));
    assert!(e.to_string().contains("Chunk size not set"));
    assert!(matches!(
        err(cow(), 3, 512),
        StoreError::ChunkSize(ChunkSizeError::NotPowerOfTwo(3))
    ));
    assert!(matches!(
        err(cow(), 1 << 22, 512),
        StoreError::ChunkSize(ChunkSizeError::TooHigh(_))
    ));
    assert!(matches!(
        err(cow(), 4, 4096),
        StoreError::ChunkSize(ChunkSizeError::NotMultipleOfBlockSize { .. })
    ));
    let cow_4k: Device = Arc::new(MemDevice::with_block_size("cow", 64 * 4096, 4096));
    assert!(matches!(
        err(cow_4k.clone(), 4, 512),
        StoreError::ChunkSize(ChunkSizeError::NotMultipleOfBlockSize { .. })
    ));
    assert_eq!(transient(cow_4k, 8).chunk_size().sectors(), 8);
}

#[test]
fn transient_failed_copy_invalidates() {
    let st = transient(mem(vec![0; 64 * 4096]), 8);
    let first = st.prepare_exceptions(1).unwrap();
    let second = st.prepare_exceptions(1).unwrap();
    assert!(matches!(
        st.commit_exceptions(second, &[2], false),
        Err(StoreError::Invalid)
    ));
    assert!(matches!(
        st.commit_exceptions(first, &[1], true),
        Err(StoreError::Invalid)
    ));
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
}

#[test]
fn transient_has_no_merge_and_drop_is_in_memory() {
    let dev = Recorder::new(vec![0; 64 * 4096]);
    let st = transient(dev.clone(), 8);
    commit(&st, &[1]);
    assert!(matches!(
        st.prepare_merge(),
        Err(StoreError::Unsupported(_))
    ));
    assert!(matches!(
        st.commit_merge(1),
        Err(StoreError::Unsupported(_))
    ));
    st.drop_snapshot();
    assert!(matches!(st.prepare_exceptions(1), Err(StoreError::Invalid)));
    assert_eq!(dev.take_ops(), []);
}

#[test]
fn transient_store_has_no_merge_marker() {
    let dev = Recorder::new(vec![0; 64 * 4096]);
    let st = transient(dev.clone(), 8);
    st.set_merge_marker(true).unwrap();
    assert!(!st.merge_marker());
    assert_eq!(dev.take_ops(), []);
}

// ------------------------------------------------------------------------------------------------
// Crashes at every flush point (3.3). A workload runs on a SimWorld that freezes at flush k; the
// crash image is reopened and must hold a prefix of the allocation sequence that includes every
// acknowledged commit.

/// Old chunk of the k-th exception of the crash workloads.
fn crash_old(k: u64) -> u64 {
    7 * k + 3
}

/// What a workload did before it stopped.
struct CommitRun {
    /// `(old, new)` of every prepared exception, in allocation order.
    alloc: Vec<(u64, u64)>,
    /// How many of them were acknowledged (their commit returned Ok).
    acked: usize,
}

/// Formats a new store on `dev` and commits batches of `sizes`, one after the other, until one
/// fails.
fn commit_workload(dev: Device, cs: u64, sizes: &[usize]) -> CommitRun {
    let mut run = CommitRun {
        alloc: Vec::new(),
        acked: 0,
    };
    let (mut st, list) = open(dev, cs);
    assert!(list.is_empty());
    if st.initialise().is_err() {
        return run;
    }
    for &n in sizes {
        let k0 = run.alloc.len() as u64;
        let olds: Vec<u64> = (k0..k0 + n as u64).map(crash_old).collect();
        let p = st.prepare_exceptions(n).expect("the COW is big enough");
        run.alloc
            .extend(olds.iter().copied().zip(p.new_chunks.iter().copied()));
        match st.commit_exceptions(p, &olds, true) {
            Ok(()) => run.acked = run.alloc.len(),
            Err(_) => break,
        }
    }
    run
}

/// Reopens a crash image and checks it against the run; then checks allocation continues.
fn check_commit_image(image: Vec<u8>, cs: u64, run: &CommitRun, what: &str) {
    let mut st = persistent(mem(image), cs);
    let list = match st.read_metadata() {
        Ok(Loaded::Valid(list)) => list,
        other => panic!("{what}: crash image does not load: {other:?}"),
    };
    assert!(
        list.len() >= run.acked,
        "{what}: {} acknowledged, {} on disk",
        run.acked,
        list.len()
    );
    assert_eq!(
        list,
        run.alloc[..list.len()],
        "{what}: not a prefix of the allocation sequence"
    );
    st.initialise().unwrap();
    let p = st.prepare_exceptions(1).unwrap();
    assert_eq!(p.new_chunks, [kth_chunk(cs, list.len() as u64)], "{what}");
    st.commit_exceptions(p, &[1 << 40], true).unwrap();
}

fn crash_modes(k: u64) -> [CrashMode; 3] {
    [
        CrashMode::Drop,
        CrashMode::Tear { seed: k },
        CrashMode::Tear {
            seed: k ^ 0x5eed_0000_0000,
        },
    ]
}

fn crash_at_every_flush(cs: u64, cow_chunks: u64, sizes: &[usize]) {
    let cow_bytes = cow_chunks * chunk_bytes(cs);
    let clean = SimWorld::new();
    let run = commit_workload(clean.device("cow", cow_bytes), cs, sizes);
    assert_eq!(run.acked, sizes.iter().sum::<usize>());
    let flushes = clean.flush_count();
    check_commit_image(clean.durable_images().remove(0), cs, &run, "clean run");

    for k in 1..=flushes {
        for mode in crash_modes(k) {
            let world = SimWorld::new();
            let dev = world.device("cow", cow_bytes);
            world.freeze_at_flush(k, mode);
            let run = commit_workload(dev, cs, sizes);
            let image = world.crash_images().expect("the crash point is reached");
            let what = format!("cs {cs}, crash at flush {k}/{flushes} ({mode:?})");
            check_commit_image(image.into_iter().next().unwrap(), cs, &run, &what);
        }
    }
}

#[test]
fn crash_at_every_flush_point_cs1() {
    // E = 32: crosses two area boundaries; an area is one sector, so it never tears.
    let sizes = [1, 3, 5, 2, 8, 13, 1, 1, 7, 4, 21, 6, 2, 9];
    crash_at_every_flush(1, 120, &sizes);
}

#[test]
fn crash_at_every_flush_point_cs8() {
    // E = 256: an area is 8 sectors (32 records each), so area writes tear.
    let sizes = [40, 1, 37, 64, 30, 90, 5, 20];
    crash_at_every_flush(8, 320, &sizes);
}

/// The byte every sector of the copy of origin chunk `old` holds.
fn copy_byte(old: u64) -> u8 {
    (old % 251) as u8 + 1
}

/// What a concurrent workload did before it stopped: every prepared and every acknowledged
/// `(old, new)`.
#[derive(Default)]
struct ConcurrentRun {
    prepared: Vec<(u64, u64)>,
    acked: Vec<(u64, u64)>,
}

/// Formats a store on `dev` (cs = 1: areas of 32 records) and has `threads` threads write a
/// copy into each chunk they prepare and commit it, batches of 1 to 3, until a commit fails.
fn concurrent_commit_workload(dev: Arc<SimDevice>, threads: u64, rounds: u64) -> ConcurrentRun {
    let run = parking_lot::Mutex::new(ConcurrentRun::default());
    let (mut st, list) = open(dev.clone(), 1);
    assert!(list.is_empty());
    if st.initialise().is_err() {
        return run.into_inner();
    }
    thread::scope(|s| {
        for t in 0..threads {
            let (st, dev, run) = (&st, &dev, &run);
            s.spawn(move || {
                for r in 0..rounds {
                    let olds: Vec<u64> =
                        (0..1 + (t + r) % 3).map(|j| t * 1000 + r * 4 + j).collect();
                    let Ok(p) = st.prepare_exceptions(olds.len()) else {
                        return;
                    };
                    let pairs: Vec<(u64, u64)> = olds
                        .iter()
                        .copied()
                        .zip(p.new_chunks.iter().copied())
                        .collect();
                    run.lock().prepared.extend(&pairs);
                    let mut copied = true;
                    for &(old, new) in &pairs {
                        let data = vec![copy_byte(old); SECTOR as usize];
                        copied &= dev.write_at(&data, new * SECTOR).is_ok();
                    }
                    if st.commit_exceptions(p, &olds, copied).is_err() {
                        return;
                    }
                    run.lock().acked.extend(pairs);
                }
            });
        }
    });
    run.into_inner()
}

/// Concurrent committers, with batches grouped and pipelined, crashed at every flush point:
/// every acknowledged record is on disk, every record on disk was prepared, and the copy each
/// record points at is intact (its data was durable before its record).
#[test]
fn concurrent_commits_crash_at_every_flush_point() {
    const THREADS: u64 = 4;
    const ROUNDS: u64 = 12;
    const COW_SECTORS: u64 = 400;
    let clean = SimWorld::new();
    let run =
        concurrent_commit_workload(clean.device("cow", COW_SECTORS * SECTOR), THREADS, ROUNDS);
    assert_eq!(run.acked.len(), run.prepared.len());
    let flushes = clean.flush_count();
    let mut reached = 0;
    for k in 1..=flushes + 8 {
        for mode in crash_modes(k) {
            let world = SimWorld::new();
            let dev = world.device("cow", COW_SECTORS * SECTOR);
            world.freeze_at_flush(k, mode);
            let run = concurrent_commit_workload(dev, THREADS, ROUNDS);
            let Some(images) = world.crash_images() else {
                continue; // this run needed fewer flushes
            };
            reached += 1;
            let what = format!("crash at flush {k} ({mode:?})");
            let image = images.into_iter().next().unwrap();
            let mut st = persistent(mem(image.clone()), 1);
            let list = match st.read_metadata() {
                Ok(Loaded::Valid(list)) => list,
                other => panic!("{what}: crash image does not load: {other:?}"),
            };
            for pair in &run.acked {
                assert!(list.contains(pair), "{what}: acknowledged {pair:?} is lost");
            }
            for &(old, new) in &list {
                assert!(
                    run.prepared.contains(&(old, new)),
                    "{what}: ({old}, {new}) was never prepared"
                );
                let at = (new * SECTOR) as usize;
                assert!(
                    all_bytes(&image[at..at + SECTOR as usize], copy_byte(old)),
                    "{what}: the copy of origin chunk {old} in COW chunk {new} is not durable"
                );
            }
            let highest = list.iter().map(|&(_, new)| new).max().unwrap_or(1);
            st.initialise().unwrap();
            let p = st.prepare_exceptions(1).unwrap();
            assert!(
                p.new_chunks[0] > highest,
                "{what}: allocation reuses a chunk"
            );
            assert!(!is_area_chunk(
                ChunkSize::new(1, &[]).unwrap(),
                p.new_chunks[0]
            ));
            st.commit_exceptions(p, &[1 << 40], true).unwrap();
        }
    }
    assert!(
        reached as u64 >= flushes,
        "{reached} crash points reached of {flushes}"
    );
}

/// Merges `dev`'s whole list in steps of at most 7 records; returns the list length after the
/// last acknowledged `commit_merge`, and the count of the one in flight when it stopped.
fn merge_workload(dev: Device) -> (usize, usize) {
    let (st, list) = open(dev, 0);
    let mut remaining = list.len();
    loop {
        let n = match st.prepare_merge() {
            Ok(Some(run)) => run.count.min(7),
            Ok(None) | Err(_) => return (remaining, 0),
        };
        if st.commit_merge(n).is_err() {
            return (remaining, n as usize);
        }
        remaining -= n as usize;
    }
}

#[test]
fn crash_at_every_flush_point_of_a_merge() {
    // cs = 8: 300 exceptions in runs of 156, 100, 20, 24 (two areas).
    let list = in_order_list(8, 300, merge_old);
    let image = store_image(8, 320, &list);
    let clean = SimWorld::new();
    assert_eq!(
        merge_workload(clean.device_from("cow", image.clone(), 512)),
        (0, 0)
    );
    let flushes = clean.flush_count();
    assert!(open(mem(clean.durable_images().remove(0)), 0).1.is_empty());

    for k in 1..=flushes {
        for mode in crash_modes(k) {
            let world = SimWorld::new();
            let dev = world.device_from("cow", image.clone(), 512);
            world.freeze_at_flush(k, mode);
            let (acked, in_flight) = merge_workload(dev);
            let crash = world.crash_images().expect("the crash point is reached");
            let what = format!("merge crash at flush {k}/{flushes} ({mode:?})");
            let mut st = persistent(mem(crash.into_iter().next().unwrap()), 0);
            let loaded = match st.read_metadata() {
                Ok(Loaded::Valid(l)) => l,
                other => panic!("{what}: does not load: {other:?}"),
            };
            assert!(
                loaded.len() <= acked && loaded.len() >= acked - in_flight,
                "{what}: {} records, {acked} acknowledged, {in_flight} in flight",
                loaded.len()
            );
            assert_eq!(loaded, list[..loaded.len()], "{what}: not a prefix");
        }
    }
}

// ------------------------------------------------------------------------------------------------
// Regressions: each pins a bug the store once had (named by the test); they pass since its fix.

/// `initialise` once wrote the header and the zeroed area 0 and then flushed once. The two
/// writes were not ordered: a crash before the flush could keep the new header and lose the
/// zeroing, and a reused COW (LVM wipes only its first 4 KiB, i.e. chunk 0 for cs = 8) then
/// reopened with the previous store's records as this snapshot's exceptions. Now area 0 is
/// durable before the header names it.
#[test]
fn bug_initialise_crash_can_resurrect_a_stale_area_0() {
    for seed in 0..32 {
        // A COW that held a store before: wiped header chunk, area 0 still lists two exceptions.
        let mut img = store_image(8, 16, &[(5, 2), (6, 3)]);
        img[..4096].fill(0);
        let world = SimWorld::new();
        let dev = world.device_from("cow", img, 512);
        world.freeze_at_flush(1, CrashMode::Tear { seed });
        let (mut st, list) = open(dev, 8);
        assert!(list.is_empty(), "a new store");
        assert!(st.initialise().is_err(), "crash at its flush");
        let image = world.crash_images().unwrap().remove(0);
        let mut reopened = persistent(mem(image), 8);
        let loaded = valid_list(reopened.read_metadata());
        assert!(
            loaded.is_empty(),
            "seed {seed}: a snapshot that never committed anything loads {loaded:?}"
        );
    }
}

/// A read-only store refuses `prepare_exceptions` and does not write in `drop_snapshot`; it once
/// let `commit_merge` rewrite the area. Now it refuses that too, writing nothing.
#[test]
fn bug_commit_merge_writes_to_a_read_only_store() {
    let img = store_image(8, 16, &[(5, 2), (6, 3)]);
    let dev = mem(img.clone());
    let mut st = PersistentStore::new(dev.clone(), false, 0, geometry(BIG_ORIGIN), true);
    valid_list(st.read_metadata());
    assert_eq!(
        st.prepare_merge().unwrap(),
        Some(MergeRun {
            last_old: 6,
            last_new: 3,
            count: 2
        })
    );
    let result = st.commit_merge(2);
    assert!(dev.contents() == img, "the read-only COW was written");
    assert!(matches!(result, Err(StoreError::ReadOnly)), "{result:?}");
}
