//! Incremental backup (issue 15): `snapfs backup` on real mounts. Five backup cycles of ext4 on
//! a loop device over the origin under a writer, each leaving the image equal to its base byte
//! for byte and copying at most the changed chunks; a run killed with SIGKILL mid-copy and one
//! that meets a full disk, both finished by the next run; images that are not this volume's,
//! and the volume under another name, refused; the base across a remount, an invalid base.
//! The changed-chunk map itself: tests/e2e_changes.rs. Needs root and e2fsprogs.

mod e2e_support;

use e2e_support::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const CHUNK: u64 = 16384;

/// `backup MNT --to IMAGE EXTRA...`, the arguments of every run here.
fn backup_args<'a>(mnt: &'a Path, image: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "backup",
        mnt.to_str().unwrap(),
        "--to",
        image.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args
}

fn backup(mnt: &Path, image: &Path, extra: &[&str]) -> Output {
    snapfs(&backup_args(mnt, image, extra))
}

/// A run that must succeed: its stdout.
fn backup_ok(mnt: &Path, image: &Path, extra: &[&str]) -> String {
    let out = backup(mnt, image, extra);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// A run that must be refused (exit status 1): its stderr.
fn backup_refused(mnt: &Path, image: &Path, extra: &[&str]) -> String {
    let out = backup(mnt, image, extra);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{image:?}: {err}");
    err
}

fn backup_json(mnt: &Path, image: &Path, extra: &[&str]) -> Value {
    json(&backup_ok(mnt, image, &[extra, &["--json"]].concat()))
}

/// The first `len` bytes of `path`, hashed.
fn sum(path: &Path, len: u64) -> u64 {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

fn backup_snapshots(mnt: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("backup-"))
        .collect();
    names.sort();
    names
}

/// The one backup snapshot left after a run (`why` it is the only one), checked equal to the
/// image byte for byte.
fn sole_base(s: &Scratch, image: &Path, volume: u64, why: &str) -> String {
    let now = backup_snapshots(&s.mnt);
    assert_eq!(now.len(), 1, "{why}: {now:?}");
    assert_eq!(
        sum(image, volume),
        sum(&s.file(&now[0]), volume),
        "image = {}",
        now[0]
    );
    now[0].clone()
}

fn marker_state(image: &Path) -> String {
    let text = std::fs::read_to_string(format!("{}.snapfs-backup", image.display())).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("state "))
        .unwrap()
        .to_string()
}

