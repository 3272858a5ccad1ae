//! One mount per mount point, remounts right after umount, devices of gone and live mounts,
//! signals, and the messages of a mount without root and of debug logging.

use super::*;

// ----- one mount per mount point ------------------------------------------------------------------

/// A second `snapfs mount` on a directory that holds a snapfs mount is refused; the first one
/// serves on, and one `umount` ends it alone.
#[test]
fn a_second_mount_on_a_mount_point_is_refused() {
    let mut s = Scratch::new("edges-stacked");
    let (o1, o2) = (s.path("o1.img"), s.path("o2.img"));
    let data1 = write_random_image(&o1, 8 * MIB, 61);
    write_random_image(&o2, 8 * MIB, 62);
    s.mount_daemon(&o1, &[], &[]);
    let sum2 = checksum(&o2);
    for foreground in [false, true] {
        let out = s
            .command(&o2, &[], foreground)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("already holds a snapfs mount"), "{stderr}");
        assert!(stderr.contains(o1.to_str().unwrap()), "{stderr}");
    }
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mnt = s.mnt.to_str().unwrap();
    assert_eq!(
        table
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(mnt))
            .count(),
        1
    );
    assert_eq!(checksum(&o2), sum2);
    assert_same("origin", &read_all(&s.file("origin")), &data1);
    assert_eq!(s.unmount(), 0);
    assert!(!is_mounted(&s.mnt));
}

/// A daemon never unmounts a mount that is not its own: A's mount is detached while still in
/// use, B is mounted on the same directory, then A's last user goes and A exits: B stays.
#[test]
fn a_daemon_leaves_a_later_mount_on_its_mount_point_alone() {
    let mut s = Scratch::new("edges-later");
    let (oa, ob) = (s.path("a.img"), s.path("b.img"));
    write_random_image(&oa, 8 * MIB, 63);
    let data_b = write_random_image(&ob, 8 * MIB, 64);
    s.mount_daemon(&oa, &[], &[]);
    let a = s.daemon.take().unwrap();
    let busy = File::open(s.file("origin")).unwrap();
    run("umount", &["-l", s.mnt.to_str().unwrap()]);
    let out = snapfs_mount(&ob, &s.mnt, &[], &s.path("b.log"));
    assert!(
        out.status.success(),
        "{}",
        std::fs::read_to_string(s.path("b.log")).unwrap()
    );
    s.daemon = daemons_of(&s.mnt, &[a]).first().copied();
    drop(busy);
    assert_eq!(reap(a), 0, "A exits once its last user is gone");
    assert!(is_mounted(&s.mnt), "B is still mounted after A exited");
    assert_same("B's origin", &read_all(&s.file("origin")), &data_b);
    assert_eq!(s.unmount(), 0);
}

// ----- remount right after umount ---------------------------------------------------------------

/// 20 rounds of writes, `umount`, and an immediate `snapfs mount` of the same devices: every
/// mount succeeds, and the origin and the snapshot read exactly as the model says.
#[test]
fn remount_right_after_umount_20_rounds() {
    let s = Scratch::new("edges-remount");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = write_random_image(&origin, 32 * MIB, 71);
    sparse_file(&cow, 48 * MIB);
    let option = format!("snapshot=s:{}", cow.display());
    let log = s.path("mounts.log");
    let mut model = initial.clone();
    let mut daemons: Vec<i32> = Vec::new();
    let mut rng = Rng(72);
    let started = Instant::now();
    for round in 0..20 {
        let out = snapfs_mount(&origin, &s.mnt, &[&option], &log);
        assert!(
            out.status.success(),
            "round {round}: mount right after umount failed: {}",
            std::fs::read_to_string(&log).unwrap()
        );
        let new = daemons_of(&s.mnt, &daemons);
        assert_eq!(new.len(), 1, "round {round}: one new daemon");
        daemons.extend(new);
        let f = open_rw(&s.file("origin"));
        for _ in 0..24 {
            let len = if rng.below(4) == 0 {
                1 << 20
            } else {
                4096 * (1 + rng.below(16))
            };
            let offset = rng.below(32 * MIB - len) / 4096 * 4096;
            let data = rng.bytes(len);
            f.write_all_at(&data, offset).unwrap();
            model[offset as usize..(offset + len) as usize].copy_from_slice(&data);
        }
        drop(f);
        if round % 5 == 4 {
            assert_same("origin", &read_all(&s.file("origin")), &model);
            assert_same("snapshot s", &read_all(&s.file("s")), &initial);
        }
        run("umount", &[s.mnt.to_str().unwrap()]);
    }
    for pid in daemons {
        assert_eq!(reap(pid), 0, "{}", std::fs::read_to_string(&log).unwrap());
    }
    println!("20 rounds in {:.1} s", started.elapsed().as_secs_f64());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
}

