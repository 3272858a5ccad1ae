//! Write-back (`writeback=SIZE`): origin first writes answered before their copy-out is durable.
//!
//! A COW whose flushes wait at a gate holds the worker inside its commit, so every test sees
//! the state between the answer and the copy-out: reads must see the acknowledged data, the
//! origin device must still hold the old data, and every operation that must drain (flush,
//! snapshot creation, merge start) must wait for the copy-out and then see the write in place.
//! An origin device that fails writes on demand checks the deferred error reporting.

mod common;

use common::*;
use snapfs::device::{BlockDevice, Device, DeviceHooks, MemDevice, Wrapped};
use snapfs::store::StoreKind;
use snapfs::{Volume, VolumeOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

const ORIGIN_BYTES: u64 = 256 * KIB;
const P: StoreKind = StoreKind::Persistent { overflow: false };

/// A device whose flushes wait while the gate is closed, and whose writes fail while `failing`.
type Gated = Wrapped<MemDevice, Gate>;

struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Flushes waiting at the gate (a test waits for the worker to arrive there).
    waiting: AtomicU64,
    failing: AtomicBool,
    /// Writes and flushes in the order the device saw them.
    events: Mutex<Vec<&'static str>>,
}

fn gated(name: &str, image: Vec<u8>) -> Arc<Gated> {
    let gate = Gate {
        closed: Mutex::new(false),
        opened: Condvar::new(),
        waiting: AtomicU64::new(0),
        failing: AtomicBool::new(false),
        events: Mutex::new(Vec::new()),
    };
    Arc::new(Wrapped::around(
        Arc::new(MemDevice::from_bytes(name, image, 512)),
        gate,
    ))
}

/// The bytes the device holds, past the gate.
fn bytes(dev: &Gated, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    dev.inner.read_at(&mut buf, offset).unwrap();
    buf
}

impl Gate {
    fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.opened.notify_all();
    }

    /// Waits (without a deadline: the test fails by hanging, never by timing) until a flush
    /// waits at the gate.
    fn wait_for_a_waiting_flush(&self) {
        while self.waiting.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
    }
}

impl DeviceHooks<MemDevice> for Gate {
    fn write_at(&self, inner: &MemDevice, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write error"));
        }
        self.events.lock().unwrap().push("write");
        inner.write_at(buf, offset)
    }
    fn flush(&self, inner: &MemDevice) -> std::io::Result<()> {
        let mut closed = self.closed.lock().unwrap();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        drop(closed);
        self.events.lock().unwrap().push("flush");
        inner.flush()
    }
}

struct Rig {
    origin: Arc<Gated>,
    cow: Arc<Gated>,
    image: Vec<u8>,
    vol: Arc<Volume>,
}

/// A volume with one persistent snapshot `s` (4 KiB chunks) and write-back on.
fn rig(seed: u64) -> Rig {
    let image = Rng::new(seed).bytes(ORIGIN_BYTES);
    let origin = gated("origin", image.clone());
    let cow = gated("cow", vec![0; (ORIGIN_BYTES * 2) as usize]);
    let options = VolumeOptions {
        writeback_bytes: 1 << 20,
        ..VolumeOptions::default()
    };
    let cow_dev: Device = cow.clone();
    let vol = Volume::open(origin.clone(), vec![config("s", &cow_dev, P, 8)], options).unwrap();
    Rig {
        origin,
        cow,
        image,
        vol: Arc::new(vol),
    }
}

fn read_origin(vol: &Volume, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    vol.read_origin(offset, &mut buf).unwrap();
    buf
}

fn read_snap(vol: &Volume, name: &str, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    vol.read_snapshot(&vol.snapshot(name).unwrap(), offset, &mut buf)
        .unwrap();
    buf
}

/// Writes `data` at `offset` with the COW's gate closed and returns once the worker waits in
/// the commit: the write is answered, its copy-out not durable.
fn held_write(r: &Rig, offset: u64, data: &[u8]) {
    r.cow.close();
    r.vol.write_origin(offset, data).unwrap();
    r.cow.wait_for_a_waiting_flush();
}

