//! I/O at and past the end, and read-only volumes: nothing is written.

use super::*;

// ----- I/O at and past the end ----------------------------------------------------------------

/// Origin of 1 MiB + 1536 bytes (not a whole number of chunks) with a P and an N snapshot.
fn eof_rig() -> (Arc<Volume>, Rig, u64) {
    let mut origin = origin_image();
    origin.extend_from_slice(&[0xab; 1536]);
    let specs = [
        CowSpec::p("p", vec![0u8; 1 << 20]).chunk(8),
        CowSpec::p("n", vec![0u8; 1 << 20]).kind(N).chunk(8),
    ];
    let rig = Rig::new(origin, 512, &specs);
    let volume = Arc::new(rig.open(&specs, VolumeOptions::default()).unwrap());
    let size = volume.size_bytes();
    assert_eq!(size, ORIGIN_BYTES + 1536);
    (volume, rig, size)
}

/// Ranges that reach past the end: the end itself, straddling, far, and overflowing.
fn past_end_ranges(size: u64) -> Vec<(u64, u64)> {
    vec![
        (size, 1),
        (size - 1, 2),
        (size - 100, 4096),
        (size + 1, 0),
        (size + 4096, 4096),
        (1 << 62, 512),
        (u64::MAX, 1),
        (u64::MAX - 10, 20),
        (size - 512, u64::MAX - size + 600),
    ]
}

type Target = Option<Arc<snapfs::Snapshot>>;

fn read(volume: &Volume, target: &Target, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
    match target {
        None => volume.read_origin(offset, buf),
        Some(s) => volume.read_snapshot(s, offset, buf),
    }
}

fn write(volume: &Volume, target: &Target, offset: u64, p: Payload) -> Result<(), VolumeError> {
    match (target, p) {
        (None, Payload::Data(d)) => volume.write_origin(offset, d),
        (None, Payload::Zeroes(n)) => volume.zero_origin(offset, n),
        (None, Payload::Discard(n)) => volume.discard_origin(offset, n),
        (Some(s), Payload::Data(d)) => volume.write_snapshot(s, offset, d),
        (Some(s), Payload::Zeroes(n)) => volume.zero_snapshot(s, offset, n),
        (Some(s), Payload::Discard(n)) => volume.discard_snapshot(s, offset, n),
    }
}

/// Reads and writes that reach past the end fail with `OutOfRange` and touch no device; reads
/// and writes that end exactly at the end work. (The FUSE layer clips reads to the end, so a
/// read at EOF returns 0 bytes there; see tests/e2e_hostile.rs.)
#[test]
fn io_past_the_end_fails_and_writes_nothing() {
    let (volume, rig, size) = eof_rig();
    let targets: Vec<(&str, Target)> = vec![
        ("origin", None),
        ("p", volume.snapshot("p")),
        ("n", volume.snapshot("n")),
    ];
    let writes_before: Vec<u64> = rig.cows.iter().map(|c| c.writes()).collect();
    let status = dm_lines(&volume);
    let mut cases = 0;
    for (name, target) in &targets {
        for (offset, len) in past_end_ranges(size) {
            let ctx = format!("{name} {offset}+{len}");
            if len <= 1 << 20 {
                let mut buf = vec![0u8; len as usize];
                let r = read(&volume, target, offset, &mut buf);
                assert!(
                    matches!(r, Err(VolumeError::OutOfRange { .. })),
                    "{ctx}: read {r:?}"
                );
                let data = vec![0x11u8; len as usize];
                let r = write(&volume, target, offset, Payload::Data(&data));
                assert!(
                    matches!(r, Err(VolumeError::OutOfRange { .. })),
                    "{ctx}: write {r:?}"
                );
            }
            for p in [Payload::Zeroes(len), Payload::Discard(len)] {
                let r = write(&volume, target, offset, p);
                assert!(
                    matches!(r, Err(VolumeError::OutOfRange { .. })),
                    "{ctx}: {r:?}"
                );
            }
            cases += 1;
        }
    }
    rig.origin
        .assert_untouched(&rig.origin_image, "origin after refused I/O");
    let writes_after: Vec<u64> = rig.cows.iter().map(|c| c.writes()).collect();
    assert_eq!(writes_before, writes_after, "no COW was written");
    assert_eq!(dm_lines(&volume), status, "no exception was allocated");
    // Empty reads at the end, and I/O ending exactly at the end, work.
    for (name, target) in &targets {
        read(&volume, target, size, &mut []).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut last = [0u8; 1536];
        read(&volume, target, size - 1536, &mut last).unwrap();
        assert_eq!(last, [0xab; 1536], "{name}: the last bytes");
        write(&volume, target, size - 1, Payload::Data(&[0x77])).unwrap();
        read(&volume, target, size - 1, &mut last[..1]).unwrap();
        assert_eq!(last[0], 0x77, "{name}: the last byte is writable");
    }
    report("I/O past the end", cases);
}

