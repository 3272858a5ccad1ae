//! A COW that leads back to the mount: its own files, a file system on its own origin, a
//! partition of a loop device over it, a cycle through two mounts; a stopped peer does not
//! hang the check; paths given at mount time.

use super::*;

// ----- a COW that leads back to the mount -------------------------------------------------------

/// `snapshot y COW` where COW is one of the mount's own files, under any name: the file
/// itself, a snapshot file, a symlink, a bind mount of the mount, /proc/PID/fd/N, a loop device
/// over it, and the CLI. Each is refused with the reason; the origin, the existing snapshot and
/// the snapshot list are unchanged, and the mount keeps serving writes.
#[test]
fn a_cow_on_the_mounts_own_files_is_refused() {
    let mut s = Scratch::new("edges-own");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = zero_first_image(&origin, 16 * MIB, 1);
    sparse_file(&cow, 8 * MIB);
    s.mount_daemon(&origin, &[&format!("snapshot=s:{}", cow.display())], &[]);
    let mut stack = Stack::default();
    let mut model = initial.clone();
    write_at(&s.file("origin"), 4 * MIB, 8192, 10, &mut model);

    let link = s.path("link");
    std::os::unix::fs::symlink(s.file("origin"), &link).unwrap();
    let bind = s.path("bind");
    std::fs::create_dir(&bind).unwrap();
    run(
        "mount",
        &["--bind", s.mnt.to_str().unwrap(), bind.to_str().unwrap()],
    );
    stack.track_mount(&bind);
    let held = File::open(s.file("origin")).unwrap();
    let by_fd = format!("/proc/{}/fd/{}", std::process::id(), held.as_raw_fd());
    let lo = stack.attach(&s.file("origin"), false, false);
    let _abort = AbortOnPanic::new(&[&s]);

    let candidates: Vec<(String, &str)> = vec![
        (
            s.file("origin").display().to_string(),
            "is a file of this mount",
        ),
        (s.file("s").display().to_string(), "is a file of this mount"),
        (link.display().to_string(), "is a file of this mount"),
        (
            bind.join("origin").display().to_string(),
            "is a file of this mount",
        ),
        (by_fd.clone(), "is a file of this mount"),
        (lo.clone(), "loop device over"),
    ];
    for (i, (path, needle)) in candidates.iter().enumerate() {
        let answer = refused(&s.mnt, &format!("snapshot y {path}"), needle);
        assert!(answer.contains("wait on themselves"), "{answer}");
        assert_eq!(snapshots_of(&s.mnt), ["s"], "after {path}");
        assert_same(path, &read_all(&s.file("origin")), &model);
        assert_same("snapshot s", &read_all(&s.file("s")), &initial);
        // The mount still serves: an origin write copies out to s, and s still reads as before.
        write_at(
            &s.file("origin"),
            i as u64 * MIB,
            4096,
            20 + i as u64,
            &mut model,
        );
        assert_same(
            "snapshot s after a write",
            &read_all(&s.file("s")),
            &initial,
        );
    }
    // The CLI goes through `control`: the same refusal, exit 1.
    let mnt = s.mnt.to_str().unwrap();
    let out = snapfs(&["snapshot", mnt, "y", "--cow", s.file("s").to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a file of this mount"), "{stderr}");
    drop(held);
    stack.detach(&lo);
    stack.umount(&bind);
    assert_same("origin", &read_all(&s.file("origin")), &model);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
}

/// A COW file on an ext4 that lives on the mount's own origin (through a loop device) leads
/// back; the same on another mount's origin is ordinary stacking and works.
#[test]
fn a_cow_on_a_filesystem_on_the_own_origin_is_refused() {
    let mut s = Scratch::new("edges-ext4");
    let mut other = Scratch::new("edges-ext4-other");
    let origin = s.path("origin.img");
    let other_origin = other.path("origin.img");
    sparse_file(&origin, 64 * MIB);
    sparse_file(&other_origin, 64 * MIB);
    s.mount_daemon(&origin, &[], &[]);
    other.mount_daemon(&other_origin, &[], &[]);
    let mut stack = Stack::default();
    let mut exts = Vec::new();
    for (tag, mount) in [("own", &s), ("other", &other)] {
        let lo = stack.attach(&mount.file("origin"), true, false);
        run("mkfs.ext4", &["-q", "-F", &lo]);
        let dir = s.path(&format!("ext-{tag}"));
        stack.mount(&lo, &dir, "rw");
        sparse_file(&dir.join("y.cow"), 8 * MIB);
        exts.push((lo, dir));
    }
    let _abort = AbortOnPanic::new(&[&s, &other]);
    let own_cow = exts[0].1.join("y.cow");
    let answer = refused(
        &s.mnt,
        &format!("snapshot y {}", own_cow.display()),
        "leads back to this mount",
    );
    assert!(answer.contains(&format!("loop device over {}", s.file("origin").display())));
    assert!(snapshots_of(&s.mnt).is_empty());
    // The filesystem on the origin still works.
    let file = exts[0].1.join("data");
    let payload = Rng(5).bytes(MIB);
    let (f, p) = (file.clone(), payload.clone());
    bounded("ext4 write", move || {
        std::fs::write(&f, &p).unwrap();
        File::open(&f).unwrap().sync_all().unwrap();
    });
    assert_eq!(std::fs::read(&file).unwrap(), payload);
    // A COW on a filesystem on another mount's origin: no cycle, attached and copying.
    // nofreeze: frozen, the snapshot would hold ext4's clean superblock and the thaw would then
    // change the origin's (needs_recovery again), which this comparison is not about.
    let other_cow = exts[1].1.join("y.cow");
    accepted(
        &s.mnt,
        &format!("snapshot y {} nofreeze", other_cow.display()),
    );
    let before = read_all(&s.file("origin"));
    let mut model = before.clone();
    write_at(&s.file("origin"), 40 * MIB, 65536, 6, &mut model);
    assert_same("snapshot y", &read_all(&s.file("y")), &before);
    accepted(&s.mnt, "drop y");
    drop(stack);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_eq!(other.unmount(), 0, "{}", other.log());
}

/// A partition of a loop device over the origin leads back through the loop device
/// (`/sys/block/loopN/loopNp1/partition`, then the loop's backing file).
#[test]
fn a_partition_of_a_loop_device_over_the_origin_is_refused() {
    let mut s = Scratch::new("edges-part");
    let origin = s.path("origin.img");
    // One Linux partition from 1 MiB, 8 MiB long; the partition itself is zero.
    let image = mbr_image(16 * MIB, 2048, 16384);
    std::fs::write(&origin, &image).unwrap();
    s.mount_daemon(&origin, &[], &[]);
    let looped = PartitionedLoop::attach(&s.file("origin"), &s.path("part1"));
    let _abort = AbortOnPanic::new(&[&s]);
    let lo_name = looped.name();
    let part = looped.part.display().to_string();
    let answer = refused(
        &s.mnt,
        &format!("snapshot y {part}"),
        "leads back to this mount",
    );
    assert!(
        answer.contains(&format!("partition of /dev/{lo_name}")),
        "{answer}"
    );
    assert!(answer.contains("loop device over"), "{answer}");
    assert!(snapshots_of(&s.mnt).is_empty());
    assert_same("origin", &read_all(&s.file("origin")), &image);
    drop(looped);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// A peer whose daemon is stopped does not hang the check: a COW on its files is refused after
/// the check's time limit, at mount and for a `snapshot` command, and this mount keeps serving.
#[test]
fn a_stopped_peer_does_not_hang_the_check() {
    let mut m1 = Scratch::new("edges-stopped1");
    let mut m2 = Scratch::new("edges-stopped2");
    let m3 = Scratch::new("edges-stopped3");
    let o1 = m1.path("origin.img");
    let o2 = m2.path("origin.img");
    let o3 = m3.path("origin.img");
    let mut model = zero_first_image(&o1, 8 * MIB, 121);
    zero_first_image(&o2, 8 * MIB, 122);
    zero_first_image(&o3, 8 * MIB, 123);
    m1.mount_daemon(&o1, &[], &[]);
    m2.mount_daemon(&o2, &[], &[]);
    let _abort = AbortOnPanic::new(&[&m1, &m2]);
    let peer = m2.server_pid();
    kill(peer, libc::SIGSTOP);
    let _cont = Continue(peer);
    let started = Instant::now();
    refused(
        &m1.mnt,
        &format!("snapshot y {}", m2.file("origin").display()),
        "does not answer",
    );
    assert!(started.elapsed() < Duration::from_secs(10), "bounded");
    assert!(snapshots_of(&m1.mnt).is_empty());
    write_at(&m1.file("origin"), MIB, 4096, 124, &mut model);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model);
    let sum = checksum(&o3);
    let option = format!("snapshot=y:{}", m2.file("origin").display());
    let out = snapfs_mount(&o3, &m3.mnt, &[&option], &m3.path("m3.log"));
    let log = std::fs::read_to_string(m3.path("m3.log")).unwrap();
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains("does not answer"), "{log}");
    assert!(!is_mounted(&m3.mnt));
    assert_eq!(checksum(&o3), sum);
    kill(peer, libc::SIGCONT);
    assert_eq!(m2.unmount(), 0);
    assert_eq!(m1.unmount(), 0);
}

/// Sends SIGCONT to a stopped daemon when dropped (a failed test must not leave it stopped).
struct Continue(i32);

impl Drop for Continue {
    fn drop(&mut self) {
        // SAFETY: a signal to a daemon this test started.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

/// Two mounts: m1 takes a COW on m2's origin (a chain: allowed, and it works); m2 then asking
/// for a COW on m1's origin would close a cycle and is refused, changing nothing.
#[test]
fn a_cycle_through_two_mounts_is_refused() {
    let mut m1 = Scratch::new("edges-cycle1");
    let mut m2 = Scratch::new("edges-cycle2");
    let o1 = m1.path("origin.img");
    let o2 = m2.path("origin.img");
    let initial1 = zero_first_image(&o1, 16 * MIB, 31);
    zero_first_image(&o2, 16 * MIB, 32);
    m1.mount_daemon(&o1, &[], &[]);
    m2.mount_daemon(&o2, &[], &[]);
    let _abort = AbortOnPanic::new(&[&m1, &m2]);
    accepted(
        &m1.mnt,
        &format!("snapshot a {}", m2.file("origin").display()),
    );
    let mut model1 = initial1.clone();
    write_at(&m1.file("origin"), MIB, 65536, 33, &mut model1);
    assert_same("m1 snapshot a", &read_all(&m1.file("a")), &initial1);
    let m2_origin = read_all(&m2.file("origin"));

    let answer = refused(
        &m2.mnt,
        &format!("snapshot b {}", m1.file("origin").display()),
        "leads back to this mount",
    );
    assert!(
        answer.contains(&format!("file of the snapfs mount on {}", m1.mnt.display())),
        "{answer}"
    );
    assert!(snapshots_of(&m2.mnt).is_empty());
    assert_eq!(snapshots_of(&m1.mnt), ["a"]);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model1);
    assert_same("m2 origin", &read_all(&m2.file("origin")), &m2_origin);
    // Both still serve.
    write_at(&m1.file("origin"), 2 * MIB, 4096, 34, &mut model1);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model1);
    assert_same("m1 snapshot a", &read_all(&m1.file("a")), &initial1);
    let mut model2 = read_all(&m2.file("origin"));
    write_at(&m2.file("origin"), 8 * MIB, 4096, 35, &mut model2);
    assert_same("m2 origin", &read_all(&m2.file("origin")), &model2);
    assert_eq!(m1.unmount(), 0, "{}", m1.log());
    assert_eq!(m2.unmount(), 0, "{}", m2.log());
}

/// Legitimate stacking: m2's origin is m1's origin and m2's COW is m1's snapshot file. Data
/// flows through both; m1 asking for a COW on m2's origin would close a cycle and is refused.
#[test]
fn stacking_without_a_cycle_keeps_working() {
    let mut m1 = Scratch::new("edges-stack1");
    let mut m2 = Scratch::new("edges-stack2");
    let o1 = m1.path("origin.img");
    let s1 = m1.path("s1.cow");
    let initial = zero_first_image(&o1, 16 * MIB, 41);
    sparse_file(&s1, 16 * MIB);
    m1.mount_daemon(&o1, &[&format!("snapshot=s1:{}", s1.display())], &[]);
    let t_option = format!("snapshot=t:{}", m1.file("s1").display());
    m2.mount_daemon(&m1.file("origin"), &[&t_option], &[]);
    let _abort = AbortOnPanic::new(&[&m1, &m2]);
    let mut model = initial.clone();
    write_at(&m2.file("origin"), 3 * MIB, 65536, 42, &mut model);
    assert_same("m2 origin", &read_all(&m2.file("origin")), &model);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model);
    assert_same("m2 snapshot t", &read_all(&m2.file("t")), &initial);

    let answer = refused(
        &m1.mnt,
        &format!("snapshot z {}", m2.file("origin").display()),
        "leads back to this mount",
    );
    assert!(answer.contains("its origin"), "{answer}");
    assert_eq!(snapshots_of(&m1.mnt), ["s1"]);
    assert_same("m1 origin", &read_all(&m1.file("origin")), &model);
    write_at(&m2.file("origin"), 9 * MIB, 4096, 43, &mut model);
    assert_same("m2 snapshot t", &read_all(&m2.file("t")), &initial);
    assert_eq!(m2.unmount(), 0, "{}", m2.log());
    assert_eq!(m1.unmount(), 0, "{}", m1.log());
    assert_same("origin image", &std::fs::read(&o1).unwrap(), &model);
}

