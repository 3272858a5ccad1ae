//! The freeze around a live snapshot (issue 14): `snapfs snapshot` and control's `snapshot`
//! freeze every file system mounted from a loop device over `MNT/origin`, attach, and thaw, as
//! LVM's suspend does. A snapshot of a busy ext4 is clean (no `needs_recovery`, `e2fsck -fn`
//! clean) without a manual fsfreeze; a failed command leaves nothing frozen; `--no-freeze`
//! freezes nothing; a file system the user froze stays frozen. Needs root and e2fsprogs.

mod e2e_support;

use e2e_support::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A snapfs mount with ext4 on a buffered loop device over its origin, mounted on `fs`.
fn setup(tag: &str) -> Ext4Volume {
    Ext4Volume::new(tag, 128, false)
}

/// The ext4 features of the image at `path` (dumpe2fs -h).
fn features(path: &Path) -> String {
    let text = run("dumpe2fs", &["-h", path.to_str().unwrap()]);
    text.lines()
        .find_map(|l| l.strip_prefix("Filesystem features:"))
        .unwrap_or_else(|| panic!("no features line in {text}"))
        .trim()
        .to_string()
}

/// Whether a small write and fsync on `fs` completes within `secs`.
fn writes_within(fs: &Path, secs: u64) -> bool {
    let (tx, rx) = mpsc::channel();
    let file = fs.join("probe");
    std::thread::spawn(move || {
        let outcome = std::fs::File::create(&file).and_then(|mut f| {
            f.write_all(b"probe")?;
            f.sync_all()
        });
        let _ = tx.send(outcome.is_ok());
    });
    rx.recv_timeout(Duration::from_secs(secs)).unwrap_or(false)
}

/// `fsfreeze -u` on a file system that is not frozen fails (EINVAL): so it was thawed.
fn is_thawed(fs: &Path) -> bool {
    let out = Command::new("fsfreeze").arg("-u").arg(fs).output().unwrap();
    !out.status.success()
}

/// The milliseconds in the answer's `froze ... in A ms, for B ms` line: (A, B).
fn frozen_ms(answer: &str) -> Option<(u64, u64)> {
    let line = answer.lines().find(|l| l.starts_with("froze "))?;
    let (head, frozen) = line.rsplit_once(" ms, for ")?;
    let took = head.rsplit(" in ").next()?.parse().ok()?;
    Some((took, frozen.strip_suffix(" ms")?.parse().ok()?))
}

#[test]
fn busy_ext4_snapshots_are_clean_without_fsfreeze() {
    let Ext4Volume {
        mut stack, s, fs, ..
    } = setup("freeze-busy");
    let writer = Writer::start(&fs, 14);
    let mut ms = Vec::new();
    for round in 0..5 {
        let name = format!("s{round}");
        let cow = s.path(&format!("{name}.cow"));
        let mnt = s.mnt.to_str().unwrap();
        let t = Instant::now();
        let out = snapfs_ok(&[
            "snapshot",
            mnt,
            &name,
            "--cow",
            cow.to_str().unwrap(),
            "--size",
            "160M",
        ]);
        let took = t.elapsed();
        let frozen = frozen_ms(&out).unwrap_or_else(|| panic!("nothing frozen: {out}"));
        assert!(out.contains(fs.to_str().unwrap()), "{out}");
        ms.push((frozen.0, frozen.1, took.as_millis()));
        let snap = s.file(&name);
        let f = features(&snap);
        assert!(!f.contains("needs_recovery"), "round {round}: {f}");
        // Checked through a read-only loop device, as a user would.
        let dev = stack.attach(&snap, false, true);
        run("e2fsck", &["-fn", &dev]);
        stack.detach(&dev);
    }
    let written = writer.stop();
    eprintln!("freeze ms, frozen ms, command ms: {ms:?}; writer did {written} writes");
    assert!(is_thawed(&fs));
    assert!(writes_within(&fs, 10));
    let log = s.log();
    assert_eq!(log.matches("thawed ").count(), 5, "{log}");
}