#[test]
fn reads_see_a_held_write_and_the_origin_waits_for_the_commit() {
    // Small writes read their old data before the answer; large ones leave it to the worker.
    for (seed, len) in [(1, 20 * KIB), (2, 160 * KIB)] {
        held_write_is_visible(seed, len);
    }
}

fn held_write_is_visible(seed: u64, len: u64) {
    let r = rig(seed);
    let (off, data) = (10 * KIB + 100, Rng::new(seed + 100).bytes(len));
    held_write(&r, off, &data);
    assert_eq!(
        read_origin(&r.vol, off, len),
        data,
        "origin read misses the write"
    );
    // Larger than the write and unaligned: device bytes around the held ones.
    let mut want = r.image[..(off + len + 5000) as usize].to_vec();
    write_model(&mut want, off, &data);
    assert_eq!(read_origin(&r.vol, 0, off + len + 5000), want);
    let old = &r.image[off as usize..(off + len) as usize];
    assert_eq!(
        read_snap(&r.vol, "s", off, len),
        old,
        "snapshot shows new data"
    );
    assert_eq!(
        bytes(&r.origin, off, len),
        old,
        "the origin device received new data before the commit was durable"
    );
    r.cow.open();
    r.vol.flush_origin().unwrap();
    assert_eq!(
        bytes(&r.origin, off, len),
        data,
        "flush left the write held"
    );
    assert_eq!(read_snap(&r.vol, "s", off, len), old);
}

#[test]
fn a_flush_waits_for_the_held_writes() {
    let r = rig(12);
    held_write(&r, 0, &[3u8; 8192]);
    r.origin.events.lock().unwrap().clear();
    let cow = r.cow.clone();
    // Opens the gate while the flush below runs: without the drain, the origin's flush would
    // come before the held write reaches it.
    let opener = std::thread::spawn(move || cow.open());
    r.vol.flush_origin().unwrap();
    opener.join().unwrap();
    assert_eq!(
        *r.origin.events.lock().unwrap(),
        ["write", "flush"],
        "the flush did not wait for the held write"
    );
    assert_eq!(bytes(&r.origin, 0, 8192), [3u8; 8192]);
}

#[test]
fn a_second_write_to_a_held_chunk_lands_after_the_first() {
    let r = rig(3);
    let first = Rng::new(4).bytes(8 * KIB);
    held_write(&r, 8 * KIB, &first);
    let vol = r.vol.clone();
    let second = Rng::new(5).bytes(KIB);
    let second2 = second.clone();
    // Overlapping the held write's chunks: it waits for the first to reach the origin.
    let t = std::thread::spawn(move || vol.write_origin(9 * KIB, &second2).unwrap());
    r.cow.open();
    t.join().unwrap();
    r.vol.flush_origin().unwrap();
    let mut want = r.image[8 * KIB as usize..16 * KIB as usize].to_vec();
    want[..8 * KIB as usize].copy_from_slice(&first);
    want[KIB as usize..2 * KIB as usize].copy_from_slice(&second);
    assert_eq!(bytes(&r.origin, 8 * KIB, 8 * KIB), want);
    assert_eq!(
        read_snap(&r.vol, "s", 8 * KIB, 8 * KIB),
        r.image[8 * KIB as usize..16 * KIB as usize]
    );
}

#[test]
fn a_snapshot_taken_after_held_writes_contains_them() {
    let r = rig(6);
    let (off, data) = (32 * KIB, Rng::new(7).bytes(12 * KIB));
    let len = data.len() as u64;
    held_write(&r, off, &data);
    let vol = r.vol.clone();
    let late: Device = Arc::new(MemDevice::from_bytes(
        "late",
        vec![0; (ORIGIN_BYTES * 2) as usize],
        512,
    ));
    let t = std::thread::spawn(move || vol.attach_snapshot(config("late", &late, P, 8)).unwrap());
    r.cow.open();
    t.join().unwrap();
    assert_eq!(
        read_snap(&r.vol, "late", off, len),
        data,
        "new snapshot misses the write"
    );
    let old = &r.image[off as usize..(off + len) as usize];
    assert_eq!(
        read_snap(&r.vol, "s", off, len),
        old,
        "old snapshot shows it"
    );
    // Writing again copies the acknowledged data, not the older data, into the new snapshot.
    r.vol.write_origin(off, &vec![0xEE; len as usize]).unwrap();
    r.vol.flush_origin().unwrap();
    assert_eq!(read_snap(&r.vol, "late", off, len), data);
    assert_eq!(read_snap(&r.vol, "s", off, len), old);
}