#[test]
fn five_cycles_of_ext4_under_a_writer() {
    const VOLUME: u64 = 128 * MIB;
    let Ext4Volume {
        mut stack, s, fs, ..
    } = Ext4Volume::new("backup-cycles", VOLUME / MIB, true);
    let registry = s.path("vol.reg");
    let writer = Writer::start(&fs, 15);
    let image = s.path("backup.img");
    let mnt = s.mnt.clone();

    let first = backup_json(&mnt, &image, &[]);
    assert_eq!(first["volume_bytes"], VOLUME);
    assert_eq!(
        first["copied_bytes"], VOLUME,
        "the first run copies everything"
    );
    let mut base = first["snapshot"].as_str().unwrap().to_string();
    assert_eq!(backup_snapshots(&mnt), std::slice::from_ref(&base));
    assert_eq!(sum(&image, VOLUME), sum(&s.file(&base), VOLUME), "cycle 1");
    assert_eq!(marker_state(&image), "complete");

    for cycle in 2..=5 {
        let before = writer.count();
        wait_for(30, "the writer to write", || writer.count() > before + 20);
        // Frozen, nothing reaches the origin: the map the run reads is the one read here, so
        // "at most the changed chunks" has an exact bound. The run finds ext4 frozen, leaves
        // it so, and the writer goes on (thawed) as soon as the new snapshot exists, i.e.
        // during the copy.
        let frozen = Frozen::new(&fs);
        let changes = changes_json(&mnt, &base);
        let total = changes["total_bytes"].as_u64().unwrap();
        assert!(total > 0, "cycle {cycle}: the writer changed nothing?");
        let mut child = spawn_backup(&mnt, &image, &[]);
        wait_for(60, "the new snapshot", || {
            backup_snapshots(&mnt).len() > 1 || child.try_wait().unwrap().is_some()
        });
        drop(frozen);
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "cycle {cycle}: {stderr}");
        let result = json(&String::from_utf8_lossy(&out.stdout));
        let copied = result["copied_bytes"].as_u64().unwrap();
        assert!(
            copied <= total,
            "cycle {cycle}: copied {copied} > changes {total}"
        );
        assert!(
            copied > 0 && copied < VOLUME / 2,
            "cycle {cycle}: copied {copied}"
        );
        let new = result["snapshot"].as_str().unwrap().to_string();
        assert_ne!(new, base);
        assert_eq!(
            backup_snapshots(&mnt),
            std::slice::from_ref(&new),
            "cycle {cycle}: the old base is dropped"
        );
        assert!(
            !s.path(&format!("{base}.cow")).exists(),
            "its COW is removed"
        );
        assert_eq!(
            sum(&image, VOLUME),
            sum(&s.file(&new), VOLUME),
            "cycle {cycle}: image = base"
        );
        let reg = std::fs::read_to_string(&registry).unwrap();
        assert!(
            reg.contains(&format!("{new} ")) && !reg.contains(&format!("{base} ")),
            "{reg}"
        );
        base = new;
    }
    drop(writer);
    // The image is a clean ext4, as the frozen snapshot was.
    run("e2fsck", &["-fn", image.to_str().unwrap()]);
    // And it mounts as a plain image.
    let look = s.path("look");
    stack.mount(image.to_str().unwrap(), &look, "loop,ro");
    assert!(std::fs::read_dir(&look).unwrap().count() > 1);
    stack.umount(&look);
}

/// A volume of random data, mounted with a registry, and its first backup.
fn random_volume(tag: &str, volume: u64) -> (Scratch, Vec<u8>) {
    let mut s = Scratch::new(tag);
    let origin = s.path("origin.img");
    let data = write_random_image(&origin, volume, 15);
    let registry = s.path("vol.reg");
    s.mount_daemon(&origin, &[&format!("registry={}", registry.display())], &[]);
    (s, data)
}

