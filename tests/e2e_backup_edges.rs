//! `snapfs backup` attacked at its edges: IMAGE naming one of the mount's own files (its
//! registry, under any name, even with --full), a block device too small for the volume, two
//! runs of the same mount at once onto two images. Each run that succeeds leaves its image equal
//! to the snapshot it names, byte for byte; each refusal leaves everything as it was. The usual
//! cycles: tests/e2e_backup.rs. Needs root.

#[path = "common/format.rs"]
mod cow_format;
mod e2e_support;

use e2e_support::*;
use serde_json::Value;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

const CHUNK: u64 = 16384;

/// A volume of random data, mounted with a registry in the scratch directory.
fn random_volume(tag: &str, volume: u64) -> Scratch {
    let mut s = Scratch::new(tag);
    let origin = s.path("origin.img");
    write_random_image(&origin, volume, 15);
    let registry = s.path("vol.reg");
    s.mount_daemon(&origin, &[&format!("registry={}", registry.display())], &[]);
    s
}

fn backup(mnt: &Path, image: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "backup",
        mnt.to_str().unwrap(),
        "--to",
        image.to_str().unwrap(),
        "--json",
    ];
    args.extend_from_slice(extra);
    snapfs(&args)
}

/// The names of the mount's snapshots.
fn snapshots(mnt: &Path) -> Vec<String> {
    snapshot_names(mnt)
}

fn read(path: &Path, len: u64) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// A refused run: exit 1, nothing on stdout (even with --json), the reason on stderr.
fn refused(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "refused: {err}");
    assert!(
        out.stdout.is_empty(),
        "stdout of a refused run: {:?}",
        out.stdout
    );
    err
}

#[test]
fn the_registry_is_never_an_image_under_any_name_even_with_full() {
    let volume = 2 << 20;
    let s = random_volume("bk-edge-registry", volume);
    // A first backup elsewhere: the registry has a line to lose.
    let first = backup(&s.mnt, &s.path("good.img"), &[]);
    assert!(first.status.success(), "{:?}", first);
    let registry = s.path("vol.reg");
    let before = std::fs::read(&registry).unwrap();
    let link = s.path("link-to-registry");
    std::os::unix::fs::symlink(&registry, &link).unwrap();
    let snaps = snapshots(&s.mnt);
    for image in [&registry, &link] {
        let err = refused(&backup(&s.mnt, image, &["--full"]));
        assert!(
            err.contains("registry") && err.contains(&registry.display().to_string()),
            "{err}"
        );
        assert_eq!(
            std::fs::read(&registry).unwrap(),
            before,
            "registry untouched"
        );
        assert_eq!(snapshots(&s.mnt), snaps, "no snapshot taken");
        let mut marker = image.as_os_str().to_os_string();
        marker.push(".snapfs-backup");
        assert!(!Path::new(&marker).exists(), "no marker written");
    }
}

#[test]
fn a_block_device_smaller_than_the_volume_is_refused_even_with_full() {
    let volume = 4 << 20;
    let s = random_volume("bk-edge-small-dev", volume);
    let mut stack = Stack::default();
    let backing = s.path("small.img");
    let small = write_random_image(&backing, 2 << 20, 7);
    let dev = stack.attach(&backing, false, false);
    for extra in [&[][..], &["--full"][..]] {
        let err = refused(&backup(&s.mnt, Path::new(&dev), extra));
        assert!(err.contains("smaller") || err.contains("at least"), "{err}");
        assert!(snapshots(&s.mnt).is_empty(), "no snapshot taken: {err}");
        assert!(
            std::fs::read_dir(&s.dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".snapfs-backup")),
            "no marker written"
        );
        assert_same("the small device", &read(Path::new(&dev), 2 << 20), &small);
    }
    stack.detach(&dev);
}