/// A read-only volume refuses every write and never writes a device, whatever is asked.
#[test]
fn a_read_only_volume_never_writes() {
    let spec = [CowSpec::p("s", good_cs8_image())];
    let rig = Rig::new(origin_image(), 512, &spec);
    let ro = VolumeOptions::read_only(true);
    let volume = Arc::new(rig.open(&spec, ro).unwrap());
    let snap: Target = volume.snapshot("s");
    let mut cases = 0;
    for target in [None, snap.clone()] {
        for (offset, len) in [(0u64, 512u64), (12288, 8192), (ORIGIN_BYTES - 1, 1)] {
            let data = vec![0x5au8; len as usize];
            for p in [
                Payload::Data(&data),
                Payload::Zeroes(len),
                Payload::Discard(len),
            ] {
                let r = write(&volume, &target, offset, p);
                assert!(
                    matches!(r, Err(VolumeError::ReadOnly)),
                    "{offset}+{len}: {r:?}"
                );
                cases += 1;
            }
        }
    }
    let mut buf = vec![0u8; 4096];
    volume
        .read_snapshot(snap.as_ref().unwrap(), 3 * 4096, &mut buf)
        .unwrap();
    assert!(
        buf.iter().enumerate().all(|(i, &b)| b == 0x5a ^ i as u8),
        "COW data"
    );
    volume.flush_all().unwrap();
    volume.shutdown().unwrap();
    let merge = volume.start_merge("s");
    assert!(merge.is_err(), "no merge on a read-only volume");
    volume.detach_snapshot("s").unwrap();
    rig.assert_untouched("read-only volume");
    assert_eq!(
        rig.origin.flushes() + rig.cows[0].flushes(),
        0,
        "not even a flush"
    );
    report("read-only volume", cases + 1);
}

/// A COW marked as merging on a read-only volume: the merged view is served (the origin reads
/// as the snapshot did), but nothing may be written, so the merge must not resume.
///
/// BUG (src/volume/merge.rs, `Volume::resume_merge`): it starts the merge thread without
/// checking `options.read_only`, and the thread copies COW chunks onto the origin. Through the
/// FUSE mount the origin file is opened O_RDONLY, so the writes fail with EBADF and the snapshot
/// ends in `Merge failed` (see tests/e2e_hostile.rs); on a device that does not enforce the
/// mode, the origin is written. Fix: return early from `resume_merge` when the volume is
/// read-only (and `start_merge` already refuses).
#[test]
fn a_read_only_volume_does_not_resume_a_merge() {
    let mut img = good_cs8_image();
    img[16..28].copy_from_slice(&MARKER);
    let spec = [CowSpec::p("s", img)];
    let rig = Rig::new(origin_image(), 512, &spec);
    let ro = VolumeOptions::read_only(false);
    let volume = Arc::new(rig.open(&spec, ro).unwrap());
    assert!(
        volume.merging_snapshot().is_some(),
        "the merged view is served"
    );
    let mut buf = vec![0u8; 4096];
    volume.read_origin(3 * 4096, &mut buf).unwrap();
    assert!(
        buf.iter().enumerate().all(|(i, &b)| b == 0x5a ^ i as u8),
        "merged view"
    );
    volume.resume_merge();
    volume.wait_merge();
    rig.assert_untouched("read-only volume with a merge marker");
    report("read-only merge marker", 1);
}
