//! Who may do what: other users without allow_other, the owner-only control file; read-only
//! sessions that write nothing; mismatched logical block sizes on loop devices.

use super::*;

// ----- access ---------------------------------------------------------------------------------

/// Runs a command as another user, without supplementary groups.
fn as_user(uid: u32, args: &[&str]) -> Output {
    let (u, g) = (format!("--reuid={uid}"), format!("--regid={uid}"));
    Command::new("setpriv")
        .args([u.as_str(), g.as_str(), "--clear-groups", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("setpriv (util-linux)")
}

fn assert_denied(uid: u32, args: &[&str]) {
    let out = as_user(uid, args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "uid {uid} {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("Permission denied"),
        "uid {uid} {args:?}: {stderr}"
    );
}

fn assert_allowed(uid: u32, args: &[&str]) -> String {
    let out = as_user(uid, args);
    assert!(
        out.status.success(),
        "uid {uid} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Shell command lines another user tries on a mount; each must be refused.
fn attempts(s: &Scratch) -> Vec<Vec<String>> {
    let f = |n: &str| s.file(n).display().to_string();
    let mnt = s.mnt.display().to_string();
    let sh = |cmd: String| vec!["sh".to_string(), "-c".to_string(), cmd];
    vec![
        vec!["stat".into(), mnt.clone()],
        vec!["ls".into(), mnt.clone()],
        vec!["stat".into(), f("status")],
        vec!["cat".into(), f("status")],
        vec!["cat".into(), f("control")],
        vec!["head".into(), "-c".into(), "512".into(), f("origin")],
        vec!["head".into(), "-c".into(), "512".into(), f("s")],
        sh(format!("echo help > {}", f("control"))),
        sh(format!("echo 'drop s' > {}", f("control"))),
        vec![
            "dd".into(),
            "if=/dev/zero".into(),
            format!("of={}", f("origin")),
            "bs=512".into(),
            "count=1".into(),
            "conv=notrunc".into(),
        ],
        vec![
            "dd".into(),
            "if=/dev/zero".into(),
            format!("of={}", f("s")),
            "bs=512".into(),
            "count=1".into(),
            "conv=notrunc".into(),
        ],
        vec!["touch".into(), f("newfile")],
    ]
}

fn access_rig(s: &mut Scratch, options: &str) -> Vec<PathBuf> {
    std::fs::set_permissions(&s.dir, PermissionsExt::from_mode(0o755)).unwrap();
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 6);
    let cow = s.path("s.cow");
    sparse_file(&cow, 4 * MIB);
    let spec = format!("snapshot=s:{}:P:8", cow.display());
    let opts: Vec<&str> = [spec.as_str(), options]
        .into_iter()
        .filter(|o| !o.is_empty())
        .collect();
    s.mount_daemon(&origin, &opts, &[]);
    vec![origin, cow]
}

/// Without allow_other, another user gets EACCES on everything, the directory included; with
/// allow_root, too. Nothing it tries reaches the daemon: `control` still has no command.
#[test]
fn other_users_get_eacces_without_allow_other() {
    let mut cases = 0;
    for options in ["", "allow_root"] {
        let mut s = Scratch::new(if options.is_empty() {
            "h-access"
        } else {
            "h-access-root"
        });
        let files = access_rig(&mut s, options);
        let before = state(&s, &files);
        for args in attempts(&s) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_denied(NOBODY, &args);
            cases += 1;
        }
        assert_same_state(&before, &state(&s, &files), options);
        let answer = std::fs::read_to_string(s.file("control")).unwrap();
        assert_eq!(
            answer, "ok no command yet\n",
            "no command from another user arrived"
        );
        assert_eq!(s.unmount(), 0, "{}", s.log());
    }
    report("other users without allow_other", cases);
}

/// With allow_other, files owned by uid 1234: anyone may read `status`; only the owner may
/// read or write `control` and the data files.
#[test]
fn control_is_writable_only_by_the_owner() {
    let mut s = Scratch::new("h-owner");
    let files = access_rig(&mut s, "allow_other,uid=1234,gid=1234");
    let before = state(&s, &files);
    let text = assert_allowed(NOBODY, &["cat", &s.file("status").display().to_string()]);
    assert!(text.starts_with("origin: 0 8192 snapshot-origin"), "{text}");
    let attempts = attempts(&s);
    // Skip the directory and status (readable by all); the rest is refused.
    let refused: Vec<&Vec<String>> = attempts
        .iter()
        .filter(|a| {
            !a.iter()
                .any(|w| w.ends_with("/mnt") || w.ends_with("status"))
        })
        .collect();
    for args in &refused {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_denied(NOBODY, &args);
    }
    assert_same_state(&before, &state(&s, &files), "after nobody");
    assert_eq!(
        std::fs::read_to_string(s.file("control")).unwrap(),
        "ok no command yet\n"
    );
    // The owner may use control and read the data.
    let control = s.file("control").display().to_string();
    assert_allowed(1234, &["sh", "-c", &format!("echo help > {control}")]);
    assert!(assert_allowed(1234, &["cat", &control]).starts_with("ok commands:"));
    let head = assert_allowed(
        1234,
        &[
            "sh",
            "-c",
            &format!(
                "head -c 4096 {} | od -An -tx1 | head -1",
                s.file("origin").display()
            ),
        ],
    );
    assert!(!head.trim().is_empty());
    assert_eq!(sums(&files), before.sums, "reads changed nothing");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("control owner", refused.len() + 4);
}

// ----- read-only sessions ---------------------------------------------------------------------

/// Things a program may try on a read-only mount; each must fail with the given errno.
fn read_only_attempts(s: &Scratch) -> Vec<(&'static str, i32, std::io::Result<()>)> {
    let f = |n: &str| s.file(n);
    let write_open = |n: &str| OpenOptions::new().write(true).open(f(n)).map(|_| ());
    let rw_open = |n: &str| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(f(n))
            .map(|_| ())
    };
    let chmod = |n: &str| std::fs::set_permissions(f(n), PermissionsExt::from_mode(0o600));
    let fd = File::open(f("origin")).unwrap();
    vec![
        ("open origin for writing", libc::EROFS, write_open("origin")),
        ("open s read-write", libc::EROFS, rw_open("s")),
        ("open status for writing", libc::EROFS, write_open("status")),
        ("open control", libc::ENOENT, write_open("control")),
        (
            "create a file",
            libc::EROFS,
            File::create(f("new")).map(|_| ()),
        ),
        ("mkdir", libc::EROFS, std::fs::create_dir(f("d"))),
        (
            "truncate origin",
            libc::EROFS,
            File::options()
                .write(true)
                .truncate(true)
                .open(f("origin"))
                .map(|_| ()),
        ),
        ("chmod s", libc::EROFS, chmod("s")),
        (
            "unlink status",
            libc::EROFS,
            std::fs::remove_file(f("status")),
        ),
        ("rename s", libc::EROFS, std::fs::rename(f("s"), f("t"))),
        (
            "symlink",
            libc::EROFS,
            std::os::unix::fs::symlink("/", f("l")),
        ),
        (
            "write a read-only handle",
            libc::EBADF,
            fd.write_at(b"x", 0).map(|_| ()),
        ),
        (
            "fallocate a read-only handle",
            libc::EBADF,
            fallocate(
                &fd,
                libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_ZERO_RANGE,
                0,
                4096,
            )
            .map_err(std::io::Error::from_raw_os_error),
        ),
    ]
}

/// A read-only session of reads, status reads and attempted writes never writes a byte to the
/// origin or the COW.
#[test]
fn a_read_only_session_writes_nothing() {
    let mut s = Scratch::new("h-ro");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, 8 * MIB, 7);
    let cow = s.path("s.cow");
    sparse_file(&cow, 8 * MIB);
    let spec = format!("snapshot=s:{}:P:8", cow.display());
    s.mount_daemon(&origin, &[&spec], &[]);
    let data = Rng(8).bytes(512 * 1024);
    open_rw(&s.file("origin")).write_all_at(&data, MIB).unwrap();
    assert_eq!(s.unmount(), 0);
    let files = [origin.clone(), cow.clone()];
    let before = sums(&files);

    s.mount_daemon(&origin, &[&format!("ro,{spec}")], &[]);
    let status_before = read_status(&s);
    for _ in 0..3 {
        assert_same("s", &std::fs::read(s.file("s")).unwrap(), &initial);
        let o = std::fs::read(s.file("origin")).unwrap();
        assert_eq!(&o[MIB as usize..MIB as usize + data.len()], &data[..]);
        assert_eq!(read_status(&s), status_before);
    }
    let attempts = read_only_attempts(&s);
    for (what, errno, result) in attempts.iter() {
        assert_eq!(
            result.as_ref().err().and_then(|e| e.raw_os_error()),
            Some(*errno),
            "{what}"
        );
    }
    File::open(s.file("s")).unwrap().sync_all().unwrap();
    assert_eq!(read_status(&s), status_before);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_eq!(sums(&files), before, "a read-only session wrote a device");
    report("read-only session", attempts.len() + 3);
}