#[test]
fn two_runs_of_one_mount_at_once_onto_two_images_both_succeed() {
    let volume = 2 << 20;
    let s = random_volume("bk-edge-two-at-once", volume);
    let (a, b) = (s.path("a.img"), s.path("b.img"));
    let spawn = |image: &Path| spawn_backup(&s.mnt, image, &[]);
    let mut rng = Rng(3);
    // Runs in the same second choose from the same names: each must still get its own.
    for round in 0..8 {
        let (pa, pb) = (spawn(&a), spawn(&b));
        for (image, child) in [(&a, pa), (&b, pb)] {
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "round {round}, {}: {}",
                image.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            let name = v["snapshot"].as_str().unwrap();
            assert_same(
                &format!("round {round}: {} against {name}", image.display()),
                &read(image, volume),
                &read(&s.file(name), volume),
            );
        }
        let f = open_rw(&s.file("origin"));
        for _ in 0..4 {
            let c = rng.below(volume / CHUNK);
            f.write_all_at(&rng.bytes(CHUNK), c * CHUNK).unwrap();
        }
        f.sync_all().unwrap();
    }
    // Each image keeps one base; nothing else is left attached.
    assert_eq!(snapshots(&s.mnt).len(), 2, "{:?}", snapshots(&s.mnt));
}

#[test]
fn a_cow_dir_a_control_command_cannot_carry_is_refused_before_anything() {
    use std::os::unix::ffi::OsStrExt;
    let volume = 2 << 20;
    let s = random_volume("bk-edge-cow-dir", volume);
    let blank = s.path("with blank");
    let mut raw = s.dir.as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/not-utf8-\xff");
    let not_utf8 = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
    for dir in [&blank, &not_utf8] {
        std::fs::create_dir(dir).unwrap();
        let image = s.path("img");
        let out = Command::new(BIN)
            .args(["backup", s.mnt.to_str().unwrap(), "--to"])
            .arg(&image)
            .arg("--cow-dir")
            .arg(dir)
            .arg("--json")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = refused(&out);
        assert!(err.contains("--cow-dir"), "{err}");
        assert!(
            !err.contains("first backup"),
            "refused before any plan is said: {err}"
        );
        assert!(!image.exists(), "no image left behind: {err}");
        assert!(snapshots(&s.mnt).is_empty(), "no snapshot taken: {err}");
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "no COW left: {err}"
        );
    }
    // `snapfs snapshot --size` under the same rule: no COW created under a path the command
    // would carry as another.
    let cow = not_utf8.join("s.cow");
    let out = Command::new(BIN)
        .args([
            "snapshot",
            s.mnt.to_str().unwrap(),
            "s",
            "--size",
            "1M",
            "--cow",
        ])
        .arg(&cow)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not UTF-8"), "{err}");
    assert!(!cow.exists());
    assert!(snapshots(&s.mnt).is_empty());
}

#[test]
fn the_disk_of_an_origin_partition_is_never_an_image() {
    let s0 = Scratch::new("bk-edge-partition");
    let disk = s0.path("disk.img");
    std::fs::write(&disk, mbr_image(8 << 20, 2048, 4096)).unwrap();
    let node = s0.path("part1");
    let parted = PartitionedLoop::attach(&disk, &node);
    let mut s = s0;
    // The volume is the partition; the image, the whole disk (larger than it).
    s.mount_daemon(
        &node,
        &[&format!("registry={}", s.path("vol.reg").display())],
        &[],
    );
    let before = std::fs::read(&disk).unwrap();
    let err = refused(&backup(&s.mnt, Path::new(&parted.lo), &["--full"]));
    assert!(err.contains("cannot be written into the volume"), "{err}");
    assert!(snapshots(&s.mnt).is_empty(), "no snapshot taken: {err}");
    assert_same("the origin disk", &std::fs::read(&disk).unwrap(), &before);
    s.unmount();
}

#[test]
fn a_loop_device_over_the_origin_file_or_a_cow_is_never_an_image() {
    let volume = 2 << 20;
    let s = random_volume("bk-edge-loop-origin", volume);
    let first = backup(&s.mnt, &s.path("good.img"), &[]);
    assert!(first.status.success(), "{first:?}");
    let base = snapshots(&s.mnt).pop().unwrap();
    let mut stack = Stack::default();
    let origin = s.path("origin.img");
    let cow = s.path(&format!("{base}.cow"));
    for target in [&origin, &cow] {
        let before = std::fs::read(target).unwrap();
        let dev = stack.attach(target, false, false);
        let err = refused(&backup(&s.mnt, Path::new(&dev), &["--full"]));
        assert!(err.contains("cannot be written into the volume"), "{err}");
        assert_eq!(
            snapshots(&s.mnt),
            std::slice::from_ref(&base),
            "no snapshot taken: {err}"
        );
        assert_same(
            &target.display().to_string(),
            &std::fs::read(target).unwrap(),
            &before,
        );
        stack.detach(&dev);
    }
}

