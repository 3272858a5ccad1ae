//! Unit tests of the persistent store (hand-written COW images, field by field), one file per
//! part of the format document: new stores, allocation, placement, reload and area zeroing
//! (`layout`), group commit and ordering (`commit`), rejections and the header (`rejections`),
//! failures and ENOSPC (`failures`), merge and the merge marker (`merge`), crashes at every
//! flush point (`crash`), and tests that pin bugs the store once had (`regressions`). The
//! helpers the transient store's tests share are in `store/test_support.rs`; the ones here
//! look inside `PersistentStore`.

use super::*;
use crate::device::{BlockDevice, CrashMode, DeviceHooks, MemDevice, SimDevice, SimWorld, Wrapped};
use crate::store::test_support::*;
use crate::units::ChunkSizeError;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

mod commit;
mod crash;
mod failures;
mod layout;
mod merge;
mod regressions;
mod rejections;

fn persistent(dev: Device, requested_sectors: u64) -> PersistentStore {
    PersistentStore::new(dev, false, requested_sectors, geometry(BIG_ORIGIN), false)
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

/// A cs = 8 store formatted on a recorder of 32 chunks, with old chunks 10, 11 and 12
/// committed (new chunks 2, 3, 4), the log emptied; and the device's bytes at that point.
fn store_of_three() -> (PersistentStore, Arc<Recorder>, Vec<u8>) {
    let dev = Recorder::new(vec![0; 32 * 4096]);
    let st = format(dev.clone(), 8);
    commit(&st, &[10, 11, 12]);
    let before = dev.contents();
    dev.take_ops();
    (st, dev, before)
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

/// How a load is asked for in the refusal tests (and where another test expects one).
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

/// Old chunks of the merge example: runs of 156, 100, 20 and 24 exceptions.
fn merge_old(k: u64) -> u64 {
    match k {
        0..156 => 10_000 + k,
        156..256 => 20_000 + k,
        256..276 => 30_000 + k,
        _ => 40_000 + k,
    }
}