/// Overwrites `n` scattered chunks of the origin through the mount.
fn scatter(s: &Scratch, volume: u64, n: u64, seed: u64) {
    let f = open_rw(&s.file("origin"));
    let mut rng = Rng(seed);
    for _ in 0..n {
        let c = rng.below(volume / CHUNK);
        f.write_all_at(&rng.bytes(CHUNK), c * CHUNK).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn a_run_killed_mid_copy_is_finished_by_the_next() {
    const VOLUME: u64 = 64 * MIB;
    let (s, _) = random_volume("backup-kill", VOLUME);
    let mnt = s.mnt.clone();
    let image = s.path("backup.img");
    let first = backup_json(&mnt, &image, &[]);
    let base = first["snapshot"].as_str().unwrap().to_string();
    scatter(&s, VOLUME, 1500, 1);
    // A slow copy (24 MiB at 2 MiB/s), killed once its snapshot exists and its copy began.
    let mut child = spawn_backup(&mnt, &image, &["--bwlimit", "2M"]);
    wait_for(60, "the run's snapshot", || {
        backup_snapshots(&mnt).len() == 2
    });
    let image_before = sum(&image, VOLUME);
    wait_for(60, "the copy to begin", || {
        sum(&image, VOLUME) != image_before
    });
    // SAFETY: SIGKILL to the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert_eq!(marker_state(&image), "incomplete");
    let attempt: Vec<String> = backup_snapshots(&mnt)
        .into_iter()
        .filter(|n| *n != base)
        .collect();
    assert_eq!(attempt.len(), 1);
    // The volume moves on; the next run must still end with image = its base.
    scatter(&s, VOLUME, 300, 2);
    let text = backup_ok(&mnt, &image, &[]);
    assert!(
        text.contains("left incomplete by an interrupted run"),
        "{text}"
    );
    assert!(text.contains(&format!("dropped {}", attempt[0])), "{text}");
    let now = sole_base(&s, &image, VOLUME, "the new base only");
    assert!(now != base && now != attempt[0]);
    assert_eq!(marker_state(&image), "complete");
    for gone in [&base, &attempt[0]] {
        assert!(
            !s.path(&format!("{gone}.cow")).exists(),
            "{gone}'s COW is removed"
        );
    }
}

#[test]
fn a_full_disk_leaves_the_image_incomplete_and_the_next_run_finishes_it() {
    const VOLUME: u64 = 48 * MIB;
    let (s, _) = random_volume("backup-full", VOLUME);
    let mnt = s.mnt.clone();
    let small = s.path("small");
    std::fs::create_dir_all(&small).unwrap();
    run(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=32M",
            "tmpfs",
            small.to_str().unwrap(),
        ],
    );
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).output();
        }
    }
    let _guard = Unmount(small.clone());
    let image = small.join("backup.img");
    let err = backup_refused(&mnt, &image, &[]);
    assert!(
        err.contains("No space left") && err.contains("marked incomplete"),
        "{err}"
    );
    assert_eq!(marker_state(&image), "incomplete");
    run(
        "mount",
        &["-o", "remount,size=64M", small.to_str().unwrap()],
    );
    scatter(&s, VOLUME, 100, 3);
    let text = backup_ok(&mnt, &image, &[]);
    assert!(text.contains("interrupted full copy"), "{text}");
    sole_base(&s, &image, VOLUME, "the failed run's snapshot is dropped");
}

#[test]
fn images_that_are_not_this_volumes_are_refused_unless_full() {
    const VOLUME: u64 = 16 * MIB;
    let (s, _) = random_volume("backup-foreign", VOLUME);
    let mnt = s.mnt.clone();
    let m = mnt.to_str().unwrap();
    // An existing file without a marker.
    let image = s.path("other.img");
    write_random_image(&image, VOLUME, 99);
    let before = checksum(&image);
    let err = backup_refused(&mnt, &image, &[]);
    assert!(
        err.contains("no backup marker") && err.contains("--full"),
        "{err}"
    );
    assert_eq!(checksum(&image), before, "refused: nothing written");
    assert!(backup_snapshots(&mnt).is_empty(), "and no snapshot taken");
    // The mount's own origin.
    backup_refused(&mnt, &s.path("origin.img"), &[]);
    // --full takes it over.
    let r = backup_json(&mnt, &image, &["--full"]);
    let base = r["snapshot"].as_str().unwrap().to_string();
    assert_eq!(sum(&image, VOLUME), sum(&s.file(&base), VOLUME));
    // Written after its backup (as a read-write mount would): a full copy, said so.
    open_rw(&image).write_all_at(b"changed", 4096).unwrap();
    let text = backup_ok(&mnt, &image, &[]);
    assert!(text.contains("written after its backup"), "{text}");
    let base = sole_base(&s, &image, VOLUME, "the old base is dropped");
    // Its base dropped by hand: what changed is unknown, refused without --full.
    snapfs_ok(&["drop", m, &base]);
    let err = backup_refused(&mnt, &image, &[]);
    assert!(err.contains("does not have"), "{err}");
    // The same image as a block device: a first run over it needs --full.
    // (The stack detaches the loop device whatever happens, before the mount goes.)
    let mut stack = Stack::default();
    let dev = stack.attach(&image, false, false);
    backup_refused(&mnt, Path::new(&dev), &[]);
    backup_json(&mnt, Path::new(&dev), &["--full"]);
    // Then an incremental run onto the device.
    scatter(&s, VOLUME, 30, 6);
    let next = backup_json(&mnt, Path::new(&dev), &[]);
    assert!(
        next["copied_bytes"].as_u64().unwrap() <= 30 * CHUNK,
        "{next}"
    );
    let base = next["snapshot"].as_str().unwrap().to_string();
    assert_eq!(sum(&image, VOLUME), sum(&s.file(&base), VOLUME));
    let flat = dev.replace('/', "_");
    assert!(
        s.path(&format!("{flat}.snapfs-backup")).exists(),
        "the device's marker beside the registry"
    );
}