/// The holder decides: a device of a live mount fails at once, naming that mount; a device of a
/// daemon whose mount is gone (stopped here, so that it cannot finish) is waited for, and the
/// mount goes ahead as soon as that daemon exits.
#[test]
fn a_device_of_a_gone_mount_is_waited_for_and_of_a_live_one_refused() {
    let mut a = Scratch::new("edges-holder-a");
    let b = Scratch::new("edges-holder-b");
    let origin = a.path("origin.img");
    let cow = a.path("s.cow");
    let initial = write_random_image(&origin, 8 * MIB, 81);
    sparse_file(&cow, 8 * MIB);
    let option = format!("snapshot=s:{}", cow.display());
    a.mount_daemon(&origin, &[&option], &[]);
    let mut model = initial.clone();
    write_at(&a.file("origin"), MIB, 65536, 82, &mut model);

    let started = Instant::now();
    let out = snapfs_mount(&origin, &b.mnt, &[&option], &b.path("b.log"));
    let stderr = std::fs::read_to_string(b.path("b.log")).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let live = format!("in use by the snapfs mount on {}", a.mnt.display());
    assert!(stderr.contains(&live), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(2), "at once");
    assert!(!is_mounted(&b.mnt));

    let pid = a.daemon.take().unwrap();
    kill(pid, libc::SIGSTOP);
    umount_syscall(&a.mnt);
    let started = Instant::now();
    let log = b.path("b2.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("mount")
        .arg(&origin)
        .arg(&b.mnt)
        .arg("-o")
        .arg(&option);
    cmd.stdin(Stdio::null()).stderr(File::create(&log).unwrap());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "B waits while A holds the devices"
    );
    kill(pid, libc::SIGCONT);
    let status = bounded("B's mount", move || child.wait().unwrap());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(started.elapsed() >= Duration::from_millis(1500));
    assert!(
        text.contains("serves no mount") && text.contains("waiting"),
        "{text}"
    );
    assert_eq!(reap(pid), 0, "A finished its teardown");
    let mut b = b;
    b.daemon = daemons_of(&b.mnt, &[]).first().copied();
    assert_same("origin", &read_all(&b.file("origin")), &model);
    assert_same("snapshot s", &read_all(&b.file("s")), &initial);
    assert_eq!(b.unmount(), 0);
}

// ----- signals ------------------------------------------------------------------------------------

