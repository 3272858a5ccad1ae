//! End-to-end tests of the edges a user meets at the entry points: COWs that hold something
//! (a file system, a partition table, swap, data), snapshot names no format can carry,
//! transient snapshots that must not come back, who may send control commands, and the
//! messages of refused input. Each refused command must change nothing: the devices keep their
//! bytes and the mount keeps its snapshots.

mod e2e_support;

use e2e_support::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

const ORIGIN_BYTES: u64 = 32 * MIB;

/// Names of the snapshot files the mount shows (everything but origin, status, control).
fn snapshot_files(s: &Scratch) -> Vec<String> {
    snapshot_names(&s.mnt)
}

/// `snapfs mount` with `options`, which must fail without mounting; returns its stderr.
fn refused_mount(s: &Scratch, origin: &Path, options: &[&str]) -> String {
    let out = s
        .command(origin, options, false)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{options:?}: the mount must fail");
    assert!(!is_mounted(&s.mnt), "{options:?}: nothing is mounted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A file of `len` bytes that starts with `bytes` at `at` and is zero elsewhere.
fn file_with(path: &Path, len: u64, at: u64, bytes: &[u8]) {
    sparse_file(path, len);
    open_rw(path).write_all_at(bytes, at).unwrap();
}

/// Each kind of precious content, made as its own tools make it where they are here.
fn precious_cows(s: &Scratch) -> Vec<(&'static str, std::path::PathBuf)> {
    let ext4 = s.path("ext4.img");
    sparse_file(&ext4, 16 * MIB);
    run("mkfs.ext4", &["-q", "-F", ext4.to_str().unwrap()]);
    let swap = s.path("swap.img");
    sparse_file(&swap, 16 * MIB);
    run("mkswap", &[swap.to_str().unwrap()]);
    let mbr = s.path("mbr.img");
    file_with(&mbr, 16 * MIB, 510, &[0x55, 0xaa]);
    let lvm = s.path("lvm.img");
    file_with(
        &lvm,
        16 * MIB,
        512,
        b"LABELONE\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0LVM2 001",
    );
    let btrfs = s.path("btrfs.img");
    file_with(&btrfs, 16 * MIB, 65536 + 64, b"_BHRfS_M");
    let data = s.path("data.img");
    file_with(&data, 16 * MIB, 100_000, b"precious");
    vec![
        ("ext4", ext4),
        ("swap", swap),
        ("mbr", mbr),
        ("lvm", lvm),
        ("btrfs", btrfs),
        ("data", data),
    ]
}

/// A COW that holds a file system, a partition table, an LVM label, swap or data is refused
/// at every entry point (control, the CLI, -o snapshot=), with a reason naming what it holds,
/// and is left byte for byte as it was; `force` formats it.
#[test]
fn precious_cows_are_refused_unless_forced() {
    let mut s = Scratch::new("precious");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 1);
    let cows = precious_cows(&s);
    let sums: Vec<u64> = cows.iter().map(|(_, p)| checksum(p)).collect();

    // -o snapshot= at mount: refused before anything is written.
    for (what, cow) in &cows {
        let err = refused_mount(&s, &origin, &[&format!("snapshot=x:{}:P:8", cow.display())]);
        assert!(err.contains("refusing to use it as a COW"), "{what}: {err}");
        assert!(!is_mounted(&s.mnt));
    }

    s.mount_daemon(&origin, &[], &[]);
    for (what, cow) in &cows {
        // control, P and N.
        for store in ["P", "N"] {
            let (result, answer) = control(&s, &format!("snapshot x {} {store} 8", cow.display()));
            assert!(result.is_err(), "{what} {store}: control must refuse");
            assert!(
                answer.contains("refusing to use it as a COW"),
                "{what}: {answer}"
            );
        }
        // The CLI says the same.
        let out = snapfs(&[
            "snapshot",
            s.mnt.to_str().unwrap(),
            "x",
            "--cow",
            cow.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{what}: CLI must refuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("refusing to use it as a COW"), "{what}: {err}");
        assert!(
            err.matches("snapshot x:").count() <= 1,
            "the reason is not repeated: {err}"
        );
    }
    let named: Vec<String> = cows
        .iter()
        .map(|(w, p)| {
            let (_, answer) = control(&s, &format!("snapshot x {} P 8", p.display()));
            format!("{w}: {answer}")
        })
        .collect();
    for (line, hint) in named.iter().zip([
        "ext2/3/4",
        "swap",
        "MBR",
        "LVM",
        "btrfs",
        "non-zero byte at offset 100000",
    ]) {
        assert!(line.contains(hint), "the reason names the content: {line}");
    }
    assert!(snapshot_files(&s).is_empty(), "no snapshot was added");
    for ((what, cow), sum) in cows.iter().zip(&sums) {
        assert_eq!(checksum(cow), *sum, "{what} is unchanged");
    }
    assert_same(
        "origin",
        &std::fs::read(s.file("origin")).unwrap(),
        &initial,
    );

    // force formats it, as mkfs -f would.
    let ext4 = &cows[0].1;
    let out = snapfs(&[
        "snapshot",
        s.mnt.to_str().unwrap(),
        "forced",
        "--cow",
        ext4.to_str().unwrap(),
        "--chunk",
        "8",
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (result, _) = control(
        &s,
        &format!("snapshot forced2 {} P 8 force", cows[5].1.display()),
    );
    result.unwrap();
    assert_eq!(snapshot_files(&s), ["forced", "forced2"]);
    let mut head = [0u8; 4];
    std::fs::File::open(ext4)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(&head, b"SnAp", "the forced COW is a snapshot store now");
    // The forced snapshot works: it keeps the origin's old data.
    open_rw(&s.file("origin"))
        .write_all_at(&[7u8; 4096], 0)
        .unwrap();
    let snap = std::fs::read(s.file("forced")).unwrap();
    assert_same("forced snapshot", &snap, &initial);
    assert_eq!(s.unmount(), 0);
}

/// A blank COW and a snapshot store are accepted as before, so are a transient snapshot's
/// leftovers once its snapshot ended cleanly (snapfs blanks them), but not after a crash.
#[test]
fn transient_cows_are_blanked_when_their_snapshot_ends() {
    let mut s = Scratch::new("transient-blank");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 2);
    let cow = s.path("t.cow");
    sparse_file(&cow, 16 * MIB);
    let spec = format!("snapshot=t:{}:N:8", cow.display());
    for round in 0..3u8 {
        s.mount_daemon(&origin, &[&spec], &[]);
        // Chunk 0 of the origin is copied to chunk 0 of the COW: the COW's head is not blank.
        open_rw(&s.file("origin"))
            .write_all_at(&[round + 1; 8192], 0)
            .unwrap();
        let snap = std::fs::read(s.file("t")).unwrap();
        let mut want = std::fs::read(&origin).unwrap();
        want[..8192].copy_from_slice(&initial[..8192]);
        if round > 0 {
            want[..8192].fill(round);
        }
        assert_same(&format!("round {round}: snapshot"), &snap, &want);
        assert_eq!(s.unmount(), 0);
        let head = &std::fs::read(&cow).unwrap()[..128 << 10];
        assert!(
            head.iter().all(|&b| b == 0),
            "round {round}: blanked at unmount"
        );
    }
    // A drop blanks it too.
    s.mount_daemon(&origin, &[], &[]);
    control(&s, &format!("snapshot t {} N 8", cow.display()))
        .0
        .unwrap();
    open_rw(&s.file("origin"))
        .write_all_at(&[9u8; 4096], 0)
        .unwrap();
    control(&s, "drop t").0.unwrap();
    let head = &std::fs::read(&cow).unwrap()[..128 << 10];
    assert!(head.iter().all(|&b| b == 0), "blanked at drop");
    // Leftovers of a transient snapshot that did not end cleanly are refused.
    control(&s, &format!("snapshot t {} N 8", cow.display()))
        .0
        .unwrap();
    open_rw(&s.file("origin"))
        .write_all_at(&[10u8; 4096], 0)
        .unwrap();
    let pid = s.daemon.take().unwrap();
    // SAFETY: killing and reaping the daemon this test started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    let _ = Command::new("umount").arg("-l").arg(&s.mnt).output();
    // Leftovers after a crash are refused.
    let err = refused_mount(&s, &origin, &[&spec]);
    assert!(err.contains("force"), "{err}");
    s.mount_daemon(&origin, &[&format!("{spec}:force")], &[]);
    assert_eq!(snapshot_files(&s), ["t"]);
    assert_eq!(s.unmount(), 0);
}

/// Names that some format cannot carry (`#x` reads back as a comment in the registry, `a,b`
/// splits a mount option, `a:b` a spec) are refused at every entry point and change nothing.
#[test]
fn names_every_format_cannot_carry_are_refused_everywhere() {
    let mut s = Scratch::new("names");
    let origin = s.path("origin.img");
    write_random_image(&origin, ORIGIN_BYTES, 3);
    let cow = s.path("c.cow");
    sparse_file(&cow, 16 * MIB);
    let registry = s.path("vol.reg");
    s.mount_daemon(&origin, &[&format!("registry={}", registry.display())], &[]);
    for bad in [
        "#x",
        "a,b",
        "a=b",
        "x\u{1b}[2J",
        "caf\u{e9}",
        "-x",
        "$(id)",
        "a'b",
    ] {
        let (result, answer) = control(&s, &format!("snapshot {bad} {} P 8", cow.display()));
        assert!(result.is_err(), "{bad:?}: control must refuse");
        assert!(
            answer.starts_with("error: snapshot name"),
            "{bad:?}: {answer}"
        );
        let out = snapfs(&[
            "snapshot",
            s.mnt.to_str().unwrap(),
            bad,
            "--cow",
            cow.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{bad:?}: CLI must refuse");
    }
    assert!(snapshot_files(&s).is_empty());
    assert!(
        std::fs::read(&cow).unwrap().iter().all(|&b| b == 0),
        "the COW was never formatted"
    );
    // The LVM set is carried everywhere, through the registry into the next mount.
    let good = "db_v1.2+hot-x";
    control(&s, &format!("snapshot {good} {} P 8", cow.display()))
        .0
        .unwrap();
    let table = snapfs_ok(&["status", s.mnt.to_str().unwrap()]);
    assert!(table.contains(good), "{table}");
    assert_eq!(s.unmount(), 0);
    s.mount_daemon(&origin, &[&format!("registry={}", registry.display())], &[]);
    assert_eq!(snapshot_files(&s), [good]);
    assert_eq!(s.unmount(), 0);
    // A bad name in a mount option.
    let err = refused_mount(
        &s,
        &origin,
        &[&format!("snapshot=#x:{}:P:8", cow.display())],
    );
    assert!(err.contains("snapshot name"), "{err}");
}

/// A transient snapshot ends with its mount: the registry does not record it, and the next
/// mount does not bring its name back (a registry an older snapfs wrote with one is read
/// without it, saying so in the log).
#[test]
fn transient_snapshots_do_not_outlive_their_mount() {
    let mut s = Scratch::new("transient-gone");
    let origin = s.path("origin.img");
    write_random_image(&origin, ORIGIN_BYTES, 4);
    let (cow_n, cow_p) = (s.path("n.cow"), s.path("p.cow"));
    sparse_file(&cow_n, 16 * MIB);
    sparse_file(&cow_p, 16 * MIB);
    let registry = s.path("vol.reg");
    let reg_opt = format!(
        "registry={},log={}",
        registry.display(),
        s.path("d.log").display()
    );
    s.mount_daemon(&origin, &[&reg_opt], &[]);
    let (_, answer) = control(&s, &format!("snapshot t {} N 8", cow_n.display()));
    assert!(
        answer.contains("transient"),
        "the answer says it ends with the mount: {answer}"
    );
    control(&s, &format!("snapshot p {} P 8", cow_p.display()))
        .0
        .unwrap();
    let text = std::fs::read_to_string(&registry).unwrap();
    assert!(text.contains("\np "), "{text}");
    assert!(
        !text.contains("\nt "),
        "a transient snapshot is not recorded: {text}"
    );
    assert_eq!(s.unmount(), 0);
    s.mount_daemon(&origin, &[&reg_opt], &[]);
    assert_eq!(snapshot_files(&s), ["p"]);
    assert_eq!(s.unmount(), 0);
    // What an older snapfs wrote.
    std::fs::write(&registry, format!("t {} N 8\n", cow_n.display())).unwrap();
    s.mount_daemon(&origin, &[&reg_opt], &[]);
    assert!(
        snapshot_files(&s).is_empty(),
        "the recorded transient snapshot stays gone"
    );
    // Said at mount, before the daemon's log file takes over: on the mount command's stderr.
    let said = s.log();
    assert!(
        said.contains("snapshot t is transient (N) and ended with the mount"),
        "{said}"
    );
    assert_eq!(s.unmount(), 0);
    let text = std::fs::read_to_string(&registry).unwrap();
    assert!(!text.contains("\nt "), "and leaves the registry: {text}");
}

/// The files may belong to another user (`uid=`, `allow_other`), the commands do not: only
/// root may send them, since the daemon opens what they name with root's rights. A user's
/// `snapshot` naming a root-only file fails with EPERM and leaves the file as it was.
#[test]
fn only_root_sends_control_commands() {
    let mut s = Scratch::new("rights");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 5);
    std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret_dir = s.path("root-only");
    std::fs::create_dir(&secret_dir).unwrap();
    std::fs::set_permissions(&secret_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let secret = secret_dir.join("file");
    sparse_file(&secret, 16 * MIB);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    s.mount_daemon(&origin, &["uid=65534,gid=65534,allow_other"], &[]);
    let as_nobody = |script: &str| {
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sh",
                "-c",
                script,
            ])
            .output()
            .unwrap()
    };
    let control_path = s.file("control");
    for command in [
        format!("snapshot t {} N 8", secret.display()),
        format!("snapshot t {} P 8 force", secret.display()),
        "merge".to_string(),
        "drop x".to_string(),
    ] {
        let out = as_nobody(&format!(
            // dd reports the errno (dash's printf says "I/O error" for every failure).
            "printf '%s' '{command}' | dd of={} status=none",
            control_path.display()
        ));
        assert!(!out.status.success(), "{command}: refused for a user");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not permitted"), "{command}: EPERM: {err}");
    }
    let answer = std::fs::read_to_string(&control_path).unwrap();
    assert!(answer.contains("only root"), "{answer}");
    assert!(snapshot_files(&s).is_empty());
    assert!(std::fs::read(&secret).unwrap().iter().all(|&b| b == 0));
    // help is anyone's; the user may still write the origin they were given.
    let out = as_nobody(&format!("echo help > {}", control_path.display()));
    assert!(out.status.success(), "{out:?}");
    let out = as_nobody(&format!(
        "printf 'x' | dd of={} conv=notrunc status=none",
        s.file("origin").display()
    ));
    assert!(out.status.success(), "{out:?}");
    let mut want = initial;
    want[0] = b'x';
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &want);
    // Root still can.
    control(&s, &format!("snapshot t {} N 8 force", secret.display()))
        .0
        .unwrap();
    assert_eq!(s.unmount(), 0);
}

/// The messages of refused input say what is wrong.
#[test]
fn refusals_say_what_is_wrong() {
    let mut s = Scratch::new("messages");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 6);
    let cow = s.path("c.cow");
    sparse_file(&cow, 48 * MIB);
    // A bad chunk word is a bad chunk size, not a missing file named "c.cow:P:-8".
    for bad in ["-8", "8x"] {
        let err = refused_mount(
            &s,
            &origin,
            &[&format!("snapshot=c:{}:P:{bad}", cow.display())],
        );
        assert!(
            err.contains("Invalid chunk size") && !err.contains("No such file"),
            "{err}"
        );
    }
    // Options that name one thing, given twice with different values.
    for twice in [
        "registry=/a.reg,registry=/b.reg",
        "uid=1,uid=2",
        "log=/a,log=/b",
    ] {
        let err = refused_mount(&s, &origin, &[twice]);
        assert!(err.contains("given twice"), "{twice}: {err}");
    }
    s.mount_daemon(
        &origin,
        &[&format!("log={}", s.path("d.log").display())],
        &[],
    );
    // Merging a missing snapshot is not "busy", even with the origin open.
    let held = open_rw(&s.file("origin"));
    let out = snapfs(&["merge", s.mnt.to_str().unwrap(), "ghost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no snapshot named ghost") && !err.contains("busy"),
        "{err}"
    );
    // Nor is merging an invalid one: a COW of three 4 KiB chunks holds one copy.
    let tiny = s.path("tiny.cow");
    sparse_file(&tiny, 12 << 10);
    control(&s, &format!("snapshot tiny {} P 8", tiny.display()))
        .0
        .unwrap();
    held.write_all_at(&[1u8; 4096], 0).unwrap();
    held.write_all_at(&[2u8; 4096], 1 << 20).unwrap();
    let tiny_line = status(&s).into_iter().find(|l| l.0 == "tiny").unwrap();
    assert_eq!(tiny_line.4, ["Invalid"]);
    let out = snapfs(&["merge", s.mnt.to_str().unwrap(), "tiny"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("invalid") && !err.contains("busy"), "{err}");
    drop(held);
    control(&s, "drop tiny").0.unwrap();
    let mut before_cp = initial.clone();
    before_cp[..4096].fill(1);
    before_cp[1 << 20..(1 << 20) + 4096].fill(2);
    // A duplicate name says so once.
    control(&s, &format!("snapshot dup {} P 8", cow.display()))
        .0
        .unwrap();
    let cow2 = s.path("c2.cow");
    sparse_file(&cow2, 16 * MIB);
    let out = snapfs(&[
        "snapshot",
        s.mnt.to_str().unwrap(),
        "dup",
        "--cow",
        cow2.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("snapshot dup").count(), 1, "{err}");
    // Binary junk written to control reaches the log escaped.
    let mut f = OpenOptions::new()
        .write(true)
        .open(s.file("control"))
        .unwrap();
    assert!(f.write_all(b"\x1b[31mjunk\xff\x00\x07").is_err());
    drop(f);
    let log = std::fs::read(s.path("d.log")).unwrap();
    assert!(!log.contains(&0x1b) && !log.contains(&0x07) && !log.contains(&0xff));
    // cp (O_TRUNC) onto the fixed-size origin works, as on a block device.
    let image = s.path("new.img");
    let new = write_random_image(&image, ORIGIN_BYTES, 7);
    run(
        "cp",
        &[image.to_str().unwrap(), s.file("origin").to_str().unwrap()],
    );
    assert_eq!(
        std::fs::metadata(s.file("origin")).unwrap().len(),
        ORIGIN_BYTES
    );
    assert_same(
        "origin after cp",
        &std::fs::read(s.file("origin")).unwrap(),
        &new,
    );
    assert_same(
        "snapshot after cp",
        &std::fs::read(s.file("dup")).unwrap(),
        &before_cp,
    );
    assert_eq!(s.unmount(), 0);
    // mount.snapfs --help answers.
    let out = Command::new(mount_helper()).arg("--help").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("usage: mount.snapfs"));
}