/// Paths that must never be written: the volume under another name (a loop device over the
/// origin, a file on the ext4 on it) as the image, and a `--marker` that names something that
/// is not a marker (even with `--full`).
#[test]
fn the_volume_under_another_name_and_foreign_markers_are_never_written() {
    const VOLUME: u64 = 64 * MIB;
    let Ext4Volume {
        mut stack,
        s,
        dev,
        fs,
    } = Ext4Volume::new("backup-paths", VOLUME / MIB, true);
    let origin = s.path("origin.img");
    let refused = |image: &Path| {
        let err = backup_refused(&s.mnt, image, &["--full"]);
        assert!(
            err.contains("cannot be written into the volume"),
            "{image:?}: {err}"
        );
        assert!(
            backup_snapshots(&s.mnt).is_empty(),
            "{image:?}: no snapshot taken"
        );
    };
    refused(&fs.join("inside.img"));
    assert!(
        !fs.join("inside.img").exists(),
        "a refused new image is not left behind"
    );
    stack.umount(&fs);
    let before = checksum(&origin);
    refused(Path::new(&dev));
    refused(&s.file("origin"));
    assert_eq!(checksum(&origin), before, "the volume is untouched");
    // A --marker that names someone's file: never overwritten.
    let precious = s.path("notes.txt");
    std::fs::write(&precious, "keep me\n").unwrap();
    let image = s.path("b.img");
    let err = backup_refused(
        &s.mnt,
        &image,
        &["--marker", precious.to_str().unwrap(), "--full"],
    );
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
    assert!(!image.exists(), "the new image is removed again");
    // The image itself as its marker.
    backup_refused(&s.mnt, &image, &["--marker", image.to_str().unwrap()]);
}

/// The base survives a remount (registry), the next run is incremental; a base whose COW
/// filled up (Invalid) gets a full copy, said so.
#[test]
fn the_base_survives_a_remount_and_an_invalid_base_gets_a_full_copy() {
    const VOLUME: u64 = 32 * MIB;
    let (mut s, _) = random_volume("backup-remount", VOLUME);
    let mnt = s.mnt.clone();
    let image = s.path("backup.img");
    // A small COW: 1 MiB holds about 60 chunks of 16 KiB.
    let first = backup_json(&mnt, &image, &["--cow-size", "1M"]);
    let base = first["snapshot"].as_str().unwrap().to_string();
    scatter(&s, VOLUME, 20, 4);
    s.unmount();
    let registry = s.path("vol.reg");
    s.mount_daemon(
        &s.path("origin.img"),
        &[&format!("registry={}", registry.display())],
        &[],
    );
    assert_eq!(
        backup_snapshots(&mnt),
        std::slice::from_ref(&base),
        "attached again"
    );
    let changes = changes_json(&mnt, &base);
    let r = backup_json(&mnt, &image, &["--cow-size", "1M"]);
    let copied = r["copied_bytes"].as_u64().unwrap();
    assert!(copied > 0 && copied <= changes["total_bytes"].as_u64().unwrap());
    let base = r["snapshot"].as_str().unwrap().to_string();
    assert_eq!(sum(&image, VOLUME), sum(&s.file(&base), VOLUME));
    // Far more than the COW holds: the base turns Invalid.
    scatter(&s, VOLUME, 400, 5);
    let status = snapfs_ok(&["status", mnt.to_str().unwrap()]);
    assert!(status.contains("invalid"), "{status}");
    let out = snapfs(&["changes", mnt.to_str().unwrap(), &base]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "an invalid snapshot has no list"
    );
    let text = backup_ok(&mnt, &image, &[]);
    assert!(
        text.contains("invalid") && text.contains("copying everything"),
        "{text}"
    );
    sole_base(&s, &image, VOLUME, "the invalid base is dropped");
}

