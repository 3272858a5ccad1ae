//! Injected I/O errors: the failures are the kernel's (a copy or metadata error makes the
//! snapshot Invalid, a merge error makes it `Merge failed`, an origin error fails that write),
//! every waiting request gets an answer, and the volume keeps serving.

mod common;

use common::{MIB, P, Rng, status_word};
use snapfs::device::{Device, MemDevice, SimDevice, SimWorld};
use snapfs::status::dm_lines;
use snapfs::{SnapshotConfig, Volume, VolumeError, VolumeOptions};
use std::sync::Arc;

const ORIGIN_BYTES: u64 = 2 * MIB;

struct Rig {
    origin: Arc<SimDevice>,
    cows: Vec<Arc<SimDevice>>,
    vol: Arc<Volume>,
    initial: Vec<u8>,
}

/// An origin of random data and `chunks.len()` persistent snapshots on simulated devices.
fn rig(seed: u64, chunks: &[u64]) -> Rig {
    let world = SimWorld::new();
    let initial = Rng::new(seed).bytes(ORIGIN_BYTES);
    let origin = world.device_from("origin", initial.clone(), 512);
    let cows: Vec<Arc<SimDevice>> = (0..chunks.len())
        .map(|i| world.device(&format!("cow{i}"), 4 * MIB))
        .collect();
    let configs = cows
        .iter()
        .zip(chunks)
        .enumerate()
        .map(|(i, (cow, &chunk))| SnapshotConfig {
            name: format!("s{i}"),
            cow: cow.clone() as Device,
            kind: P,
            chunk_sectors: chunk,
            features: Default::default(),
        })
        .collect();
    let vol = Volume::open(origin.clone(), configs, VolumeOptions::default()).unwrap();
    Rig {
        origin,
        cows,
        vol: Arc::new(vol),
        initial,
    }
}

fn read_snapshot(vol: &Volume, name: &str) -> Result<Vec<u8>, VolumeError> {
    let snap = vol.snapshot(name).unwrap();
    let mut buf = vec![0u8; vol.size_bytes() as usize];
    vol.read_snapshot(&snap, 0, &mut buf).map(|()| buf)
}

fn read_origin(vol: &Volume) -> Vec<u8> {
    let mut buf = vec![0u8; vol.size_bytes() as usize];
    vol.read_origin(0, &mut buf).unwrap();
    buf
}

/// Reopens the volume from the devices' live content (as after a clean stop).
fn reopen(rig: &Rig, chunks: &[u64]) -> Volume {
    let origin: Device = Arc::new(MemDevice::from_bytes("o", rig.origin.live_image(), 512));
    let configs = rig
        .cows
        .iter()
        .zip(chunks)
        .enumerate()
        .map(|(i, (cow, &chunk))| SnapshotConfig {
            name: format!("s{i}"),
            cow: Arc::new(MemDevice::from_bytes("c", cow.live_image(), 512)) as Device,
            kind: P,
            chunk_sectors: chunk,
            features: Default::default(),
        })
        .collect();
    Volume::open(origin, configs, VolumeOptions::default()).unwrap()
}

/// A COW whose flushes fail: the commit fails, that snapshot turns Invalid (its I/O fails with
/// EIO, and the header says so after a reopen), the origin write succeeds, and the other
/// snapshot keeps its content.
#[test]
fn metadata_error_invalidates_only_that_snapshot() {
    let r = rig(1, &[8, 16]);
    r.cows[0].fail_flushes(true);
    let data = vec![0xAB; 64 * 1024];
    r.vol
        .write_origin(4096, &data)
        .expect("origin write goes on");
    assert_eq!(status_word(&r.vol, "s0"), "Invalid");
    assert!(matches!(
        read_snapshot(&r.vol, "s0"),
        Err(VolumeError::Invalid)
    ));
    assert!(
        read_snapshot(&r.vol, "s1").unwrap() == r.initial,
        "s1 intact"
    );
    assert_eq!(&read_origin(&r.vol)[4096..4096 + data.len()], &data[..]);
    r.cows[0].fail_flushes(false);
    let again = reopen(&r, &[8, 16]);
    assert_eq!(status_word(&again, "s0"), "Invalid", "valid = 0 is on disk");
    assert!(read_snapshot(&again, "s1").unwrap() == r.initial);
}