#[test]
fn a_missing_image_under_dev_is_never_created() {
    let volume = 1 << 20;
    let s = random_volume("bk-edge-dev-typo", volume);
    // A mistyped device: a file created there would live in RAM (devtmpfs), gone at reboot.
    let image = Path::new("/dev/snapfs-no-such-backup-disk");
    let err = refused(&backup(&s.mnt, image, &[]));
    assert!(err.contains("/dev"), "{err}");
    assert!(!image.exists(), "nothing created in /dev: {err}");
    assert!(snapshots(&s.mnt).is_empty(), "no snapshot taken: {err}");
}

#[test]
fn a_symlink_planted_as_the_markers_temporary_file_is_never_followed() {
    let volume = 1 << 20;
    let s = random_volume("bk-edge-marker-tmp", volume);
    let precious = s.path("precious");
    std::fs::write(&precious, "keep me\n").unwrap();
    // What someone else could plant in a shared directory before root's nightly run.
    std::os::unix::fs::symlink(&precious, s.path(".img.snapfs-backup.tmp")).unwrap();
    let image = s.path("img");
    let out = backup(&s.mnt, &image, &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = v["snapshot"].as_str().unwrap();
    assert_same("image", &read(&image, volume), &read(&s.file(name), volume));
    let marker = std::fs::read_to_string(s.path("img.snapfs-backup")).unwrap();
    assert!(marker.contains(&format!("base {name} ")), "{marker}");
}

#[test]
fn a_symlink_planted_as_the_registrys_temporary_file_is_never_followed() {
    let s = random_volume("bk-edge-registry-tmp", 1 << 20);
    let precious = s.path("precious");
    std::fs::write(&precious, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&precious, s.path(".vol.reg.tmp")).unwrap();
    // A backup rewrites the registry (its new snapshot).
    let out = backup(&s.mnt, &s.path("img"), &[]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me\n");
    let name = snapshots(&s.mnt).pop().unwrap();
    let registry = std::fs::read_to_string(s.path("vol.reg")).unwrap();
    assert!(registry.contains(&format!("{name} ")), "{registry}");
}

#[test]
fn an_origin_the_status_cannot_name_is_never_overwritten_through_a_loop_device() {
    use std::os::unix::ffi::OsStrExt;
    let mut s = Scratch::new("bk-edge-origin-bytes");
    let mut raw = s.dir.as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/origin-\xfe.img");
    let origin = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
    let data = write_random_image(&origin, 1 << 20, 9);
    s.mount_daemon(
        &origin,
        &[&format!("registry={}", s.path("vol.reg").display())],
        &[],
    );
    // The origin's path is not UTF-8: the mount's status cannot carry it, so the backup cannot
    // tell a loop device over it from any other device. It must refuse, not guess.
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&origin)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let _detach = Detach(dev.clone());
    let f = open_rw(&s.file("origin"));
    f.write_all_at(&[0xab; CHUNK as usize], 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let err = refused(&backup(&s.mnt, Path::new(&dev), &["--full"]));
    assert!(err.contains("origin"), "{err}");
    assert!(snapshots(&s.mnt).is_empty(), "no snapshot taken: {err}");
    let mut want = data;
    want[..CHUNK as usize].fill(0xab);
    s.unmount();
    assert_same("the origin", &std::fs::read(&origin).unwrap(), &want);
}

/// Detaches a loop device when dropped (a failed assertion leaves none behind).
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).output();
    }
}

