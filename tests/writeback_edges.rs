//! Write-back edges: an origin write that fails after its answer must reach someone's fsync.
//!
//! As the kernel's errseq: an error no fsync has reported yet is reported to a handle opened
//! after it (a writer that ignored its close's error, then `sync FILE`, must still see it);
//! once an fsync reported it, handles opened later do not see it again. A close reports it to
//! its own caller but leaves it pending for the others (most programs ignore close's result).
//!
//! Control commands that read what the volume holds must see every acknowledged write: the
//! changed-chunk map (`changes`) of a snapshot lists the chunk of a write still held.

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

/// Fails every write while `failing` is set.
struct Failing {
    failing: AtomicBool,
}

impl DeviceHooks<MemDevice> for Failing {
    fn write_at(&self, inner: &MemDevice, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("injected write error"));
        }
        inner.write_at(buf, offset)
    }
}

type Origin = Wrapped<MemDevice, Failing>;

fn rig(seed: u64) -> (Arc<Origin>, Vec<u8>, Volume) {
    let image = Rng::new(seed).bytes(ORIGIN_BYTES);
    let origin = Arc::new(Wrapped::around(
        Arc::new(MemDevice::from_bytes("origin", image.clone(), 512)),
        Failing {
            failing: AtomicBool::new(false),
        },
    ));
    let cow: Device = Arc::new(MemDevice::from_bytes(
        "cow",
        vec![0; (ORIGIN_BYTES * 2) as usize],
        512,
    ));
    let options = VolumeOptions {
        writeback_bytes: 1 << 20,
        ..VolumeOptions::default()
    };
    let vol = Volume::open(origin.clone(), vec![config("s", &cow, P, 8)], options).unwrap();
    (origin, image, vol)
}

/// A held first write whose origin write fails after the answer.
fn failed_held_write(origin: &Origin, vol: &Volume) {
    origin.failing.store(true, Ordering::SeqCst);
    vol.write_origin(0, &[7u8; 4096])
        .expect("a held write is answered before its origin write");
    vol.drain();
    origin.failing.store(false, Ordering::SeqCst);
}

#[test]
fn a_handle_opened_after_an_unreported_error_reports_it() {
    let (origin, image, vol) = rig(21);
    failed_held_write(&origin, &vol);
    let mut late = vol.origin_error_seq();
    assert!(
        vol.sync_origin(&mut late).is_err(),
        "an error no fsync had reported was lost for a handle opened after it"
    );
    assert!(vol.sync_origin(&mut late).is_ok(), "reported twice");
    // Reported once by an fsync: a handle opened now does not see it again.
    let mut later = vol.origin_error_seq();
    assert!(vol.sync_origin(&mut later).is_ok());
    // The snapshot kept the old data; the lost write is not on the origin.
    let mut buf = vec![0u8; 4096];
    vol.read_snapshot(&vol.snapshot("s").unwrap(), 0, &mut buf)
        .unwrap();
    assert_eq!(buf, image[..4096]);
}

#[test]
fn an_error_reported_only_at_a_close_stays_pending_for_the_next_fsync() {
    let (origin, _, vol) = rig(22);
    let mut writer = vol.origin_error_seq();
    failed_held_write(&origin, &vol);
    assert!(
        vol.sync_origin_keeping(&mut writer).is_err(),
        "the writer's close did not report its lost write"
    );
    // The writer ignored its close's result; `sync FILE` opens and fsyncs.
    let mut syncer = vol.origin_error_seq();
    assert!(
        vol.sync_origin(&mut syncer).is_err(),
        "an error seen only by a close was lost for the next fsync"
    );
    let mut later = vol.origin_error_seq();
    assert!(vol.sync_origin(&mut later).is_ok());
}

/// Flushes wait while the gate is closed: a held write's commit stops there.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    waiting: AtomicU64,
}

impl DeviceHooks<MemDevice> for Gate {
    fn flush(&self, inner: &MemDevice) -> std::io::Result<()> {
        let mut closed = self.closed.lock().unwrap();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
        drop(closed);
        inner.flush()
    }
}