/// A COW marked as merging, mounted read-only: the origin reads as the merged view, and no
/// device is written. (The daemon does try to resume the merge and fails with EBADF; see
/// the failing library test `a_read_only_volume_does_not_resume_a_merge` in tests/hostile.rs.)
#[test]
fn a_read_only_mount_of_a_merging_cow_writes_nothing() {
    let mut s = Scratch::new("h-ro-merge");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, 4 * MIB, 9);
    let cow = s.path("m.cow");
    let list = in_order(L8, 3, |k| 5 + k);
    let mut img = store_image(L8, 64, &list);
    img[16..28].copy_from_slice(&MARKER);
    for &(_, new) in &list {
        img[(new * 4096) as usize..((new + 1) * 4096) as usize].fill(0x6d);
    }
    std::fs::write(&cow, &img).unwrap();
    let files = [origin.clone(), cow.clone()];
    let before = sums(&files);
    s.mount_daemon(&origin, &[&format!("ro,snapshot=m:{}", cow.display())], &[]);
    let mut merged = initial.clone();
    merged[5 * 4096..8 * 4096].fill(0x6d);
    assert_same(
        "merged view",
        &std::fs::read(s.file("origin")).unwrap(),
        &merged,
    );
    let status = read_status(&s);
    assert!(status.contains("m: 0 8192 snapshot-merge"), "{status}");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_eq!(sums(&files), before, "a read-only mount wrote a device");
    report("read-only merging COW", 1);
}