/// `snapfs backup` with stdout and stderr pipes whose readers are gone (a `| tee` that died):
/// what it prints may be lost, never the backup.
fn backup_into_closed_pipes(mnt: &Path, image: &Path, json: bool) -> std::process::ExitStatus {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe(2) fills two descriptors that are owned here from then on.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut cmd = Command::new(BIN);
    cmd.args(["backup", mnt.to_str().unwrap(), "--to"])
        .arg(image);
    if json {
        cmd.arg("--json");
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write.try_clone().unwrap()))
        .stderr(Stdio::from(write))
        .status()
        .unwrap()
}

#[test]
fn closed_output_pipes_never_cost_the_backup() {
    let volume = 1 << 20;
    let s = random_volume("bk-edge-epipe", volume);
    let image = s.path("img");
    for (round, json) in [false, true, false].into_iter().enumerate() {
        let status = backup_into_closed_pipes(&s.mnt, &image, json);
        assert!(status.success(), "round {round}: {status}");
        let marker = std::fs::read_to_string(s.path("img.snapfs-backup")).unwrap();
        assert!(marker.contains("state complete"), "round {round}: {marker}");
        let held = snapshots(&s.mnt);
        assert_eq!(held.len(), 1, "round {round}: one base: {held:?}");
        assert!(marker.contains(&format!("base {} ", held[0])), "{marker}");
        assert_same(
            &format!("round {round}"),
            &read(&image, volume),
            &read(&s.file(&held[0]), volume),
        );
        let f = open_rw(&s.file("origin"));
        f.write_all_at(&[round as u8 + 1; CHUNK as usize], CHUNK * round as u64)
            .unwrap();
        f.sync_all().unwrap();
    }
    // And the next run, with its output read, is incremental.
    let out = backup(&s.mnt, &image, &[]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["copied_bytes"], CHUNK);
}

