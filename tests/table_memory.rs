//! Memory cost of the exception table, measured with a counting allocator. The goal is under 32
//! bytes per exception for a table of scattered exceptions (the worst case: no runs).
//! Load time of a million exceptions is printed, not asserted (timings belong in benchmarks).

use snapfs::device::{Device, MemDevice};
use snapfs::store::{ExceptionStore, Loaded, OriginGeometry, PersistentStore};
use snapfs::table::ExceptionTable;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const N: u64 = 1_000_000;

/// A permutation of 0..n scattered enough that no two neighbours form a run.
fn scattered(n: u64) -> Vec<(u64, u64)> {
    (0..n)
        .map(|i| ((i * 7_919) % (4 * n), 2 + i + i / 256))
        .collect()
}

fn bytes_per_exception(build: impl FnOnce() -> ExceptionTable) -> f64 {
    let before = LIVE.load(Ordering::SeqCst);
    let table = build();
    let after = LIVE.load(Ordering::SeqCst);
    assert_eq!(table.len(), N);
    let per = (after - before) as f64 / N as f64;
    drop(table);
    per
}

#[test]
fn memory_per_exception() {
    // The input vectors are built outside the measured window.
    let pairs = scattered(N);
    let loaded = bytes_per_exception(|| ExceptionTable::from_pairs(pairs.clone()));
    let t = ExceptionTable::new();
    let inserted = bytes_per_exception(|| {
        for &(o, n) in &pairs {
            t.insert(o, n);
        }
        t
    });
    let runs: Vec<(u64, u64)> = (0..N).map(|i| (i, 2 + i + i / 256)).collect();
    let sequential = bytes_per_exception(|| ExceptionTable::from_pairs(runs.clone()));
    eprintln!(
        "bytes per exception: loaded scattered {loaded:.1}, inserted scattered {inserted:.1}, \
         loaded consecutive {sequential:.2}"
    );
    assert!(
        loaded < 32.0,
        "loaded table: {loaded:.1} bytes per exception"
    );
    assert!(
        inserted < 48.0,
        "inserted table: {inserted:.1} bytes per exception"
    );
    assert!(
        sequential < 1.0,
        "runs: {sequential:.2} bytes per exception"
    );
}

/// A COW with a million exceptions loads and every exception is found where it was written.
#[test]
fn load_a_million_exceptions() {
    let chunk_sectors = 8u64;
    let cs_bytes = chunk_sectors * 512;
    let e = cs_bytes / 16;
    let origin_bytes = 4 * N * cs_bytes;
    let cow_chunks = 2 + N + N / e + 2;
    let cow: Device = Arc::new(MemDevice::new("cow", cow_chunks * cs_bytes));
    // Write the COW through the store itself: prepare and commit in batches.
    let pairs = scattered(N);
    {
        let geometry = OriginGeometry {
            size_bytes: origin_bytes,
            block_bytes: 512,
        };
        let mut store = PersistentStore::new(cow.clone(), false, chunk_sectors, geometry, false);
        assert!(matches!(store.read_metadata().unwrap(), Loaded::Valid(v) if v.is_empty()));
        store.initialise().unwrap();
        for batch in pairs.chunks(4096) {
            let p = store.prepare_exceptions(batch.len()).unwrap();
            let olds: Vec<u64> = batch.iter().map(|&(o, _)| o).collect();
            store.commit_exceptions(p, &olds, true).unwrap();
        }
    }
    // The store only needs the origin's geometry (to range-check old chunks), not its data.
    let started = std::time::Instant::now();
    let geometry = OriginGeometry {
        size_bytes: origin_bytes,
        block_bytes: 512,
    };
    let mut store = PersistentStore::new(cow.clone(), false, 0, geometry, false);
    let Loaded::Valid(loaded) = store.read_metadata().unwrap() else {
        panic!("store must load as valid");
    };
    let table = ExceptionTable::from_pairs(loaded);
    eprintln!(
        "loaded {} exceptions in {:?} ({} runs)",
        table.len(),
        started.elapsed(),
        table.runs()
    );
    assert_eq!(table.len(), N);
    for (k, &(old, _)) in pairs.iter().enumerate().step_by(997) {
        let k = k as u64;
        assert_eq!(table.lookup(old), Some(2 + k + k / e), "exception {k}");
    }
}