/// At mount time, before the mount exists, a path inside the mount point names what will be
/// the mount's own files: an origin, a COW (from `-o snapshot=` or the registry), a log file
/// or a registry there is refused, as is a log file or registry that is one of the devices.
/// Nothing is written, nothing mounted.
#[test]
fn mount_time_paths_into_the_mount_point_or_onto_devices_are_refused() {
    let s = Scratch::new("edges-mounttime");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    zero_first_image(&origin, 8 * MIB, 51);
    sparse_file(&cow, 8 * MIB);
    let inside_origin = s.file("o.img");
    let inside_cow = s.file("x.cow");
    zero_first_image(&inside_origin, 8 * MIB, 52);
    sparse_file(&inside_cow, 8 * MIB);
    let link = s.path("link.cow");
    std::os::unix::fs::symlink(&inside_cow, &link).unwrap();
    let origin_link = s.path("origin-link");
    std::os::unix::fs::symlink(&origin, &origin_link).unwrap();
    let registry = s.path("reg");
    std::fs::write(&registry, format!("x {} P 8\n", inside_cow.display())).unwrap();
    let spare = s.path("spare.img");
    sparse_file(&spare, MIB);
    let mut stack = Stack::default();
    let lo = stack.attach(&spare, false, false);
    let files = [
        &origin,
        &cow,
        &inside_origin,
        &inside_cow,
        &registry,
        &spare,
    ];
    let before = sums(&files.map(|p| p.as_path()));

    let d = |p: &Path| p.display().to_string();
    let s_opt = format!("snapshot=s:{}", d(&cow));
    let cases: Vec<(PathBuf, Vec<String>, &str)> = vec![
        (inside_origin.clone(), vec![], "origin"),
        (
            origin.clone(),
            vec![format!("snapshot=x:{}", d(&inside_cow))],
            "COW",
        ),
        (
            origin.clone(),
            vec![format!("snapshot=x:{}", d(&link))],
            "COW",
        ),
        (
            origin.clone(),
            vec![format!("registry={}", d(&registry))],
            "(from the registry)",
        ),
        (
            origin.clone(),
            vec![format!("registry={}", d(&s.file("reg")))],
            "registry",
        ),
        (
            origin.clone(),
            vec![format!("log={}", d(&s.file("snapfs.log")))],
            "log file",
        ),
    ];
    for (o, options, what) in &cases {
        let opts: Vec<&str> = options.iter().map(String::as_str).collect();
        let out = s
            .command(o, &opts, false)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(
            stderr.contains("inside the mount point"),
            "{options:?}: {stderr}"
        );
        assert!(stderr.contains(what), "{options:?}: {stderr}");
        assert!(!is_mounted(&s.mnt));
    }
    let devices: Vec<(Vec<String>, &str)> = vec![
        (vec![format!("log={}", d(&origin))], "is the origin"),
        (vec![format!("log={}", d(&origin_link))], "is the origin"),
        (
            vec![s_opt.clone(), format!("log={}", d(&cow))],
            "is the COW",
        ),
        (
            vec![s_opt.clone(), format!("registry={}", d(&cow))],
            "is the COW",
        ),
        (
            vec![
                format!("log={}", d(&registry)),
                format!("registry={}", d(&registry)),
            ],
            "is also the registry",
        ),
        (vec![format!("log={lo}")], "is a block device"),
    ];
    for (options, needle) in &devices {
        let opts: Vec<&str> = options.iter().map(String::as_str).collect();
        let out = s
            .command(&origin, &opts, false)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{options:?}: {stderr}");
        assert!(stderr.contains(needle), "{options:?}: {stderr}");
        assert!(!is_mounted(&s.mnt));
    }
    assert_eq!(
        before,
        sums(&files.map(|p| p.as_path())),
        "nothing was written"
    );
    assert!(!s.file("snapfs.log").exists() && !s.file("reg").exists());
}
