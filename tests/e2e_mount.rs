//! End-to-end tests: real FUSE mounts of the `snapfs` binary over image files (needs root and
//! /dev/fuse). Every test works in its own temporary directory; a guard unmounts (`umount -l`),
//! kills what it started and removes the directory, also when the test fails.
//!
//! Daemon-mode mounts leave a grandchild behind; the test process makes itself a child
//! subreaper so that such daemons become its children and their exit status can be checked.

mod e2e_support;

use e2e_support::*;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::process::Stdio;

const ORIGIN_BYTES: u64 = 64 * MIB;

fn fallocate(f: &File, mode: i32, offset: u64, len: u64) {
    // SAFETY: fallocate on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, offset as i64, len as i64) };
    assert_eq!(
        rc,
        0,
        "fallocate mode {mode:#x}: {}",
        std::io::Error::last_os_error()
    );
}

// ----- tests ----------------------------------------------------------------------------------

/// Writes from several threads to the origin and two snapshots, each thread in its own stripe;
/// every byte read back must match the model, also after a remount.
#[test]
fn origin_and_snapshots_match_the_model() {
    let mut s = Scratch::new("model");
    let origin = s.path("origin.img");
    let (cow_p, cow_n) = (s.path("p.cow"), s.path("n.cow"));
    let initial = write_random_image(&origin, ORIGIN_BYTES, 1);
    sparse_file(&cow_p, 48 * MIB);
    sparse_file(&cow_n, 48 * MIB);
    let spec_p = format!("snapshot=p:{}:P:8", cow_p.display());
    let spec_n = format!("snapshot=n:{}:N:16", cow_n.display());
    s.mount_foreground(&origin, &[&format!("{spec_p},{spec_n}")], &[]);

    const THREADS: u64 = 4;
    let stripe = ORIGIN_BYTES / THREADS;
    let names = ["origin", "p", "n"];
    let logs: Vec<Vec<(usize, u64, Vec<u8>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    let files: Vec<File> = names.iter().map(|n| open_rw(&s.file(n))).collect();
                    let mut rng = Rng(100 + t);
                    let mut log = Vec::new();
                    for _ in 0..24 {
                        let which = rng.below(3) as usize;
                        let len = 1 + rng.below(192 * 1024);
                        let offset = t * stripe + rng.below(stripe - len);
                        let data = rng.bytes(len);
                        files[which].write_all_at(&data, offset).unwrap();
                        log.push((which, offset, data));
                    }
                    log
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut models = vec![initial.clone(), initial.clone(), initial];
    for (which, offset, data) in logs.into_iter().flatten() {
        models[which][offset as usize..offset as usize + data.len()].copy_from_slice(&data);
    }
    for (name, model) in names.iter().zip(&models) {
        assert_same(name, &std::fs::read(s.file(name)).unwrap(), model);
    }
    assert_eq!(s.unmount(), 0, "snapfs exits 0 after umount: {}", s.log());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &models[0]);

    s.mount_foreground(&origin, &[&spec_p], &[]);
    assert_same(
        "origin",
        &std::fs::read(s.file("origin")).unwrap(),
        &models[0],
    );
    assert_same("p", &std::fs::read(s.file("p")).unwrap(), &models[1]);
    assert!(!s.file("n").exists(), "n was not asked for");
    assert_eq!(s.unmount(), 0);
}