// ----- logical block sizes on loop devices ----------------------------------------------------

/// Loop devices of 4096-byte logical blocks, detached on drop (declare after the `Scratch`).
#[derive(Default)]
struct Loops(Vec<String>);

impl Loops {
    /// `losetup --sector-size 4096` on `file`.
    fn attach_4k(&mut self, file: &Path) -> String {
        let args = [
            "-f",
            "--show",
            "--sector-size",
            "4096",
            file.to_str().unwrap(),
        ];
        let dev = run("losetup", &args).trim().to_string();
        self.0.push(dev.clone());
        dev
    }
}

impl Drop for Loops {
    fn drop(&mut self) {
        for dev in self.0.drain(..) {
            let _ = Command::new("losetup").args(["-d", &dev]).output();
        }
    }
}

/// Origins and COWs whose logical block size (4096) does not divide the chunk size are
/// refused, with nothing written; a chunk size that fits mounts.
#[test]
fn mismatched_logical_block_sizes_on_loop_devices() {
    let mut s = Scratch::new("h-blocks");
    let mut loops = Loops::default();
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 10);
    let (fresh, small_chunks, fresh2) =
        (s.path("fresh.cow"), s.path("cs2.cow"), s.path("fresh2.cow"));
    sparse_file(&fresh, 4 * MIB);
    sparse_file(&fresh2, 4 * MIB);
    let mut img = vec![0u8; 4 * MIB as usize];
    put_header(&mut img, SNAP, 1, 1, 2);
    std::fs::write(&small_chunks, &img).unwrap();
    let files = [
        origin.clone(),
        fresh.clone(),
        small_chunks.clone(),
        fresh2.clone(),
    ];
    let before = sums(&files);
    let fresh_loop = loops.attach_4k(&fresh);
    let small_loop = loops.attach_4k(&small_chunks);
    let origin_loop = loops.attach_4k(&origin);
    let not_multiple = "not a multiple of device blocksize";
    let on_disk = "invalid on-disk chunk size";
    let cases: Vec<(&Path, String, &str)> = vec![
        (
            &origin,
            format!("snapshot=s:{fresh_loop}:P:4"),
            not_multiple,
        ),
        (
            &origin,
            format!("snapshot=s:{fresh_loop}:N:1"),
            not_multiple,
        ),
        (&origin, format!("snapshot=s:{small_loop}"), on_disk),
        (
            Path::new(&origin_loop),
            format!("snapshot=s:{}:P:4", fresh2.display()),
            not_multiple,
        ),
        (
            Path::new(&origin_loop),
            format!("snapshot=s:{}", small_chunks.display()),
            on_disk,
        ),
    ];
    for (o, option, needle) in &cases {
        expect_mount_refused(&s, o, &[option], 1, needle);
    }
    assert_eq!(sums(&files), before, "refusals wrote nothing");
    // 4 KiB chunks fit 4 KiB blocks.
    s.mount_daemon(
        Path::new(&origin_loop),
        &[&format!("snapshot=s:{fresh_loop}:P:8")],
        &[],
    );
    let lines = status(&s);
    assert_eq!(
        lines[1].4,
        vec!["16/8192".to_string(), "16".to_string()],
        "{lines:?}"
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
    drop(loops);
    let header = std::fs::read(&fresh).unwrap();
    assert_eq!(
        &header[..16],
        &[0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0]
    );
    report("logical block sizes on loop devices", cases.len() + 1);
}