#[test]
fn the_changes_of_a_snapshot_list_a_held_write() {
    let origin: Device = Arc::new(MemDevice::from_bytes(
        "origin",
        Rng::new(23).bytes(ORIGIN_BYTES),
        512,
    ));
    let cow = Arc::new(Wrapped::around(
        Arc::new(MemDevice::from_bytes(
            "cow",
            vec![0; (ORIGIN_BYTES * 2) as usize],
            512,
        )),
        Gate::default(),
    ));
    let cow_dev: Device = cow.clone();
    let options = VolumeOptions {
        writeback_bytes: 1 << 20,
        ..VolumeOptions::default()
    };
    let vol = Arc::new(Volume::open(origin, vec![config("s", &cow_dev, P, 8)], options).unwrap());
    *cow.hooks.closed.lock().unwrap() = true;
    // Chunk 10 (4 KiB chunks): answered, its commit waiting at the gate.
    vol.write_origin(40 * KIB, &[9u8; 4096]).unwrap();
    while cow.hooks.waiting.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let opener = {
        let cow = cow.clone();
        std::thread::spawn(move || {
            // Gives a `changes` that does not wait for the held write the time to answer
            // without it (a `changes` that waits passes whenever the gate opens).
            std::thread::sleep(std::time::Duration::from_millis(100));
            *cow.hooks.closed.lock().unwrap() = false;
            cow.hooks.opened.notify_all();
        })
    };
    let ledger = snapfs::registry::Ledger::new(None, false, Vec::new());
    let none = |_: &str| 0;
    let context = snapfs::control::Context {
        volume: &vol,
        ledger: &ledger,
        open_handles: &none,
    };
    let command = snapfs::control::parse_command(b"changes s").unwrap();
    let text = snapfs::control::execute(&context, &command).unwrap();
    opener.join().unwrap();
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().next() == Some("10")),
        "the changes of s miss the chunk of an acknowledged write:\n{text}"
    );
}

/// The first write after `armed` is set waits until the other COW's first write arrives too.
struct Meet {
    armed: AtomicBool,
    barrier: Arc<std::sync::Barrier>,
}

impl DeviceHooks<MemDevice> for Meet {
    fn write_at(&self, inner: &MemDevice, buf: &[u8], offset: u64) -> std::io::Result<()> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.barrier.wait();
        }
        inner.write_at(buf, offset)
    }
}

/// A group's copies to two snapshots run at once (one thread each), so two stores' writes and
/// flushes overlap: each COW's first copy waits for the other's. Copies made one after the
/// other would wait forever (the test fails by hanging, never by timing).
#[test]
fn a_group_copies_to_its_snapshots_at_once() {
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let cows: Vec<Arc<Wrapped<MemDevice, Meet>>> = ["a", "b"]
        .iter()
        .map(|name| {
            Arc::new(Wrapped::around(
                Arc::new(MemDevice::from_bytes(
                    name,
                    vec![0; (ORIGIN_BYTES * 2) as usize],
                    512,
                )),
                Meet {
                    armed: AtomicBool::new(false),
                    barrier: barrier.clone(),
                },
            ))
        })
        .collect();
    let image = Rng::new(24).bytes(ORIGIN_BYTES);
    let origin: Device = Arc::new(MemDevice::from_bytes("origin", image.clone(), 512));
    let configs = cows
        .iter()
        .zip(["a", "b"])
        .map(|(cow, name)| {
            let dev: Device = cow.clone();
            config(name, &dev, P, 8)
        })
        .collect();
    let options = VolumeOptions {
        writeback_bytes: 1 << 20,
        ..VolumeOptions::default()
    };
    let vol = Volume::open(origin, configs, options).unwrap();
    cows.iter()
        .for_each(|c| c.hooks.armed.store(true, Ordering::SeqCst));
    vol.write_origin(0, &[5u8; 4096]).unwrap();
    vol.drain();
    let mut buf = vec![0u8; 4096];
    for name in ["a", "b"] {
        vol.read_snapshot(&vol.snapshot(name).unwrap(), 0, &mut buf)
            .unwrap();
        assert_eq!(buf, image[..4096], "snapshot {name}");
    }
}