#[test]
fn an_image_left_sized_but_unwritten_by_a_killed_first_run_needs_no_full() {
    let volume = 1 << 20;
    let s = random_volume("bk-edge-killed-first", volume);
    // What a first run killed between creating IMAGE and writing its marker leaves: the
    // volume's size, no data block, no marker.
    let image = s.path("img");
    sparse_file(&image, volume);
    let out = backup(&s.mnt, &image, &[]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name = v["snapshot"].as_str().unwrap();
    assert_same("image", &read(&image, volume), &read(&s.file(name), volume));
    // A file with data in it and no marker is still someone's: refused.
    let other = s.path("other");
    std::fs::write(&other, vec![7u8; volume as usize]).unwrap();
    let err = refused(&backup(&s.mnt, &other, &[]));
    assert!(err.contains("no backup marker"), "{err}");
    assert_eq!(std::fs::read(&other).unwrap(), vec![7u8; volume as usize]);
}

#[test]
fn a_transient_snapshot_never_passes_for_the_base() {
    let volume = 1 << 20;
    let s = random_volume("bk-edge-transient-base", volume);
    let image = s.path("img");
    let first = backup(&s.mnt, &image, &[]);
    assert!(first.status.success(), "{first:?}");
    let marker = std::fs::read_to_string(s.path("img.snapfs-backup")).unwrap();
    let (name, id) = marker
        .lines()
        .find_map(|l| l.strip_prefix("base "))
        .and_then(|l| l.split_once(' '))
        .unwrap();
    // The base goes, the origin changes with nothing to record it, and a transient snapshot
    // (a blank table: it knows of no change before it) comes back under the base's name and
    // identity (an fstab line with :N, say).
    snapfs_ok(&["drop", s.mnt.to_str().unwrap(), name]);
    let f = open_rw(&s.file("origin"));
    f.write_all_at(&[0x5a; CHUNK as usize], 3 * CHUNK).unwrap();
    f.sync_all().unwrap();
    let cow = s.path("n.cow");
    sparse_file(&cow, volume * 2);
    let (r, answer) = control_of(
        &s.mnt,
        &format!("snapshot {name} {} N 32 backup={id}", cow.display()),
    );
    r.unwrap_or_else(|e| panic!("{e}: {answer}"));
    let out = backup(&s.mnt, &image, &[]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = v["snapshot"].as_str().unwrap();
    assert_same("image", &read(&image, volume), &read(&s.file(new), volume));
}

#[test]
fn kill_9_at_any_moment_is_finished_by_the_next_run() {
    let volume = 4 << 20;
    let s = random_volume("bk-edge-kill-anywhere", volume);
    let image = s.path("img");
    let mut rng = Rng(21);
    // The delays only pick different moments (before the marker, around the snapshot, mid
    // copy, around the fsync and the drop): whichever one is hit, the next run must finish.
    for (round, delay_ms) in [0u64, 2, 5, 10, 20, 40, 80, 160].into_iter().enumerate() {
        let f = open_rw(&s.file("origin"));
        for _ in 0..8 {
            let c = rng.below(volume / CHUNK);
            f.write_all_at(&rng.bytes(CHUNK), c * CHUNK).unwrap();
        }
        f.sync_all().unwrap();
        drop(f);
        let mut child = Command::new(BIN)
            .args(["backup", s.mnt.to_str().unwrap(), "--to"])
            .arg(&image)
            .args(["--json", "--bwlimit", "20M"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        let out = backup(&s.mnt, &image, &[]);
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let name = v["snapshot"].as_str().unwrap();
        assert_same(
            &format!("round {round} ({delay_ms} ms)"),
            &read(&image, volume),
            &read(&s.file(name), volume),
        );
        assert_eq!(
            snapshots(&s.mnt),
            [name],
            "round {round}: only the base is left"
        );
    }
}

#[test]
fn the_last_partial_chunk_of_a_volume_is_copied_and_clipped() {
    // Not a multiple of the chunk size: the last chunk is 4608 bytes.
    let volume = (1 << 20) + 4096 + 512;
    let s = random_volume("bk-edge-partial-chunk", volume);
    let image = s.path("img");
    let first = backup(&s.mnt, &image, &[]);
    assert!(first.status.success(), "{first:?}");
    let f = open_rw(&s.file("origin"));
    f.write_all_at(&[0x77; 100], volume - 100).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let out = backup(&s.mnt, &image, &[]);
    assert!(out.status.success(), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["copied_bytes"], volume % CHUNK, "only the partial chunk");
    assert_eq!(std::fs::metadata(&image).unwrap().len(), volume);
    let name = v["snapshot"].as_str().unwrap();
    assert_same("image", &read(&image, volume), &read(&s.file(name), volume));
}

#[test]
fn the_mounts_log_file_is_never_an_image() {
    let mut s = Scratch::new("bk-edge-log");
    let origin = s.path("origin.img");
    write_random_image(&origin, 1 << 20, 4);
    let log = s.path("daemon.log");
    s.mount_daemon(
        &origin,
        &[
            &format!("registry={}", s.path("vol.reg").display()),
            &format!("log={}", log.display()),
        ],
        &[],
    );
    let before = std::fs::read(&log).unwrap();
    // Empty or not, it is the daemon's: never "nothing to lose", not even with --full.
    for extra in [&[][..], &["--full"][..]] {
        let err = refused(&backup(&s.mnt, &log, extra));
        assert!(err.contains("log"), "{err}");
        assert!(snapshots(&s.mnt).is_empty(), "no snapshot taken: {err}");
    }
    assert!(std::fs::read(&log).unwrap().starts_with(&before));
    assert!(!s.path("daemon.log.snapfs-backup").exists());
}

/// Chunks listed by `snapfs changes --json` output.
fn listed_chunks(v: &Value, chunk: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for r in v["ranges"].as_array().unwrap() {
        let (off, len) = (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap());
        assert!(off % chunk == 0 && len % chunk == 0 && len > 0, "{r}");
        out.extend(off / chunk..(off + len) / chunk);
    }
    out
}

/// A sparse persistent COW of `chunk_sectors` whose table holds `olds` (origin chunks), written
/// by the format's reference (tests/common/format.rs): header and metadata areas only.
fn scattered_cow(path: &Path, chunk_sectors: u64, olds: &[u64]) {
    use cow_format::{Layout, SNAP, put_header, put_record_at};
    let l = Layout { cs: chunk_sectors };
    let bytes = l.bytes() as usize;
    let f = std::fs::File::create(path).unwrap();
    // Room for every data chunk, the areas, and as many again for the writes to come.
    f.set_len(2 * l.kth(olds.len() as u64 + 1) * l.bytes() + 4 * l.bytes())
        .unwrap();
    let mut header = vec![0u8; bytes];
    put_header(&mut header, SNAP, 1, 1, chunk_sectors as u32);
    f.write_all_at(&header, 0).unwrap();
    for (n, area) in olds.chunks(l.per_area() as usize).enumerate() {
        let mut buf = vec![0u8; bytes];
        for (i, &old) in area.iter().enumerate() {
            let k = n as u64 * l.per_area() + i as u64;
            put_record_at(&mut buf, 16 * i, old, l.kth(k));
        }
        f.write_all_at(&buf, l.area(n as u64) * l.bytes()).unwrap();
    }
    f.sync_all().unwrap();
}

#[test]
fn changes_over_several_pages_while_writes_continue_miss_nothing() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    const CHUNK_4K: u64 = 4096;
    // More scattered runs than one answer carries (65536): every other chunk.
    const RUNS: u64 = 70_000;
    let volume = 2 * RUNS * CHUNK_4K + 2 * CHUNK_4K;
    let mut s = Scratch::new("bk-edge-pages");
    let origin = s.path("origin.img");
    sparse_file(&origin, volume);
    let before: Vec<u64> = (0..RUNS).map(|i| 2 * i).collect();
    let cow = s.path("s.cow");
    scattered_cow(&cow, 8, &before);
    s.mount_daemon(
        &origin,
        &[&format!("snapshot=s:{}:P:8", cow.display())],
        &[],
    );
    let m = s.mnt.to_str().unwrap().to_string();
    let o = open_rw(&s.file("origin"));
    // Writes go on during the call: into the gaps, from the end backwards (they join runs
    // across page boundaries as the pages are read).
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let file = o.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let mut written = Vec::new();
        let mut i = RUNS;
        while !flag.load(Ordering::Relaxed) && i > 0 {
            i -= 1;
            file.write_all_at(b"y", (2 * i + 1) * CHUNK_4K).unwrap();
            written.push(2 * i + 1);
        }
        written
    });
    let live = json(&snapfs_ok(&["changes", &m, "s", "--json"]));
    stop.store(true, Ordering::Relaxed);
    let during: BTreeSet<u64> = writer.join().unwrap().into_iter().collect();
    let before: BTreeSet<u64> = before.into_iter().collect();
    let listed = listed_chunks(&live, CHUNK_4K);
    let set: BTreeSet<u64> = listed.iter().copied().collect();
    assert_eq!(set.len(), listed.len(), "no chunk listed twice");
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "sorted");
    let missed: Vec<_> = before.difference(&set).take(5).collect();
    assert!(
        missed.is_empty(),
        "in the table before the call, not listed: {missed:?}"
    );
    let extra: Vec<_> = set
        .iter()
        .filter(|c| !before.contains(c) && !during.contains(c))
        .take(5)
        .collect();
    assert!(extra.is_empty(), "listed, never written: {extra:?}");
    // Quiet now: exactly the table, live and offline.
    let live = json(&snapfs_ok(&["changes", &m, "s", "--json"]));
    let all: BTreeSet<u64> = before.union(&during).copied().collect();
    assert_eq!(
        listed_chunks(&live, CHUNK_4K),
        all.iter().copied().collect::<Vec<_>>()
    );
    drop(o);
    s.unmount();
    let offline = json(&snapfs_ok(&[
        "inspect",
        "--changes",
        cow.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(offline["ranges"], live["ranges"]);
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

#[test]
fn a_cow_that_cannot_be_made_leaves_nothing_behind() {
    let volume = 1 << 20;
    let s = random_volume("bk-edge-cow-size", volume);
    let image = s.path("img");
    // Too large for the file system (EFBIG), too small for a store: each refused, nothing left.
    for size in ["1000T", "1k"] {
        let err = refused(&backup(&s.mnt, &image, &["--cow-size", size]));
        assert!(err.contains(".cow"), "{err}");
        assert!(snapshots(&s.mnt).is_empty(), "{size}: no snapshot: {err}");
        let left: Vec<String> = std::fs::read_dir(&s.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cow") || n.starts_with("img"))
            .collect();
        assert!(left.is_empty(), "{size}: left behind: {left:?}");
    }
}