/// The origin cannot be read for the copy: every snapshot that needed it is invalidated (the
/// kernel's kcopyd read error), and the origin write itself still happens.
#[test]
fn copy_read_error_invalidates_and_the_write_proceeds() {
    let r = rig(2, &[8, 8]);
    r.origin.fail_reads(true);
    r.vol.write_origin(0, &[7; 8192]).unwrap();
    r.origin.fail_reads(false);
    assert_eq!(status_word(&r.vol, "s0"), "Invalid");
    assert_eq!(status_word(&r.vol, "s1"), "Invalid");
    assert_eq!(&read_origin(&r.vol)[..8192], &[7; 8192][..]);
}

/// The origin device fails the write itself: that write gets EIO; the snapshots already hold
/// their copies and stay valid; the next write works.
#[test]
fn origin_write_error_fails_that_write_only() {
    let r = rig(3, &[8]);
    r.origin.fail_writes(true);
    let err = r.vol.write_origin(0, &[1; 4096]).unwrap_err();
    assert!(matches!(err, VolumeError::Io(_)), "{err}");
    r.origin.fail_writes(false);
    assert!(
        status_word(&r.vol, "s0").contains('/'),
        "{}",
        status_word(&r.vol, "s0")
    );
    assert!(read_snapshot(&r.vol, "s0").unwrap() == r.initial);
    r.vol.write_origin(0, &[2; 4096]).unwrap();
    assert_eq!(&read_origin(&r.vol)[..4096], &[2; 4096][..]);
    assert!(read_snapshot(&r.vol, "s0").unwrap() == r.initial);
}

/// A COW read error fails that snapshot read (EIO) without changing any state.
#[test]
fn cow_read_error_fails_the_read_only() {
    let r = rig(4, &[8]);
    r.vol.write_origin(0, &[5; 4096]).unwrap();
    r.cows[0].fail_reads(true);
    assert!(matches!(
        read_snapshot(&r.vol, "s0"),
        Err(VolumeError::Io(_))
    ));
    r.cows[0].fail_reads(false);
    assert!(read_snapshot(&r.vol, "s0").unwrap() == r.initial);
    assert!(status_word(&r.vol, "s0").contains('/'));
}

/// A merge that cannot read its COW stops with `Merge failed`; the origin keeps its merged view
/// and keeps taking writes; after the fault is gone, a reopen resumes and completes the merge.
#[test]
fn merge_error_is_merge_failed_and_io_goes_on() {
    let r = rig(5, &[8]);
    let changed = Rng::new(55).bytes(ORIGIN_BYTES);
    r.vol.write_origin(0, &changed).unwrap();
    r.cows[0].fail_reads(true);
    r.vol.start_merge("s0").unwrap();
    r.vol.wait_merge();
    assert_eq!(status_word(&r.vol, "s0"), "Merge failed");
    assert!(
        dm_lines(&r.vol).contains("# s0 merge failed"),
        "{}",
        dm_lines(&r.vol)
    );
    r.cows[0].fail_reads(false);
    let mut model = r.initial.clone();
    assert!(
        read_origin(&r.vol) == model,
        "merged view after the failure"
    );
    r.vol.write_origin(MIB, &[9; 4096]).unwrap();
    model[MIB as usize..MIB as usize + 4096].fill(9);
    assert!(
        read_origin(&r.vol) == model,
        "writes go on after the failure"
    );
    let again = Arc::new(reopen(&r, &[8]));
    assert!(again.merging_snapshot().is_some());
    again.resume_merge();
    again.wait_merge();
    assert!(again.snapshots().is_empty(), "the resumed merge completes");
    assert!(read_origin(&again) == model);
}

/// Many writers while the COW fails: every request is answered within a bound (none hangs on
/// a commit that will never come), and the origin has every write.
#[test]
fn every_waiting_request_gets_an_answer() {
    let r = rig(6, &[8]);
    r.cows[0].fail_writes_after(40);
    // A hang here (a request waiting for a commit that never comes) would never finish.
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let vol = &r.vol;
            s.spawn(move || {
                for i in 0..16u64 {
                    let off = (t * 16 + i) * 8192;
                    vol.write_origin(off, &[t as u8 + 1; 8192]).unwrap();
                }
            });
        }
    });
    assert_eq!(status_word(&r.vol, "s0"), "Invalid");
    let origin = read_origin(&r.vol);
    for t in 0..8u64 {
        let at = (t * 16 * 8192) as usize;
        assert!(origin[at..at + 16 * 8192].iter().all(|&b| b == t as u8 + 1));
    }
}