#[test]
fn status_and_control() {
    let mut s = Scratch::new("control");
    let origin = s.path("origin.img");
    let (cow1, cow2) = (s.path("s1.cow"), s.path("s2.cow"));
    let mut model = write_random_image(&origin, ORIGIN_BYTES, 2);
    sparse_file(&cow1, 16 * MIB);
    sparse_file(&cow2, 16 * MIB);
    s.mount_daemon(
        &origin,
        &[&format!("snapshot=s1:{}:P:8", cow1.display())],
        &[],
    );

    let lines = status(&s);
    let sectors = ORIGIN_BYTES / 512;
    assert_eq!(lines[0].0, "origin");
    assert_eq!(
        (lines[0].1, lines[0].2, lines[0].3.as_str()),
        (0, sectors, "snapshot-origin")
    );
    assert_eq!((lines[1].0.as_str(), lines[1].2), ("s1", sectors));
    let before = allocated_sectors(&s, "s1");
    let data = Rng(20).bytes(MIB);
    open_rw(&s.file("origin")).write_all_at(&data, 0).unwrap();
    model[..MIB as usize].copy_from_slice(&data);
    let after = allocated_sectors(&s, "s1");
    assert!(
        after >= before + MIB / 512,
        "copy-outs show: {before} -> {after}"
    );

    let (result, answer) = control(&s, "frobnicate now\n");
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    assert!(
        answer.starts_with("error:") && answer.contains("frobnicate"),
        "{answer}"
    );
    let (result, answer) = control(&s, "snapshot x relative.cow");
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    assert!(answer.contains("not absolute"), "{answer}");
    let (result, answer) = control(&s, "merge nosuch\n");
    assert_eq!(result.unwrap_err().raw_os_error(), Some(libc::EINVAL));
    assert!(answer.contains("no snapshot named nosuch"), "{answer}");

    let s1_ino = std::fs::metadata(s.file("s1")).unwrap().ino();
    let (result, answer) = control(&s, "drop s1\n");
    result.unwrap();
    assert!(answer.starts_with("ok"), "{answer}");
    assert!(!s.file("s1").exists(), "dropped snapshot's file is gone");
    assert_eq!(status(&s).len(), 1);

    let (result, answer) = control(&s, &format!("snapshot s2 {} P 8\n", cow2.display()));
    result.unwrap();
    assert!(answer.starts_with("ok"), "{answer}");
    let s2_ino = std::fs::metadata(s.file("s2")).unwrap().ino();
    assert_ne!(s2_ino, s1_ino, "a new snapshot, a new inode");
    assert_same(
        "s2 at attach",
        &std::fs::read(s.file("s2")).unwrap(),
        &model,
    );
    // The snapshot keeps that moment while the origin moves on.
    open_rw(&s.file("origin"))
        .write_all_at(&Rng(21).bytes(4096), 8 * MIB)
        .unwrap();
    assert_same(
        "s2 after origin write",
        &std::fs::read(s.file("s2")).unwrap(),
        &model,
    );
    assert!(allocated_sectors(&s, "s2") > 0);

    // Discard and zeroing reach the volume (the loop driver's fallocate modes); the snapshot
    // keeps its content.
    let f = open_rw(&s.file("origin"));
    fallocate(
        &f,
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
        4 * MIB,
        MIB,
    );
    fallocate(
        &f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        6 * MIB,
        MIB,
    );
    fallocate(&f, 0, 0, MIB);
    let mut buf = vec![0xffu8; MIB as usize];
    f.read_exact_at(&mut buf, 4 * MIB).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "zeroed range reads zeroes");
    assert_same(
        "s2 after fallocate",
        &std::fs::read(s.file("s2")).unwrap(),
        &model,
    );
    drop(f);

    // statfs: 4 KiB blocks; origin plus COW sizes in total; free COW space.
    let st = nix::sys::statvfs::statvfs(&s.mnt).unwrap();
    assert_eq!((st.block_size(), st.fragment_size()), (4096, 4096));
    assert_eq!(st.blocks(), (ORIGIN_BYTES + 16 * MIB) / 4096);
    assert!(st.blocks_free() > 0 && st.blocks_free() < 16 * MIB / 4096);
    let mode = |name: &str| {
        std::fs::metadata(s.file(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(
        [mode("origin"), mode("s2"), mode("status"), mode("control")],
        [0o600, 0o600, 0o444, 0o600]
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let s = Scratch::new("bad");
    let origin = s.path("origin.img");
    write_random_image(&origin, 8 * MIB, 3);
    let (fresh, corrupt) = (s.path("fresh.cow"), s.path("corrupt.cow"));
    sparse_file(&fresh, 4 * MIB);
    write_random_image(&corrupt, 4 * MIB, 4);
    let devices = [origin.clone(), fresh.clone(), corrupt.clone()];
    let sums: Vec<u64> = devices.iter().map(|d| checksum(d)).collect();
    let (o, f, c) = (origin.display(), fresh.display(), corrupt.display());
    let cases: Vec<(String, i32, &str)> = vec![
        ("frobnicate".into(), 2, "frobnicate"),
        ("snapshot=nocolon".into(), 2, "nocolon"),
        ("snapshot=a:/nonexistent/x.cow".into(), 1, "x.cow"),
        (format!("snapshot=a:{f},snapshot=a:{c}"), 2, "two snapshots"),
        (format!("snapshot=status:{f}"), 2, "reserved"),
        (format!("snapshot=a:{o}"), 1, "in use"),
        (format!("snapshot=a:{f},snapshot=b:{f}"), 1, "in use"),
        (format!("snapshot=good:{f},snapshot=bad:{c}"), 1, "corrupt"),
        (format!("snapshot=n:{f}:N:0"), 2, "Chunk size not set"),
    ];
    for foreground in [false, true] {
        for (option, code, needle) in &cases {
            let out = s
                .command(&origin, &[option], foreground)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(out.status.code(), Some(*code), "{option}: {stderr}");
            assert_eq!(lines.len(), 1, "{option}: one line: {stderr}");
            assert!(
                lines[0].starts_with("snapfs: ") && lines[0].contains(needle),
                "{stderr}"
            );
            assert!(!is_mounted(&s.mnt), "{option}");
        }
    }
    let after: Vec<u64> = devices.iter().map(|d| checksum(d)).collect();
    assert_eq!(sums, after, "no device was written");
}

#[test]
fn read_only_mount_writes_nothing() {
    let mut s = Scratch::new("ro");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = write_random_image(&origin, 16 * MIB, 5);
    sparse_file(&cow, 8 * MIB);
    let spec = format!("snapshot=s:{}:P:8", cow.display());
    // A read-only mount needs an initialised COW: make one, with some exceptions in it.
    s.mount_daemon(&origin, &[&spec], &[]);
    let data = Rng(50).bytes(256 * 1024);
    open_rw(&s.file("origin"))
        .write_all_at(&data, 3 * MIB)
        .unwrap();
    assert_eq!(s.unmount(), 0);
    let mut current = initial.clone();
    current[3 * MIB as usize..3 * MIB as usize + data.len()].copy_from_slice(&data);
    let sums = [checksum(&origin), checksum(&cow)];

    s.mount_daemon(&origin, &[&format!("ro,uid=1234,gid=99,{spec}")], &[]);
    let meta = std::fs::metadata(s.file("s")).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (1234, 99),
        "uid= and gid= own the files"
    );
    assert_same(
        "origin",
        &std::fs::read(s.file("origin")).unwrap(),
        &current,
    );
    assert_same("snapshot", &std::fs::read(s.file("s")).unwrap(), &initial);
    for name in ["origin", "s"] {
        let err = OpenOptions::new()
            .write(true)
            .open(s.file(name))
            .unwrap_err();
        let errno = err.raw_os_error();
        assert!(
            errno == Some(libc::EROFS) || errno == Some(libc::EACCES),
            "{name}: {err}"
        );
    }
    assert!(
        !s.file("control").exists(),
        "no control file when read-only"
    );
    let mode = std::fs::metadata(s.file("origin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    assert_eq!(s.unmount(), 0);
    assert_eq!(
        [checksum(&origin), checksum(&cow)],
        sums,
        "devices unchanged"
    );
}

#[test]
fn the_end_of_the_file_is_fixed() {
    let mut s = Scratch::new("eof");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = write_random_image(&origin, 4 * MIB, 6);
    sparse_file(&cow, 4 * MIB);
    s.mount_daemon(&origin, &[&format!("snapshot=s:{}:N", cow.display())], &[]);
    let size = 4 * MIB;
    for name in ["origin", "s"] {
        let f = open_rw(&s.file(name));
        assert_eq!(f.metadata().unwrap().len(), size);
        for (offset, len) in [(size - 100, 200), (size, 1), (size + 4096, 4096)] {
            let err = f.write_at(&vec![0xee; len], offset).unwrap_err();
            assert_eq!(
                err.raw_os_error(),
                Some(libc::ENOSPC),
                "{name} {offset}+{len}"
            );
        }
        let mut buf = vec![0u8; 8192];
        assert_eq!(f.read_at(&mut buf, size).unwrap(), 0, "nothing at EOF");
        assert_eq!(
            f.read_at(&mut buf, size + 1).unwrap(),
            0,
            "nothing past EOF"
        );
        assert_eq!(f.read_at(&mut buf, size - 100).unwrap(), 100, "up to EOF");
        assert_eq!(&buf[..100], &initial[size as usize - 100..]);
        let err = f.set_len(size / 2).unwrap_err();
        assert!(
            matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::EPERM)),
            "{err}"
        );
        f.set_len(size).expect("same size is fine");
        let err = f
            .set_permissions(PermissionsExt::from_mode(0o644))
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM), "chmod");
        drop(f);
        assert_same(name, &std::fs::read(s.file(name)).unwrap(), &initial);
    }
    assert_eq!(s.unmount(), 0);
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &initial);
}