#[test]
fn thawed_when_the_snapshot_fails() {
    let Ext4Volume {
        stack: _stack,
        s,
        fs,
        ..
    } = setup("freeze-fails");
    let writer = Writer::start(&fs, 14);
    let (a, b) = (s.path("a.cow"), s.path("b.cow"));
    sparse_file(&a, 160 * MIB);
    sparse_file(&b, 160 * MIB);
    let (r, answer) = control(&s, &format!("snapshot a {} P 8", a.display()));
    assert!(r.is_ok(), "{answer}");
    // A duplicate name fails in the attach, after the freeze.
    let (r, answer) = control(&s, &format!("snapshot a {} P 8", b.display()));
    assert!(r.is_err(), "{answer}");
    assert!(answer.contains("already exists"), "{answer}");
    let log = s.log();
    assert_eq!(
        log.matches("thawed ").count(),
        2,
        "frozen and thawed for both commands: {log}"
    );
    // Through the CLI too, with the same failure.
    let out = snapfs(&[
        "snapshot",
        s.mnt.to_str().unwrap(),
        "a",
        "--cow",
        b.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert_eq!(s.log().matches("thawed ").count(), 3, "{}", s.log());
    assert!(
        writes_within(&fs, 10),
        "a write completes after the failure"
    );
    assert!(is_thawed(&fs), "fsfreeze -u: not frozen");
    writer.stop();
}

#[test]
fn no_freeze_freezes_nothing() {
    let Ext4Volume {
        stack: _stack,
        s,
        fs,
        ..
    } = setup("freeze-none");
    let writer = Writer::start(&fs, 14);
    let cow = s.path("n.cow");
    let out = snapfs_ok(&[
        "snapshot",
        s.mnt.to_str().unwrap(),
        "n",
        "--cow",
        cow.to_str().unwrap(),
        "--size",
        "160M",
        "--no-freeze",
    ]);
    writer.stop();
    assert!(out.contains("not frozen: nofreeze"), "{out}");
    assert!(!out.contains("froze "), "{out}");
    assert!(!s.log().contains("froze "), "{}", s.log());
    // A mounted ext4 caught unfrozen has its journal open.
    let f = features(&s.file("n"));
    assert!(f.contains("needs_recovery"), "{f}");
    assert!(is_thawed(&fs));
}

#[test]
fn a_file_system_frozen_by_the_user_stays_frozen() {
    let Ext4Volume {
        stack: _stack,
        s,
        fs,
        ..
    } = setup("freeze-user");
    std::fs::write(fs.join("before"), b"x").unwrap();
    let _thaw = Frozen::new(&fs);
    let cow = s.path("u.cow");
    sparse_file(&cow, 160 * MIB);
    let (r, answer) = control(&s, &format!("snapshot u {} P 8", cow.display()));
    assert!(r.is_ok(), "{answer}");
    assert!(answer.contains("frozen already"), "{answer}");
    assert!(!writes_within(&fs, 2), "still frozen: a write waits");
    run("fsfreeze", &["-u", fs.to_str().unwrap()]);
    assert!(writes_within(&fs, 10));
    let f = features(&s.file("u"));
    assert!(!f.contains("needs_recovery"), "{f}");
}

/// Detaches a loop device on drop.
struct Detach(String);

impl Drop for Detach {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).output();
    }
}

/// Unmounts on drop (before the loop device goes).
struct Umount(PathBuf);

impl Drop for Umount {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).output();
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