#[test]
fn a_merge_started_after_held_writes_keeps_them() {
    let r = rig(8);
    let (off, data) = (100 * KIB, Rng::new(9).bytes(40 * KIB));
    let len = data.len() as u64;
    held_write(&r, off, &data);
    let vol = r.vol.clone();
    let t = std::thread::spawn(move || vol.start_merge("s").unwrap());
    r.cow.open();
    t.join().unwrap();
    r.vol.wait_merge();
    assert!(r.vol.snapshot("s").is_none(), "the merge did not complete");
    // The merge restored the snapshot's content: the origin as it was when the snapshot was
    // taken. The held write went through its copy-out first, so the merge copied the old data
    // back over it; a held write that reached the origin after the merge would show here.
    assert_eq!(read_origin(&r.vol, 0, ORIGIN_BYTES), r.image);
    assert_eq!(
        bytes(&r.origin, off, len),
        &r.image[off as usize..(off + len) as usize]
    );
}

#[test]
fn fsync_reports_a_write_error_after_the_answer_once_per_handle() {
    let r = rig(10);
    let (mut a, mut b) = (r.vol.origin_error_seq(), r.vol.origin_error_seq());
    r.origin.failing.store(true, Ordering::SeqCst);
    held_write(&r, 0, &[7u8; 4096]);
    r.cow.open();
    r.vol.drain();
    r.origin.failing.store(false, Ordering::SeqCst);
    assert!(
        r.vol.sync_origin(&mut a).is_err(),
        "the error was not reported"
    );
    assert!(
        r.vol.sync_origin(&mut a).is_ok(),
        "reported twice to one handle"
    );
    // Opened after an fsync reported it (before that, it would see it: writeback_edges.rs).
    let mut c = r.vol.origin_error_seq();
    assert!(
        r.vol.sync_origin(&mut b).is_err(),
        "not reported to the second handle"
    );
    assert!(
        r.vol.sync_origin(&mut c).is_ok(),
        "reported to a handle opened later"
    );
    assert!(
        r.vol.flush_origin().is_err(),
        "flush_origin's own handle missed it"
    );
    assert!(r.vol.flush_origin().is_ok());
}

#[test]
fn concurrent_held_writes_reach_every_device_and_stay_bounded() {
    let r = rig(11);
    let done = Arc::new(AtomicU64::new(0));
    let mut want = r.image.clone();
    let mut threads = Vec::new();
    for t in 0..4u64 {
        let vol = r.vol.clone();
        let done = done.clone();
        let mut writes = Vec::new();
        let mut rng = Rng::new(100 + t);
        for i in 0..32u64 {
            // Each thread its own stripe of 4 KiB chunks; sizes up to 16 KiB.
            let chunk = (i * 4 + t) % (ORIGIN_BYTES / (4 * KIB));
            let len = rng.between(1, 4) * KIB;
            let data = rng.bytes(len);
            writes.push((chunk * 4 * KIB, data));
        }
        for (off, data) in &writes {
            write_model(&mut want, *off, data);
        }
        threads.push(std::thread::spawn(move || {
            for (off, data) in writes {
                vol.write_origin(off, &data).unwrap();
                let mut back = vec![0u8; data.len()];
                vol.read_origin(off, &mut back).unwrap();
                assert_eq!(back, data, "a read after the answer missed the write");
                done.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    r.vol.flush_origin().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 128);
    assert_eq!(bytes(&r.origin, 0, ORIGIN_BYTES), want);
    assert_eq!(read_snap(&r.vol, "s", 0, ORIGIN_BYTES), r.image);
    // Reopened from the devices: every exception committed, every copy intact.
    let vol = Volume::open(
        r.origin.clone(),
        vec![config("s", &(r.cow.clone() as Device), P, 8)],
        VolumeOptions::default(),
    )
    .unwrap();
    assert_eq!(read_snap(&vol, "s", 0, ORIGIN_BYTES), r.image);
}
