//! A persistent store that turns invalid while a writer has other committers' batches in
//! flight: those committers must wait for the writer to publish them, never spin holding the
//! lock the writer needs to publish (found under write-back: two worker groups committing to a
//! COW that filled up hung the daemon). The test fails by hanging, never by timing.

use snapfs::device::{BlockDevice, Device, DeviceHooks, MemDevice, Wrapped};
use snapfs::store::{OriginGeometry, StoreKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The n-th flush (from 1) waits until `tickets >= n`; `arrived` counts flushes begun.
#[derive(Default)]
struct Tickets {
    tickets: AtomicU64,
    arrived: AtomicU64,
}

impl DeviceHooks<MemDevice> for Tickets {
    fn flush(&self, inner: &MemDevice) -> std::io::Result<()> {
        let n = self.arrived.fetch_add(1, Ordering::SeqCst) + 1;
        while self.tickets.load(Ordering::SeqCst) < n {
            std::thread::yield_now();
        }
        inner.flush()
    }
}

fn wait_arrived(cow: &Wrapped<MemDevice, Tickets>, n: u64) {
    while cow.hooks.arrived.load(Ordering::SeqCst) < n {
        std::thread::yield_now();
    }
}

#[test]
fn committers_wait_for_the_writer_when_the_store_turns_invalid() {
    let cow = Arc::new(Wrapped::around(
        Arc::new(MemDevice::from_bytes("cow", vec![0; 4 << 20], 512)),
        Tickets::default(),
    ));
    let dev: Device = cow.clone();
    let geometry = OriginGeometry {
        size_bytes: 4 << 20,
        block_bytes: 512,
    };
    let mut store = snapfs::store::open(
        StoreKind::Persistent { overflow: false },
        dev,
        8,
        geometry,
        false,
    )
    .unwrap();
    cow.hooks.tickets.store(u64::MAX, Ordering::SeqCst);
    store.read_metadata().unwrap();
    store.initialise().unwrap();
    cow.hooks.tickets.store(0, Ordering::SeqCst);
    cow.hooks.arrived.store(0, Ordering::SeqCst);
    let store: Arc<dyn snapfs::store::ExceptionStore> = Arc::from(store);
    let commit = |old: u64, copied: bool| {
        let store = store.clone();
        let prepared = store.prepare_exceptions(1).unwrap();
        std::thread::spawn(move || store.commit_exceptions(prepared, &[old], copied))
    };
    // A becomes the writer and waits in its data flush (#1).
    let a = commit(1, true);
    wait_arrived(&cow, 1);
    // B and D queue behind it (not covered by flush #1).
    let b = commit(2, true);
    let d = commit(3, true);
    // Only lets B and D reach their wait; the fixed store passes whatever this sleep is.
    std::thread::sleep(std::time::Duration::from_millis(200));
    cow.hooks.tickets.store(1, Ordering::SeqCst);
    wait_arrived(&cow, 2); // A writes its records: flush #2
    cow.hooks.tickets.store(2, Ordering::SeqCst);
    // B or D becomes the writer, takes both batches, and waits in flush #3.
    wait_arrived(&cow, 3);
    // A failed copy turns the store invalid meanwhile.
    let c = commit(4, false);
    assert!(c.join().unwrap().is_err(), "a failed copy committed");
    cow.hooks.tickets.store(u64::MAX, Ordering::SeqCst);
    assert!(a.join().unwrap().is_ok());
    // Both return (each as the writer published it); before the fix one spun forever.
    let _ = b.join().unwrap();
    let _ = d.join().unwrap();
}