/// Signals that used to kill the daemon silently (QUIT, USR1, USR2, ALRM, ...) or unmount the
/// volume (HUP) are logged and ignored; PIPE is ignored; HUP reopens the log file, so a log
/// rotation (rename, HUP) sends new lines to a new file. The data is checked after each.
#[test]
fn signals_keep_the_mount_and_hup_reopens_the_log() {
    let mut s = Scratch::new("edges-signals");
    let origin = s.path("origin.img");
    let cow = s.path("s.cow");
    let initial = write_random_image(&origin, 8 * MIB, 91);
    sparse_file(&cow, 8 * MIB);
    let log = s.path("daemon.log");
    let opts = format!("snapshot=s:{},log={}", cow.display(), log.display());
    s.mount_daemon(&origin, &[&opts], &[]);
    let pid = s.server_pid();
    let mut model = initial.clone();
    let signals = [
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGTSTP, "SIGTSTP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
    ];
    for (i, (sig, name)) in signals.iter().enumerate() {
        kill(pid, *sig);
        if *sig == libc::SIGPIPE {
            std::thread::sleep(Duration::from_millis(200));
        } else {
            let line = format!("{name} ignored");
            wait_for(10, &line, || {
                std::fs::read_to_string(&log).unwrap().contains(&line) || !running(pid)
            });
        }
        assert!(running(pid), "{name} killed the daemon");
        assert_ne!(process_state(pid), 'T', "{name} stopped the daemon");
        assert!(is_mounted(&s.mnt), "{name}: still mounted");
        let offset = i as u64 * 65536;
        write_at(&s.file("origin"), offset, 65536, 92 + i as u64, &mut model);
        assert_same(name, &read_all(&s.file("origin")), &model);
    }
    // Rotation: rename, HUP, and the next lines land in a new file at the same path.
    let rotated = s.path("daemon.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    kill(pid, libc::SIGHUP);
    wait_for(10, "the new log file", || log.exists());
    accepted(&s.mnt, "help");
    wait_for(10, "the control line in the new log", || {
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("control: help")
    });
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("SIGHUP: reopening the log file"), "{old}");
    assert!(!old.contains("control: help"), "{old}");
    assert!(running(pid) && is_mounted(&s.mnt));
    assert_same("snapshot s", &read_all(&s.file("s")), &initial);
    assert_same("origin", &read_all(&s.file("origin")), &model);
    assert_eq!(s.unmount(), 0);
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("unmounted; devices flushed")
    );
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);

    // Without log=, HUP is logged and ignored.
    s.mount_foreground(&origin, &[], &[]);
    kill(s.server_pid(), libc::SIGHUP);
    wait_for(10, "the HUP line", || s.log().contains("SIGHUP ignored"));
    assert!(is_mounted(&s.mnt));
    assert_same("origin", &read_all(&s.file("origin")), &model);
    assert_eq!(s.unmount(), 0);
}

// ----- messages ---------------------------------------------------------------------------------

/// A mount by a user without CAP_SYS_ADMIN says that snapfs mounts need root, before anything
/// is opened.
#[test]
fn a_mount_without_root_says_it_needs_root() {
    let s = Scratch::new("edges-nonroot");
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 101);
    let sum = checksum(&origin);
    let nobody = 65534;
    for p in [&s.dir, &s.mnt, &origin] {
        std::os::unix::fs::chown(p, Some(nobody), Some(nobody)).unwrap();
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(BIN)
        .arg("mount")
        .arg(&origin)
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("need root") && stderr.contains("CAP_SYS_ADMIN"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(!is_mounted(&s.mnt));
    assert_eq!(checksum(&origin), sum);
}

/// With debug logging, a flush storm (a journal committing through a loop device) gives a few
/// "flushed" lines, not one per flush.
#[test]
fn debug_logging_does_not_log_every_flush() {
    let mut s = Scratch::new("edges-flushlog");
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 111);
    s.mount_foreground(&origin, &[], &[("RUST_LOG", "snapfs=debug")]);
    let f = open_rw(&s.file("origin"));
    let started = Instant::now();
    for i in 0..300u64 {
        f.write_all_at(&[i as u8; 512], i * 512).unwrap();
        f.sync_data().unwrap();
    }
    let secs = started.elapsed().as_secs() + 1;
    drop(f);
    let log = s.log();
    let lines = log.lines().filter(|l| l.contains(": flushed")).count();
    assert!(log.contains("origin: flushed"), "{log}");
    assert!(
        lines as u64 <= secs + 2,
        "{lines} flushed lines for 300 flushes in {secs} s"
    );
    assert_eq!(s.unmount(), 0);
}