#[test]
fn a_partition_of_a_loop_device_over_the_origin_is_frozen() {
    let mut s = Scratch::new("freeze-part");
    let origin = s.path("origin.img");
    // One Linux partition from 1 MiB to the end.
    std::fs::write(&origin, mbr_image(64 * MIB, 2048, 63 * 2048)).unwrap();
    s.mount_daemon(&origin, &[], &[]);
    let looped = PartitionedLoop::attach(&s.file("origin"), &s.path("part1"));
    let lo_name = looped.name();
    let node = looped.part.clone();
    run("mkfs.ext4", &["-q", "-F", node.to_str().unwrap()]);
    let fs = s.path("fs");
    std::fs::create_dir_all(&fs).unwrap();
    run("mount", &[node.to_str().unwrap(), fs.to_str().unwrap()]);
    let _umount = Umount(fs.clone());
    std::fs::write(fs.join("data"), Rng(3).bytes(MIB)).unwrap();
    let cow = s.path("p.cow");
    sparse_file(&cow, 64 * MIB);
    let (r, answer) = control(&s, &format!("snapshot p {} P 8", cow.display()));
    assert!(r.is_ok(), "{answer}");
    assert!(
        answer.contains(&format!(
            "froze {} (ext4 on /dev/{lo_name}p1)",
            fs.display()
        )),
        "{answer}"
    );
    assert!(is_thawed(&fs));
    // The snapshot's partition is clean: read through a second partitioned loop device.
    let snap = s.file("p");
    let offset = (MIB).to_string();
    let ro = run(
        "losetup",
        &["-f", "--show", "-r", "-o", &offset, snap.to_str().unwrap()],
    )
    .trim()
    .to_string();
    let _detach_ro = Detach(ro.clone());
    let f = features(Path::new(&ro));
    assert!(!f.contains("needs_recovery"), "{f}");
    run("e2fsck", &["-fn", &ro]);
}

/// The bounds, on a plain ext4 image (no snapfs needed: the freeze finds loop devices by their
/// backing file's device and inode): nothing stays frozen past the frozen-time bound even while
/// the guard is held, and a panic while frozen thaws.
#[test]
fn the_frozen_time_is_bounded_and_a_panic_thaws() {
    use snapfs::host::freeze::freeze_users_within;
    use std::os::unix::fs::MetadataExt;
    let s = Scratch::new("freeze-bound");
    let mut stack = Stack::default();
    let image = s.path("ext4.img");
    sparse_file(&image, 64 * MIB);
    run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    let dev = stack.attach(&image, false, false);
    let fs = s.path("fs");
    stack.mount(&dev, &fs, "rw");
    let meta = std::fs::metadata(&image).unwrap();
    let id = (meta.dev() as libc::dev_t, meta.ino());

    // The watchdog thaws at the bound while the guard is still held.
    let frozen = freeze_users_within(id, Duration::from_secs(10), Duration::from_millis(300))
        .expect("freeze");
    assert!(!is_thawed_probe(&fs), "frozen at first");
    std::thread::sleep(Duration::from_millis(800));
    assert!(writes_within(&fs, 5), "thawed by the watchdog");
    let thawed = frozen.thaw();
    assert!(
        thawed
            .warnings
            .iter()
            .any(|w| w.contains("thawed after 300 ms")),
        "{thawed:?}"
    );
    assert!(is_thawed(&fs));

    // A panic while frozen thaws (the guard's Drop).
    let fs2 = fs.clone();
    let outcome = std::panic::catch_unwind(move || {
        let _frozen =
            freeze_users_within(id, Duration::from_secs(10), Duration::from_secs(60)).unwrap();
        assert!(!is_thawed_probe(&fs2), "frozen");
        panic!("boom while frozen");
    });
    assert!(outcome.is_err());
    assert!(writes_within(&fs, 5), "thawed by the panic's unwinding");
    assert!(is_thawed(&fs));
}

/// Whether `fs` is thawed, without changing it: a frozen file system refuses a second freeze
/// (EBUSY); a thawed one takes it, and is thawed again at once.
fn is_thawed_probe(fs: &Path) -> bool {
    let out = Command::new("fsfreeze").arg("-f").arg(fs).output().unwrap();
    if out.status.success() {
        run("fsfreeze", &["-u", fs.to_str().unwrap()]);
        return true;
    }
    false
}