#[test]
fn sigterm_unmounts_and_keeps_the_data() {
    for foreground in [false, true] {
        let mut s = Scratch::new(if foreground { "term-f" } else { "term-d" });
        let origin = s.path("origin.img");
        let mut model = write_random_image(&origin, 8 * MIB, 7);
        if foreground {
            s.mount_foreground(&origin, &[], &[]);
        } else {
            s.mount_daemon(&origin, &[], &[]);
        }
        let data = Rng(70).bytes(300_000);
        open_rw(&s.file("origin"))
            .write_all_at(&data, 12345)
            .unwrap();
        model[12345..12345 + data.len()].copy_from_slice(&data);
        // SAFETY: signalling the server this test started.
        assert_eq!(unsafe { libc::kill(s.server_pid(), libc::SIGTERM) }, 0);
        assert_eq!(s.wait_exit(), 0, "exit status after SIGTERM: {}", s.log());
        assert!(!is_mounted(&s.mnt), "the mount is gone");
        assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
    }
}

#[test]
fn fsync_reaches_the_devices() {
    let mut s = Scratch::new("fsync");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    write_random_image(&origin, 8 * MIB, 8);
    sparse_file(&cow, 8 * MIB);
    let spec = format!("snapshot=s:{}:P:8", cow.display());
    s.mount_foreground(&origin, &[&spec], &[("RUST_LOG", "snapfs=debug")]);
    let data = Rng(80).bytes(64 * 1024);
    let f = open_rw(&s.file("origin"));
    f.write_all_at(&data, 2 * MIB).unwrap();
    f.sync_all().unwrap();
    let mut direct = vec![0u8; data.len()];
    File::open(&origin)
        .unwrap()
        .read_exact_at(&mut direct, 2 * MIB)
        .unwrap();
    assert_eq!(direct, data, "the data is in the origin image");
    assert!(
        s.log().contains("origin: flushed"),
        "fsync reached the daemon: {}",
        s.log()
    );
    let snap = open_rw(&s.file("s"));
    snap.write_all_at(&data, 0).unwrap();
    snap.sync_data().unwrap();
    assert!(s.log().contains("snapshot s: flushed"));
    drop((f, snap));
    let log = s.log();
    let errors = log
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("ERROR"));
    assert_eq!(errors.count(), 0, "{log}");
    assert_eq!(s.unmount(), 0);
}

/// The `snapfs` binary places fuser's request buffers so that a write's data arrives aligned
/// for direct I/O (src/fuse/request_buffers.rs): the daemon says so at the first large write,
/// and the data lands where it was written. Fails if the placement stops working (a fuser
/// with another buffer size, say), which would cost every write one more copy.
#[test]
fn write_data_arrives_aligned() {
    let mut s = Scratch::new("aligned");
    let origin = s.path("origin.img");
    let mut model = write_random_image(&origin, 8 * MIB, 9);
    s.mount_foreground(&origin, &[], &[("RUST_LOG", "snapfs=debug")]);
    let data = Rng(90).bytes(MIB);
    let mut buf = snapfs::device::IoBuf::new(data.len());
    buf.copy_from_slice(&data);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(s.file("origin"))
        .unwrap();
    f.write_all_at(&buf, 3 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    model[3 * MIB as usize..4 * MIB as usize].copy_from_slice(&data);
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    let log = s.log();
    assert!(
        log.contains("write data arrives on a 4096-byte boundary"),
        "the daemon saw the write's data aligned: {log}"
    );
    assert_eq!(s.unmount(), 0);
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
}
