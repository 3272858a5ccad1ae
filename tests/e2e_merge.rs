//! Merge end to end: roll an ext4 origin back to its snapshot with `echo merge NAME > control`,
//! and kill -9 the daemon in the middle of a large merge, then remount: the origin is correct
//! at once and after the merge completes.

mod e2e_support;

use e2e_support::*;
use std::io::Write;

fn merging(s: &Scratch, name: &str) -> bool {
    status(s).iter().any(|l| l.0 == name)
}

#[test]
fn ext4_rolls_back_to_its_snapshot() {
    let mut s = Scratch::new("merge-ext4");
    let mut stack = Stack::default();
    let (origin, cow, fs) = (s.path("origin.img"), s.path("snap.cow"), s.path("fs"));
    sparse_file(&origin, 128 * MIB);
    sparse_file(&cow, 128 * MIB);
    let mut rng = Rng(5);
    let old: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let len = 1 + rng.below(2 * MIB);
            (format!("old{i}"), rng.bytes(len))
        })
        .collect();

    s.mount_daemon(&origin, &[], &[]);
    let dev = stack.attach(&s.file("origin"), true, false);
    run("mkfs.ext4", &["-q", "-F", &dev]);
    stack.mount(&dev, &fs, "rw");
    for (name, data) in &old {
        std::fs::write(fs.join(name), data).unwrap();
    }
    stack.umount(&fs);
    stack.detach(&dev);
    assert_eq!(s.unmount(), 0, "{}", s.log());

    let spec = format!("snapshot=keep:{}:P:8", cow.display());
    s.mount_daemon(&origin, &[&spec], &[]);
    let dev = stack.attach(&s.file("origin"), true, false);
    stack.mount(&dev, &fs, "rw");
    for (name, _) in &old {
        std::fs::write(fs.join(name), rng.bytes(300_000)).unwrap();
    }
    std::fs::write(fs.join("new"), rng.bytes(4 * MIB)).unwrap();
    let (refused, answer) = control(&s, "merge keep");
    assert_eq!(
        refused.unwrap_err().raw_os_error(),
        Some(libc::EBUSY),
        "merge while the origin is in use: {answer}"
    );
    assert!(answer.contains("open"), "the reason is readable: {answer}");
    assert!(
        merging(&s, "keep") && s.file("keep").exists(),
        "nothing changed"
    );
    stack.umount(&fs);
    stack.detach(&dev);

    let (started, answer) = control(&s, "merge keep");
    started.unwrap_or_else(|e| panic!("merge starts once nothing uses the origin: {e}: {answer}"));
    assert!(
        !s.file("keep").exists(),
        "the merging snapshot leaves the directory"
    );
    wait_for(120, "the merge to complete", || !merging(&s, "keep"));

    let dev = stack.attach(&s.file("origin"), true, false);
    run("e2fsck", &["-fn", &dev]);
    stack.mount(&dev, &fs, "rw");
    for (name, data) in &old {
        let got = std::fs::read(fs.join(name)).unwrap();
        assert!(got == *data, "{name} is back as it was");
    }
    assert!(
        !fs.join("new").exists(),
        "files made after the snapshot are gone"
    );
    stack.umount(&fs);
    stack.detach(&dev);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn kill_9_during_a_large_merge_resumes() {
    let mut s = Scratch::new("merge-kill");
    let (origin, cow) = (s.path("origin.img"), s.path("snap.cow"));
    write_random_image(&origin, 48 * MIB, 11);
    sparse_file(&cow, 64 * MIB);
    let snapshot_sum = checksum(&origin);
    // One-sector chunks: 98304 exceptions, merged in runs of at most 32 (one metadata area),
    // so the merge runs long enough to be interrupted.
    let spec = format!("snapshot=big:{}:P:1", cow.display());
    s.mount_daemon(&origin, &[&spec], &[]);
    {
        // Rewrite the whole origin: every chunk is copied out.
        let mut f = open_rw(&s.file("origin"));
        let mut rng = Rng(12);
        for _ in 0..48 {
            f.write_all(&rng.bytes(MIB)).unwrap();
        }
        f.sync_all().unwrap();
    }
    assert_eq!(
        checksum(&s.file("big")),
        snapshot_sum,
        "snapshot before the merge"
    );
    let (started, answer) = control(&s, "merge big");
    started.unwrap_or_else(|e| panic!("merge: {e}: {answer}"));
    assert_eq!(
        checksum(&s.file("origin")),
        snapshot_sum,
        "merged view at once"
    );
    assert!(merging(&s, "big"), "the merge is still running when killed");
    let pid = s.server_pid();
    // SAFETY: killing the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for(10, "the killed daemon to be gone", || {
        let mut st = 0;
        // SAFETY: reaping our adopted child.
        unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) == pid }
    });
    s.daemon = None;
    run("umount", &["-l", s.mnt.to_str().unwrap()]);

    s.mount_daemon(&origin, &[&spec], &[]);
    assert_eq!(
        checksum(&s.file("origin")),
        snapshot_sum,
        "after kill -9 the origin reads as the snapshot from the first read"
    );
    wait_for(300, "the resumed merge to complete", || !merging(&s, "big"));
    assert_eq!(checksum(&s.file("origin")), snapshot_sum, "after the merge");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_eq!(checksum(&origin), snapshot_sum, "the origin image itself");
}
