//! ext4 on a loop device over snapfs files, in both loop modes (direct I/O and buffered): mkfs,
//! files with known content, a snapshot, fio with crc32c verification inside the live
//! filesystem, deletes, fstrim, sync; then `e2fsck -fn` on origin and snapshot, and the snapshot
//! shows the filesystem exactly as it was, also after a remount. Needs root, fio, e2fsprogs.

mod e2e_support;

use e2e_support::*;
use std::path::Path;

const ORIGIN_BYTES: u64 = 192 * MIB;

/// The files of the "before" state: name and content.
fn original_files(seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng(seed);
    (0..12)
        .map(|i| {
            let len = 1 + rng.below(3 * MIB);
            (format!("file{i}.bin"), rng.bytes(len))
        })
        .collect()
}

fn assert_files(dir: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (name, content) in files {
        let got = std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{what}: {name}: {e}"));
        assert!(
            got == *content,
            "{what}: {name} differs from what was written"
        );
    }
}

fn ext4_through_loop(direct: bool) {
    let tag = if direct { "loop-dio" } else { "loop-buffered" };
    let mut s = Scratch::new(tag);
    let mut stack = Stack::default();
    let (origin, cow) = (s.path("origin.img"), s.path("snap.cow"));
    let (fs, view) = (s.path("fs"), s.path("view"));
    sparse_file(&origin, ORIGIN_BYTES);
    sparse_file(&cow, ORIGIN_BYTES);
    let files = original_files(if direct { 1 } else { 2 });

    // 1. A filesystem with known files on the origin, no snapshot yet.
    s.mount_daemon(&origin, &[], &[]);
    let dev = stack.attach(&s.file("origin"), direct, false);
    run("mkfs.ext4", &["-q", "-F", &dev]);
    stack.mount(&dev, &fs, "rw");
    for (name, content) in &files {
        std::fs::write(fs.join(name), content).unwrap();
    }
    stack.umount(&fs);
    stack.detach(&dev);
    assert_eq!(s.unmount(), 0, "{}", s.log());

    // 2. With a snapshot: verified random writes (fio), deletes, new files, fstrim, sync.
    let spec = format!("snapshot=before:{}:P:8", cow.display());
    s.mount_daemon(&origin, &[&spec], &[]);
    let dev = stack.attach(&s.file("origin"), direct, false);
    stack.mount(&dev, &fs, "rw");
    let fio_file = format!("--filename={}", fs.join("fio.dat").display());
    let fio = run(
        "fio",
        &[
            "--name=verify",
            &fio_file,
            "--size=48M",
            "--rw=randwrite",
            "--bsrange=4k-128k",
            "--ioengine=libaio",
            "--iodepth=16",
            "--direct=1",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--randseed=7",
            "--verify_state_save=0",
        ],
    );
    assert!(fio.contains("verify"), "fio output: {fio}");
    for (name, _) in files.iter().step_by(2) {
        std::fs::remove_file(fs.join(name)).unwrap();
    }
    std::fs::write(fs.join("new.bin"), Rng(9).bytes(5 * MIB)).unwrap();
    run("fstrim", &[fs.to_str().unwrap()]);
    run("sync", &[]);
    stack.umount(&fs);
    run("e2fsck", &["-fn", &dev]);
    stack.detach(&dev);

    // 3. The snapshot is the filesystem as it was, and clean.
    let snap_dev = stack.attach(&s.file("before"), direct, true);
    run("e2fsck", &["-fn", &snap_dev]);
    stack.mount(&snap_dev, &view, "ro,noload");
    assert_files(&view, &files, "snapshot");
    assert!(
        !view.join("fio.dat").exists(),
        "the snapshot predates fio's file"
    );
    stack.umount(&view);
    stack.detach(&snap_dev);
    assert_eq!(s.unmount(), 0, "{}", s.log());

    // 4. After a remount the snapshot still reads the same (persistent store).
    s.mount_daemon(&origin, &[&spec], &[]);
    let snap_dev = stack.attach(&s.file("before"), direct, true);
    run("e2fsck", &["-fn", &snap_dev]);
    stack.mount(&snap_dev, &view, "ro,noload");
    assert_files(&view, &files, "snapshot after remount");
    stack.umount(&view);
    stack.detach(&snap_dev);
    let lines = status(&s);
    assert!(
        lines.iter().any(|l| l.0 == "before" && l.3 == "snapshot"),
        "{lines:?}"
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn ext4_on_loop_direct_io() {
    ext4_through_loop(true);
}

#[test]
fn ext4_on_loop_buffered() {
    ext4_through_loop(false);
}
