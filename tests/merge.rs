//! Merge: the origin rolls back to a snapshot, online, with concurrent I/O, and resumes after a
//! stop or a crash. Every read is compared with a byte model. Seeds: SNAPFS_SEED replays one,
//! SNAPFS_MERGE_SEEDS runs more.

mod common;

use common::{P, Rng, check_origin, check_snapshot, config, slow_flush, write_model};
use snapfs::device::{CrashMode, Device, MemDevice, SimWorld};
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{Volume, VolumeOptions};
use std::sync::Arc;

const ORIGIN_BYTES: u64 = (1 << 20) + 8192;

/// A random range inside the origin: small, chunk-crossing or large.
fn range(rng: &mut Rng) -> (u64, u64) {
    let len = match rng.below(3) {
        0 => 1 + rng.below(1024),
        1 => 1 + rng.below(20_000),
        _ => 1 + rng.below(200_000),
    };
    let off = rng.below(ORIGIN_BYTES - len + 1);
    (off, len)
}

fn seeds(default: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("SNAPFS_SEED") {
        return vec![s.parse().expect("SNAPFS_SEED")];
    }
    let n = std::env::var("SNAPFS_MERGE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (1..=n).collect()
}

fn read_all(dev: &Device) -> Vec<u8> {
    let mut v = vec![0u8; dev.size_bytes() as usize];
    dev.read_at(&mut v, 0).unwrap();
    v
}

/// The status word of snapshot `name` (the text after the target type).
fn status_word(vol: &Volume, name: &str) -> String {
    let status = dm_lines(vol);
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no status line for {name}: {status}"));
    line.splitn(5, ' ').nth(4).unwrap().to_string()
}

/// Random origin and snapshot writes; then a merge of the persistent snapshot `b` (the origin
/// rolls back to its content while `a` keeps its own), then a merge of `a` (of `kind`) with
/// concurrent origin reads and writes: the origin reads as the model at every step.
fn merge_under_load(seed: u64, kind: StoreKind, merge_chunk: u64) {
    let mut rng = Rng::new(seed);
    let initial = rng.bytes(ORIGIN_BYTES);
    let origin: Device = Arc::new(MemDevice::from_bytes("origin", initial.clone(), 512));
    let cow_a: Device = Arc::new(MemDevice::new("cow-a", 4 << 20));
    let cow_b: Device = Arc::new(MemDevice::new("cow-b", 4 << 20));
    let vol = Arc::new(
        Volume::open(
            origin,
            vec![
                config("a", &cow_a, kind, merge_chunk),
                config("b", &cow_b, P, 16),
            ],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    let mut a_model = initial.clone();
    for _ in 0..60 {
        let (off, len) = range(&mut rng);
        let data = rng.bytes(len);
        if rng.below(3) == 0 {
            let a = vol.snapshot("a").unwrap();
            vol.write_snapshot(&a, off, &data).unwrap();
            write_model(&mut a_model, off, &data);
        } else {
            vol.write_origin(off, &data).unwrap();
        }
    }
    check_snapshot(&vol, "b", &initial, seed, "before its merge");
    assert_eq!(vol.start_merge("b").unwrap(), "b");
    check_origin(&vol, &initial, seed, "right after b's merge started");
    vol.wait_merge();
    check_origin(&vol, &initial, seed, "after merging b");
    check_snapshot(&vol, "a", &a_model, seed, "after b's merge");
    assert!(
        vol.snapshot("b").is_none(),
        "seed {seed}: b is gone after its merge"
    );

    let name = vol.start_merge("a").expect("the last snapshot");
    assert_eq!(name, "a");
    let mut origin_model = a_model.clone();
    check_origin(&vol, &origin_model, seed, "right after a's merge started");
    for i in 0..40 {
        let (off, len) = range(&mut rng);
        if i % 2 == 0 {
            let data = rng.bytes(len);
            vol.write_origin(off, &data).unwrap();
            write_model(&mut origin_model, off, &data);
        } else {
            let mut buf = vec![0u8; len as usize];
            vol.read_origin(off, &mut buf).unwrap();
            assert!(
                buf == origin_model[off as usize..(off + len) as usize],
                "seed {seed}: origin read during the merge differs at {off}+{len}"
            );
        }
    }
    vol.wait_merge();
    check_origin(&vol, &origin_model, seed, "after the merge");
    assert!(
        vol.snapshots().is_empty(),
        "seed {seed}: merged snapshot detached"
    );
    assert_eq!(
        dm_lines(&vol).lines().count(),
        1,
        "seed {seed}: {}",
        dm_lines(&vol)
    );
    if kind.is_persistent() {
        // The COW is an empty valid store now: allocated == metadata.
        let reopened = Volume::open(
            Arc::new(MemDevice::from_bytes("o", origin_model.clone(), 512)),
            vec![config("a", &cow_a, kind, 0)],
            VolumeOptions::default(),
        )
        .unwrap();
        let word = status_word(&reopened, "a");
        let (alloc, rest) = word.split_once('/').unwrap();
        assert_eq!(
            alloc,
            rest.split(' ').nth(1).unwrap(),
            "seed {seed}: {word}"
        );
        assert!(reopened.merging_snapshot().is_none(), "marker cleared");
    }
}

#[test]
fn merge_persistent_under_load() {
    for seed in seeds(4) {
        merge_under_load(seed, P, 8);
    }
}

#[test]
fn merge_transient_under_load() {
    for seed in seeds(4) {
        merge_under_load(seed, StoreKind::Transient, 32);
    }
}

#[test]
fn merge_refusals_change_nothing() {
    // Slow flushes and one-sector chunks keep x's merge running while y's is refused.
    let origin: Device = slow_flush(Arc::new(MemDevice::new("origin", ORIGIN_BYTES)));
    let cows: Vec<Device> = (0..2)
        .map(|i| Arc::new(MemDevice::new(&format!("cow{i}"), 4 << 20)) as Device)
        .collect();
    let vol = Arc::new(
        Volume::open(
            origin,
            vec![config("x", &cows[0], P, 1), config("y", &cows[1], P, 8)],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    let before: Vec<Vec<u8>> = cows.iter().map(read_all).collect();
    assert!(vol.start_merge("nope").is_err());
    let after: Vec<Vec<u8>> = cows.iter().map(read_all).collect();
    assert!(before == after, "refusals change nothing");
    vol.write_origin(0, &vec![1; ORIGIN_BYTES as usize])
        .unwrap();
    vol.start_merge("x").unwrap();
    let busy = vol.start_merge("y").unwrap_err();
    assert!(busy.is_busy(), "{busy}");
    vol.wait_merge();
    let mut buf = [9u8; 4096];
    vol.read_origin(0, &mut buf).unwrap();
    assert_eq!(buf, [0; 4096], "rolled back");
    check_snapshot(&vol, "y", &[0; 4096], 0, "y was taken before the write");
}

/// A stopped merge (unmount) resumes at the next open: the merged view holds before resuming.
#[test]
fn merge_stops_and_resumes() {
    let mut rng = Rng::new(77);
    let initial = rng.bytes(ORIGIN_BYTES);
    let origin: Device = slow_flush(Arc::new(MemDevice::from_bytes(
        "origin",
        initial.clone(),
        512,
    )));
    let cow: Device = Arc::new(MemDevice::new("cow", 4 << 20));
    // One-sector chunks: runs of at most 32 chunks, so ~65 steps of at least 1 ms each.
    let vol = Arc::new(
        Volume::open(
            origin.clone(),
            vec![config("s", &cow, P, 1)],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    vol.write_origin(0, &rng.bytes(ORIGIN_BYTES)).unwrap();
    vol.start_merge("s").unwrap();
    vol.stop_merge();
    drop(vol);
    let vol = Arc::new(
        Volume::open(
            origin,
            vec![config("s", &cow, P, 0)],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    assert!(
        vol.merging_snapshot().is_some(),
        "the marker brings the merge back"
    );
    assert!(status_word(&vol, "s").contains('/'));
    assert!(
        dm_lines(&vol).contains("snapshot-merge"),
        "{}",
        dm_lines(&vol)
    );
    check_origin(&vol, &initial, 77, "before resuming");
    vol.resume_merge();
    vol.wait_merge();
    check_origin(&vol, &initial, 77, "after resuming");
    assert!(vol.snapshots().is_empty());
}

/// Builds a volume on `world`: origin with random content, a snapshot `m` to merge and another
/// `o`, both taken at open; then origin writes; then a merge of `m`.
fn merge_workload(seed: u64, world: &Arc<SimWorld>, crash_at: Option<(u64, CrashMode)>) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let initial = rng.bytes(ORIGIN_BYTES);
    let origin: Device = world.device_from("origin", initial.clone(), 512);
    let cow_m: Device = world.device("cow-m", 2 << 20);
    let cow_o: Device = world.device("cow-o", 2 << 20);
    let vol = Arc::new(
        Volume::open(
            origin,
            vec![config("m", &cow_m, P, 8), config("o", &cow_o, P, 32)],
            VolumeOptions::default(),
        )
        .unwrap(),
    );
    for _ in 0..20 {
        let (off, len) = range(&mut rng);
        vol.write_origin(off, &rng.bytes(len)).unwrap();
    }
    vol.flush_all().unwrap();
    if let Some((k, mode)) = crash_at {
        world.freeze_at_flush(world.flush_count() + k, mode);
    }
    let _ = vol.start_merge("m");
    vol.wait_merge();
    initial
}

/// Crash at every flush point of a merge: the reopened volume reads as the snapshot did (the
/// merged view) from the first read, the other snapshot keeps the origin as at its creation,
/// and the resumed merge completes with the same result.
#[test]
fn merge_crash_at_every_flush_point() {
    for seed in seeds(2) {
        let (mut points, mut resumed) = (0, 0);
        for k in 1.. {
            let mode = if k % 2 == 0 {
                CrashMode::Drop
            } else {
                CrashMode::Tear {
                    seed: seed * 1000 + k,
                }
            };
            let world = SimWorld::new();
            let expected = merge_workload(seed, &world, Some((k, mode)));
            let Some(images) = world.crash_images() else {
                break;
            };
            points += 1;
            let devs: Vec<Device> = images
                .into_iter()
                .enumerate()
                .map(|(i, img)| {
                    Arc::new(MemDevice::from_bytes(&format!("d{i}"), img, 512)) as Device
                })
                .collect();
            let vol = Arc::new(
                Volume::open(
                    devs[0].clone(),
                    vec![config("m", &devs[1], P, 8), config("o", &devs[2], P, 32)],
                    VolumeOptions::default(),
                )
                .unwrap_or_else(|e| panic!("seed {seed} crash point {k}: reopen failed: {e}")),
            );
            let when = format!("at crash point {k} ({mode:?})");
            check_snapshot(&vol, "o", &expected, seed, &when);
            if vol.merging_snapshot().is_some() {
                resumed += 1;
                check_origin(&vol, &expected, seed, &format!("{when}, before resuming"));
                vol.resume_merge();
                vol.wait_merge();
                assert!(
                    vol.merging_snapshot().is_none(),
                    "seed {seed} {when}: merge completes"
                );
                check_origin(&vol, &expected, seed, &format!("{when}, after resuming"));
            } else {
                // Crashed before the marker was durable (origin untouched) or after completion.
                let mut buf = vec![0u8; ORIGIN_BYTES as usize];
                vol.read_origin(0, &mut buf).unwrap();
                let m = vol.snapshot("m");
                assert!(
                    m.is_some() || buf == expected,
                    "seed {seed} {when}: merge finished but origin differs"
                );
            }
        }
        assert!(points > 3, "seed {seed}: only {points} crash points");
        assert!(
            resumed * 2 > points,
            "seed {seed}: only {resumed} of {points} crashed mid-merge"
        );
        eprintln!("seed {seed}: {points} crash points checked, {resumed} resumed a merge");
    }
}