/// A run killed after marking the image complete but before dropping the old base (the marker
/// names it as `previous`): the next run drops it first. Made by hand: a snapshot with a backup
/// identity, named in the marker.
#[test]
fn a_base_left_by_a_run_killed_before_its_drop_is_dropped_by_the_next() {
    const VOLUME: u64 = 16 * MIB;
    let (s, _) = random_volume("backup-previous", VOLUME);
    let mnt = s.mnt.clone();
    let image = s.path("backup.img");
    backup_json(&mnt, &image, &[]);
    let id = "00112233445566778899aabbccddeeff";
    let cow = s.path("old.cow");
    sparse_file(&cow, 4 * MIB);
    let (done, answer) = control(
        &s,
        &format!("snapshot old {} P 32 backup={id}", cow.display()),
    );
    done.unwrap_or_else(|e| panic!("{e}: {answer}"));
    let marker = PathBuf::from(format!("{}.snapfs-backup", image.display()));
    let text = std::fs::read_to_string(&marker).unwrap();
    std::fs::write(&marker, format!("{text}previous old {id}\n")).unwrap();
    // A backup snapshot the marker does not name (another image's base) is never touched.
    let other = s.path("keep.cow");
    sparse_file(&other, 4 * MIB);
    let (done, answer) = control(
        &s,
        &format!(
            "snapshot keep {} P 32 backup={}",
            other.display(),
            "f".repeat(32)
        ),
    );
    done.unwrap_or_else(|e| panic!("{e}: {answer}"));
    let text = backup_ok(&mnt, &image, &[]);
    assert!(
        text.contains("dropped old (left by an interrupted run)"),
        "{text}"
    );
    let status = snapfs_ok(&["status", mnt.to_str().unwrap()]);
    assert!(
        !status.contains("old ") && status.contains("keep "),
        "{status}"
    );
    assert!(!cow.exists() && other.exists());
    sole_base(&s, &image, VOLUME, "old is dropped");
}

/// Refusals that change nothing: a mount without a registry (its base would be forgotten at
/// the next mount), a read-only mount, a --cow-dir that is not a directory.
#[test]
fn a_mount_without_registry_or_read_only_is_refused_and_nothing_is_created() {
    let mut s = Scratch::new("backup-refusals");
    let origin = s.path("origin.img");
    write_random_image(&origin, 8 * MIB, 16);
    s.mount_daemon(&origin, &[], &[]);
    let image = s.path("b.img");
    let err = backup_refused(&s.mnt, &image, &[]);
    assert!(
        err.contains("no registry") && err.contains("-o registry="),
        "{err}"
    );
    assert!(!image.exists() && backup_snapshots(&s.mnt).is_empty());
    s.unmount();
    let registry = format!("registry={}", s.path("vol.reg").display());
    s.mount_daemon(&origin, &[&registry, "ro"], &[]);
    let err = backup_refused(&s.mnt, &image, &[]);
    assert!(err.contains("read-only"), "{err}");
    s.unmount();
    s.mount_daemon(&origin, &[&registry], &[]);
    let not_dir = s.path("file");
    std::fs::write(&not_dir, "x").unwrap();
    let err = backup_refused(&s.mnt, &image, &["--cow-dir", not_dir.to_str().unwrap()]);
    assert!(err.contains("not a directory"), "{err}");
    assert!(
        !image.exists() && backup_snapshots(&s.mnt).is_empty(),
        "{err}"
    );
}
