//! The tools around the mount, run as people run them (needs root, /dev/fuse, util-linux,
//! e2fsprogs): the mount.snapfs helper by mount(8)'s argv contract and through `mount -t
//! snapfs` and an fstab (`mount -a -T`), `snapfs snapshot` on a busy origin checked against a
//! model, the registry across remounts, `snapfs status`/`inspect` output parsed, `drop`,
//! `merge --wait`, and `snapfs demo`.

mod e2e_support;

use e2e_support::*;
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// The `/proc/self/mounts` line of `mnt`: (source, type).
fn mount_entry(mnt: &Path) -> (String, String) {
    let table = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let line = table
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(mnt.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not in /proc/self/mounts", mnt.display()));
    let fields: Vec<&str> = line.split(' ').collect();
    (fields[0].to_string(), fields[2].to_string())
}

// ----- the mount helper --------------------------------------------------------------------------

/// `scripts/install.sh` into a temporary root, then `mount.snapfs` called the way mount(8)
/// calls it: it finds snapfs on PATH, ignores mount's generic options, returns only once the
/// mount is live, refuses bad options in one line, and exits with mount(8)'s codes.
#[test]
fn mount_helper_follows_the_mount_contract() {
    let mut s = Scratch::new("helper");
    let (origin, cow) = (s.path("origin.img"), s.path("s.cow"));
    let initial = write_random_image(&origin, 8 * MIB, 31);
    sparse_file(&cow, 8 * MIB);
    let root = s.path("root");
    let bin_dir = mount_helper().parent().unwrap().to_path_buf();
    let install = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/install.sh"))
        .arg("--no-build")
        .env("DESTDIR", &root)
        .env("TARGET_DIR", &bin_dir)
        .output()
        .unwrap();
    assert!(install.status.success(), "install.sh: {install:?}");
    let helper = root.join("sbin/mount.snapfs");
    assert!(root.join("usr/local/bin/snapfs").is_file());
    assert_eq!(
        std::fs::read_link(root.join("sbin/mount.fuse.snapfs")).unwrap(),
        Path::new("mount.snapfs")
    );
    let path = format!(
        "{}:{}",
        root.join("usr/local/bin").display(),
        std::env::var("PATH").unwrap()
    );
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(&helper)
            .args(args)
            .env("PATH", &path)
            .env_remove("SNAPFS_BIN")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let (o, m) = (origin.to_str().unwrap(), s.mnt.to_str().unwrap());
    let generic = format!(
        "rw,defaults,nofail,_netdev,auto,dev,suid,exec,noatime,snapshot=s:{}:P:8",
        cow.display()
    );
    let log = format!("log={}", s.path("daemon.log").display());

    // Refusals: one clear line, nothing mounted, mount(8)'s codes.
    let refused = |args: &[&str], env: &[(&str, &str)], code: i32, needle: &str| {
        let out = run(args, env);
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "{args:?}: one line: {lines:?}");
        assert!(lines[0].contains(needle), "{args:?}: {lines:?}");
        assert!(!is_mounted(&s.mnt));
    };
    refused(
        &[o, m, "-o", "rw,frobnicate"],
        &[],
        1,
        "unknown mount option \"frobnicate\"",
    );
    refused(
        &[o, m, "-o", "snapshot=broken"],
        &[],
        1,
        "invalid snapshot spec",
    );
    refused(&[o], &[], 1, "usage: mount.snapfs");
    refused(&[o, m, "-x"], &[], 1, "unknown flag -x");
    refused(&["/nonexistent.img", m], &[], 32, "nonexistent.img");
    let missing = [("SNAPFS_BIN", "/nonexistent/snapfs")];
    refused(&[o, m], &missing, 2, "cannot run");
    // -f (fake): checks, mounts nothing.
    let out = run(&[o, m, "-sfnv", "-o", &generic], &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(!is_mounted(&s.mnt));

    // The real thing: live when the helper returns.
    let out = run(
        &[o, m, "-n", "-o", &generic, "-o", &log, "-t", "snapfs"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        is_mounted(&s.mnt),
        "the mount is live when the helper returns"
    );
    s.adopt_daemon();
    assert_eq!(
        mount_entry(&s.mnt),
        (o.to_string(), "fuse.snapfs".to_string())
    );
    let data = Rng(32).bytes(100_000);
    open_rw(&s.file("origin"))
        .write_all_at(&data, 4096)
        .unwrap();
    assert_same("snapshot", &std::fs::read(s.file("s")).unwrap(), &initial);
    assert_eq!(s.unmount(), 0);
    let daemon_log = std::fs::read_to_string(s.path("daemon.log")).unwrap();
    assert!(
        daemon_log.contains("unmounted; devices flushed"),
        "log=: {daemon_log}"
    );
}

/// Serialises the tests that put a helper into the real /sbin.
static SBIN: Mutex<()> = Mutex::new(());

/// `/sbin/mount.snapfs` for the length of a test: the built helper, installed and removed
/// again on drop (an existing one is set aside and put back).
struct SbinHelper {
    path: PathBuf,
    saved: Option<PathBuf>,
}

impl SbinHelper {
    fn install() -> SbinHelper {
        let path = PathBuf::from("/sbin/mount.snapfs");
        let saved = path.symlink_metadata().is_ok().then(|| {
            let aside = PathBuf::from(format!("/sbin/.mount.snapfs.e2e-{}", std::process::id()));
            std::fs::rename(&path, &aside).unwrap();
            aside
        });
        std::fs::copy(mount_helper(), &path).unwrap();
        SbinHelper { path, saved }
    }
}

impl Drop for SbinHelper {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(aside) = self.saved.take() {
            let _ = std::fs::rename(aside, &self.path);
        }
    }
}

/// mount(8) with the helper in /sbin: `mount -t snapfs`, then an fstab "boot" (`mount -a -T`)
/// with a snapfs line and an ext4-over-loop line on its origin file, torn down in order.
#[test]
fn mount_t_snapfs_and_an_fstab_boot() {
    let _sbin_lock = SBIN.lock().unwrap_or_else(|e| e.into_inner());
    let mut s = Scratch::new("fstab");
    let mut stack = Stack::default();
    let (origin, cow, data) = (s.path("data.img"), s.path("nightly.cow"), s.path("data"));
    sparse_file(&origin, 64 * MIB);
    sparse_file(&cow, 32 * MIB);
    let files = ext4_image_with_files(&s, &origin, &mut stack);
    let _helper = SbinHelper::install();
    let env = [("SNAPFS_BIN", BIN)];

    // mount -t snapfs, as in the README.
    let spec = format!("snapshot=nightly:{}:P:16", cow.display());
    let out = Command::new("mount")
        .args([
            "-t",
            "snapfs",
            origin.to_str().unwrap(),
            s.mnt.to_str().unwrap(),
        ])
        .args(["-o", &spec])
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -t snapfs: {out:?}");
    s.adopt_daemon();
    let (source, fstype) = mount_entry(&s.mnt);
    assert_eq!(
        (source.as_str(), fstype.as_str()),
        (origin.to_str().unwrap(), "fuse.snapfs")
    );
    let lines = status(&s);
    assert_eq!(
        (lines[1].0.as_str(), lines[1].3.as_str()),
        ("nightly", "snapshot")
    );
    assert_eq!(
        lines[1].4[1], "32",
        "a new store: metadata = 2 chunks of 16 sectors"
    );
    assert_eq!(s.unmount(), 0, "umount ends the daemon cleanly");

    // The fstab of the README, on temporary paths.
    let fstab = s.path("fstab");
    let text = format!(
        "{origin}  {vol}  snapfs  snapshot=nightly:{cow}:P:8  0 0\n\
         {vol}/origin  {data}  ext4  loop,nofail  0 2\n",
        origin = origin.display(),
        vol = s.mnt.display(),
        cow = cow.display(),
        data = data.display()
    );
    std::fs::write(&fstab, text).unwrap();
    std::fs::create_dir_all(&data).unwrap();
    let out = Command::new("mount")
        .args(["-a", "-T", fstab.to_str().unwrap()])
        .envs(env)
        .output()
        .unwrap();
    assert!(out.status.success(), "mount -a: {out:?}");
    s.adopt_daemon();
    stack.track_mount(&data);
    assert_eq!(
        mount_entry(&data).1,
        "ext4",
        "the loop line mounted after the snapfs line"
    );
    for (name, content) in &files {
        assert!(
            std::fs::read(data.join(name)).unwrap() == *content,
            "{name} through fstab"
        );
    }
    let before = allocated_sectors(&s, "nightly");
    std::fs::write(data.join("after-boot"), Rng(33).bytes(MIB)).unwrap();
    run("sync", &[]);
    assert!(
        allocated_sectors(&s, "nightly") > before,
        "the snapshot took copies"
    );
    stack.umount(&data);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// An ext4 image with a few files, made directly on the image file (no snapfs yet).
fn ext4_image_with_files(s: &Scratch, image: &Path, stack: &mut Stack) -> Vec<(String, Vec<u8>)> {
    run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
    let dir = s.path("prepare");
    let dev = stack.attach(image, false, false);
    stack.mount(&dev, &dir, "rw");
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .map(|i| (format!("f{i}"), Rng(40 + i).bytes(300_000)))
        .collect();
    for (name, content) in &files {
        std::fs::write(dir.join(name), content).unwrap();
    }
    stack.umount(&dir);
    stack.detach(&dev);
    files
}

// ----- live snapshots --------------------------------------------------------------------------

const LIVE_BYTES: u64 = 32 * MIB;
const WRITERS: u64 = 2;
const WRITE_BYTES: usize = 64 * 1024;

/// One acknowledged write: where, what, and when it started and returned.
struct Logged {
    offset: u64,
    data: Vec<u8>,
    started: Instant,
    returned: Instant,
}

/// Writes into its own stripe of the origin until told to stop, then `after` more writes.
fn writer(origin: &Path, stripe: u64, stop: &AtomicBool, after: usize) -> Vec<Logged> {
    let file = open_rw(origin);
    let size = LIVE_BYTES / WRITERS;
    let mut rng = Rng(500 + stripe);
    let mut log = Vec::new();
    let mut extra = 0;
    while extra < after && log.len() < 20_000 {
        let offset = stripe * size + rng.below((size - WRITE_BYTES as u64) / 4096) * 4096;
        let data = rng.bytes(WRITE_BYTES as u64);
        let started = Instant::now();
        file.write_all_at(&data, offset).unwrap();
        let returned = Instant::now();
        log.push(Logged {
            offset,
            data,
            started,
            returned,
        });
        if stop.load(Ordering::Acquire) {
            extra += 1;
        }
    }
    log
}

/// The `k` in `lo..=hi` for which the stripe after the first `k` writes of `log` is `got`.
/// Applies the writes one by one, keeping count of the bytes that differ.
fn matching_prefix(
    initial: &[u8],
    stripe: u64,
    log: &[Logged],
    lo: usize,
    hi: usize,
    got: &[u8],
) -> Option<usize> {
    let base = stripe as usize * (LIVE_BYTES / WRITERS) as usize;
    let differing = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let mut model = stripe_after(initial, stripe, log, lo);
    let mut differ = differing(&model, got);
    for (k, w) in log.iter().enumerate().take(hi).skip(lo) {
        if differ == 0 {
            return Some(k);
        }
        let range = w.offset as usize - base..w.offset as usize - base + w.data.len();
        differ -= differing(&model[range.clone()], &got[range.clone()]);
        model[range.clone()].copy_from_slice(&w.data);
        differ += differing(&model[range.clone()], &got[range]);
    }
    (differ == 0).then_some(hi)
}

/// The stripe of `image` after the first `k` writes of `log`.
fn stripe_after(initial: &[u8], stripe: u64, log: &[Logged], k: usize) -> Vec<u8> {
    let size = (LIVE_BYTES / WRITERS) as usize;
    let base = stripe as usize * size;
    let mut model = initial[base..base + size].to_vec();
    for w in &log[..k] {
        let at = w.offset as usize - base;
        model[at..at + w.data.len()].copy_from_slice(&w.data);
    }
    model
}

/// `snapfs snapshot` while two writers keep writing: in each writer's stripe the snapshot is
/// exactly the origin after some prefix of that writer's writes, which contains every write
/// acknowledged before the command started and none started after it returned. The registry
/// reattaches the snapshot at the next mount; `drop` removes it.
#[test]
fn live_snapshot_under_concurrent_writers() {
    let mut s = Scratch::new("live");
    let (origin, cow, registry) = (s.path("origin.img"), s.path("live.cow"), s.path("vol.reg"));
    let initial = write_random_image(&origin, LIVE_BYTES, 50);
    let reg_option = format!("registry={}", registry.display());
    s.mount_daemon(&origin, &[&reg_option], &[]);

    let stop = AtomicBool::new(false);
    let origin_file = s.file("origin");
    let (logs, taken, window) = std::thread::scope(|scope| {
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                scope.spawn({
                    let (origin_file, stop) = (&origin_file, &stop);
                    move || writer(origin_file, t, stop, 40)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(150));
        let before = Instant::now();
        let cow_arg = cow.to_str().unwrap();
        let taken = snapfs(&[
            "snapshot",
            s.mnt.to_str().unwrap(),
            "live",
            "--cow",
            cow_arg,
            "--size",
            "40M",
        ]);
        let after = Instant::now();
        stop.store(true, Ordering::Release);
        let logs: Vec<Vec<Logged>> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        (logs, taken, (before, after))
    });
    assert!(taken.status.success(), "snapfs snapshot: {taken:?}");
    assert!(String::from_utf8_lossy(&taken.stdout).starts_with("ok snapshot live attached"));
    assert!(
        stderr_lines(&taken).is_empty(),
        "recorded: no warning: {taken:?}"
    );

    let snapshot = std::fs::read(s.file("live")).unwrap();
    let size = (LIVE_BYTES / WRITERS) as usize;
    for (t, log) in logs.iter().enumerate() {
        let surely_in = log.iter().filter(|w| w.returned < window.0).count();
        let maybe_in = log.iter().filter(|w| w.started < window.1).count();
        assert!(
            surely_in > 0 && maybe_in < log.len(),
            "writer {t} wrote on both sides"
        );
        let got = &snapshot[t * size..(t + 1) * size];
        let k = matching_prefix(&initial, t as u64, log, surely_in, maybe_in, got);
        assert!(
            k.is_some(),
            "stripe {t}: the snapshot is no prefix in {surely_in}..={maybe_in}"
        );
        let all = stripe_after(&initial, t as u64, log, log.len());
        assert_same(
            "origin stripe",
            &std::fs::read(s.file("origin")).unwrap()[t * size..(t + 1) * size],
            &all,
        );
    }
    let recorded = std::fs::read_to_string(&registry).unwrap();
    assert!(
        recorded
            .lines()
            .any(|l| l == format!("live {} P 32", cow.display())),
        "{recorded}"
    );

    // The next mount names only the registry and gets the snapshot back, unchanged.
    assert_eq!(s.unmount(), 0, "{}", s.log());
    s.mount_daemon(&origin, &[&reg_option], &[]);
    assert_same(
        "live after remount",
        &std::fs::read(s.file("live")).unwrap(),
        &snapshot,
    );
    let out = snapfs_ok(&["drop", s.mnt.to_str().unwrap(), "live"]);
    assert!(out.starts_with("ok snapshot live detached"), "{out}");
    let recorded = std::fs::read_to_string(&registry).unwrap();
    assert!(
        !recorded.contains("live"),
        "dropped from the registry: {recorded}"
    );
    assert_eq!(s.unmount(), 0);
    s.mount_daemon(&origin, &[&reg_option], &[]);
    assert!(!s.file("live").exists(), "a dropped snapshot stays dropped");
    assert_eq!(s.unmount(), 0);
}

/// Registry errors refuse the mount in one line; an agreeing option and registry entry are one
/// snapshot; a completed merge leaves the registry.
#[test]
fn registry_errors_and_merge_completion() {
    let mut s = Scratch::new("registry");
    let (origin, cow, other) = (s.path("origin.img"), s.path("a.cow"), s.path("b.cow"));
    let initial = write_random_image(&origin, 8 * MIB, 60);
    sparse_file(&cow, 4 * MIB);
    sparse_file(&other, 4 * MIB);
    let registry = s.path("vol.reg");
    let reg = format!("registry={}", registry.display());
    let refusals = [
        (
            "garbage here\n".to_string(),
            String::new(),
            "line 1: expected NAME COW STORE CHUNK",
        ),
        (
            format!("a {} P 8\n", cow.display()),
            format!("snapshot=a:{}:P:8", other.display()),
            "the mount options say",
        ),
    ];
    for (text, option, needle) in refusals {
        std::fs::write(&registry, text).unwrap();
        let out = s
            .command(&origin, &[&reg, &option], false)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let lines = stderr_lines(&out);
        assert_eq!(out.status.code(), Some(1), "{lines:?}");
        assert!(lines.len() == 1 && lines[0].contains(needle), "{lines:?}");
        assert!(!is_mounted(&s.mnt));
    }
    let missing_dir = format!("registry={}", s.path("no/such/dir.reg").display());
    let out = s
        .command(&origin, &[&missing_dir], false)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_lines(&out)[0].contains("could not be written"),
        "{out:?}"
    );

    // The same snapshot in both: attached once.
    std::fs::write(&registry, format!("a {} P 8\n", cow.display())).unwrap();
    s.mount_daemon(
        &origin,
        &[&reg, &format!("snapshot=a:{}", cow.display())],
        &[],
    );
    assert_eq!(status(&s).len(), 2, "origin and a");
    open_rw(&s.file("origin"))
        .write_all_at(&Rng(61).bytes(MIB), 0)
        .unwrap();
    let out = snapfs_ok(&["merge", s.mnt.to_str().unwrap(), "a", "--wait"]);
    assert!(out.contains("merge of a complete"), "{out}");
    assert_same(
        "origin after the merge",
        &std::fs::read(s.file("origin")).unwrap(),
        &initial,
    );
    let recorded = std::fs::read_to_string(&registry).unwrap();
    assert!(
        !recorded.contains("a.cow"),
        "a merged snapshot leaves the registry: {recorded}"
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

// ----- status, inspect, drop, merge ------------------------------------------------------------

/// `snapfs status` (table and JSON), `snapshot` without a registry (the warning), `drop`,
/// `inspect` of the dropped COW, and `merge --wait` of a transient snapshot, all parsed and
/// compared with the status file and the data.
#[test]
fn status_inspect_drop_and_merge_outputs() {
    let mut s = Scratch::new("outputs");
    let (origin, cow1, cow2) = (s.path("origin.img"), s.path("s1.cow"), s.path("s2.cow"));
    let mut model = write_random_image(&origin, 16 * MIB, 70);
    sparse_file(&cow1, 16 * MIB);
    s.mount_daemon(
        &origin,
        &[&format!("snapshot=s1:{}:P:8", cow1.display())],
        &[],
    );
    let mnt = s.mnt.to_str().unwrap().to_string();
    let data = Rng(71).bytes(MIB);
    open_rw(&s.file("origin")).write_all_at(&data, 0).unwrap();
    model[..MIB as usize].copy_from_slice(&data);

    // JSON agrees with the status file.
    let json: Value = serde_json::from_str(&snapfs_ok(&["status", &mnt, "--json"])).unwrap();
    assert_eq!(
        (json["version"].as_u64(), json["origin"]["bytes"].as_u64()),
        (Some(1), Some(16 * MIB))
    );
    assert_eq!(json["origin"]["device"], origin.to_str().unwrap());
    assert_eq!(json["registry"], Value::Null);
    let s1 = &json["snapshots"][0];
    assert_eq!(
        (s1["name"].as_str(), s1["state"].as_str()),
        (Some("s1"), Some("active"))
    );
    assert_eq!(
        (s1["store"].as_str(), s1["chunk_sectors"].as_u64()),
        (Some("P"), Some(8))
    );
    assert_eq!(
        (s1["exceptions"].as_u64(), s1["attached"].as_str()),
        (Some(256), Some("options"))
    );
    assert_eq!(s1["cow"], cow1.to_str().unwrap());
    let used = allocated_sectors(&s, "s1");
    assert_eq!(s1["cow_used_sectors"].as_u64(), Some(used));
    assert_eq!(s1["status"].as_str().unwrap(), format!("{used}/32768 24"));
    assert_eq!(json["warnings"].as_array().unwrap().len(), 0);

    // A live snapshot without a registry: taken, and loudly not recorded.
    let out = snapfs(&[
        "snapshot",
        &mnt,
        "s2",
        "--cow",
        cow2.to_str().unwrap(),
        "--size",
        "8M",
        "--store",
        "N",
        "--chunk",
        "16",
    ]);
    assert!(out.status.success(), "{out:?}");
    // A transient snapshot ends with its mount: nothing to add to fstab, but said so.
    let warning = stderr_lines(&out).join(" ");
    assert!(
        warning.contains("WARNING") && warning.contains("snapshot s2 is transient (N)"),
        "{warning}"
    );
    assert_eq!(
        std::fs::metadata(&cow2).unwrap().len(),
        8 * MIB,
        "--size made the COW"
    );
    let table = snapfs_ok(&["status", &mnt]);
    let rows = table_rows(&table);
    assert_eq!(rows["s1"][..3], ["P", "4 KiB", "16.00 MiB"]);
    assert_eq!(rows["s1"][6..9], ["active", "-", "options"]);
    assert_eq!(rows["s2"][..2], ["N", "8 KiB"]);
    assert_eq!(rows["s2"][8], "live");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("WARNING: snapshot s2 is transient")),
        "{table}"
    );
    assert!(table.starts_with(&format!(
        "origin {} on {mnt}: 16.00 MiB, read-write; registry: none",
        origin.display()
    )));

    // Drop s1 (an option: the warning says to remove it), then inspect its COW offline.
    let out = snapfs(&["drop", &mnt, "s1"]);
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).starts_with("ok snapshot s1 detached")
    );
    assert!(
        stderr_lines(&out)
            .join(" ")
            .contains(&format!("remove snapshot=s1:{}:P:8", cow1.display()))
    );
    let fields = inspect_fields(&cow1);
    assert_eq!(fields["state"], "valid");
    assert_eq!(fields["exceptions"], "256");
    assert_eq!(fields["chunk size"], "8 sectors (4 KiB)");
    assert!(
        fields["usage"].starts_with(&format!("{used}/32768 24 ")),
        "{fields:?}"
    );
    assert_eq!(fields["merge"], "none");
    let json: Value =
        serde_json::from_str(&snapfs_ok(&["inspect", cow1.to_str().unwrap(), "--json"])).unwrap();
    assert_eq!(json["usage"]["allocated_sectors"].as_u64(), Some(used));

    // Merge the transient snapshot back: the origin is as it was when s2 was taken.
    let at_s2 = model.clone();
    let data = Rng(72).bytes(MIB);
    open_rw(&s.file("origin"))
        .write_all_at(&data, 4 * MIB)
        .unwrap();
    let out = snapfs_ok(&["merge", &mnt, "s2", "--wait"]);
    assert!(
        out.starts_with("ok merging s2") && out.contains("merge of s2 complete"),
        "{out}"
    );
    assert_same(
        "origin after merge",
        &std::fs::read(s.file("origin")).unwrap(),
        &at_s2,
    );
    assert!(snapfs_ok(&["status", &mnt]).contains("\nno snapshots\n"));
    let busy = snapfs(&["merge", &mnt, "nothing"]);
    assert_eq!(busy.status.code(), Some(1));
    assert!(
        stderr_lines(&busy)[0].contains("no snapshot named nothing"),
        "{busy:?}"
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());

    // Offline: a new COW, and something that is no COW at all.
    let fresh = s.path("fresh.cow");
    sparse_file(&fresh, MIB);
    assert!(inspect_fields(&fresh)["state"].starts_with("new"));
    let out = snapfs(&["inspect", origin.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("state:       corrupt: no snapshot header")
    );
}

/// `snapfs status` rows by name: the columns after NAME.
fn table_rows(table: &str) -> HashMap<String, Vec<String>> {
    let mut lines = table.lines().skip(1);
    let header = lines.next().unwrap();
    assert!(header.starts_with("NAME"), "{table}");
    lines
        .take_while(|l| !l.starts_with("WARNING"))
        .map(|l| {
            let cells: Vec<String> = l
                .split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect();
            (cells[0].clone(), cells[1..].to_vec())
        })
        .collect()
}

/// `snapfs inspect COW` as `key: value`.
fn inspect_fields(cow: &Path) -> HashMap<String, String> {
    snapfs_ok(&["inspect", cow.to_str().unwrap()])
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

// ----- the demo --------------------------------------------------------------------------------

/// `snapfs demo DIR` passes its own checks and leaves nothing mounted or attached.
#[test]
fn demo_passes_and_cleans_up() {
    let s = Scratch::new("demo");
    let dir = s.path("demo");
    let out = Command::new(BIN)
        .arg("demo")
        .arg(&dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo: {}\n{transcript}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        transcript.contains("demo passed: every check held"),
        "{transcript}"
    );
    assert!(transcript.contains("ok: notes.txt, photo.jpg and config/app.conf are back"));
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !table.contains(dir.to_str().unwrap()),
        "nothing left mounted"
    );
    let loops = run("losetup", &["-j", dir.join("vol/origin").to_str().unwrap()]);
    assert!(loops.trim().is_empty(), "no loop device left: {loops}");
    assert!(
        dir.join("snapfs.log").is_file(),
        "DIR is kept, with the log"
    );
}
