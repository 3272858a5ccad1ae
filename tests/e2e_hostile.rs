//! Hostile input through real mounts (needs root, /dev/fuse, loop devices, setpriv): malformed
//! options and control commands, corrupt and mismatched devices, I/O at and past the end of
//! the files, racing control commands, other users, and read-only sessions. Each case checks
//! the answer (exit status, errno, what `control` says) and that no device changed (checksums
//! of every image before and after).
//!
//! Each table-driven test prints its case count (`--nocapture`); docs/reliability.md records
//! them.

mod e2e_support;
mod hostile_support;

use e2e_support::*;
use hostile_support::{Layout, MARKER, SNAP, in_order, put_header, store_image};
use snapfs::device::{FileDevice, OpenMode};
use snapfs::{SnapshotConfig, Volume, VolumeOptions};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

const NOBODY: u32 = 65534;
const L8: Layout = Layout { cs: 8 };

fn report(test: &str, cases: usize) {
    eprintln!("e2e_hostile: {test}: {cases} cases");
}

fn errno_of<T: std::fmt::Debug>(r: std::io::Result<T>) -> Option<i32> {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.raw_os_error(),
    }
}

/// Checksums of files, to compare before and after.
fn sums(paths: &[PathBuf]) -> Vec<u64> {
    paths.iter().map(|p| checksum(p)).collect()
}

fn read_status(s: &Scratch) -> String {
    std::fs::read_to_string(s.file("status")).unwrap()
}

fn listing(s: &Scratch) -> BTreeSet<String> {
    std::fs::read_dir(&s.mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Everything a refused command must leave as it was: device images, status text, listing.
struct State {
    sums: Vec<u64>,
    status: String,
    listing: BTreeSet<String>,
}

fn state(s: &Scratch, files: &[PathBuf]) -> State {
    State {
        sums: sums(files),
        status: read_status(s),
        listing: listing(s),
    }
}

fn assert_same_state(before: &State, after: &State, ctx: &str) {
    assert_eq!(before.sums, after.sums, "{ctx}: a device changed");
    assert_eq!(before.status, after.status, "{ctx}: status changed");
    assert_eq!(
        before.listing, after.listing,
        "{ctx}: the directory changed"
    );
}

/// Writes raw bytes as one command (one write call); returns the result and the answer.
fn control_bytes(s: &Scratch, command: &[u8]) -> (std::io::Result<usize>, String) {
    let mut f = OpenOptions::new()
        .write(true)
        .open(s.file("control"))
        .unwrap();
    let result = f.write(command);
    drop(f);
    (result, std::fs::read_to_string(s.file("control")).unwrap())
}

// ----- COW images -----------------------------------------------------------------------------

/// Hostile COW images for an origin of `origin_chunks` 4 KiB chunks, by name, with the text
/// their refusal must contain.
fn hostile_images(origin_chunks: u64) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = || store_image(L8, 256, &in_order(L8, 4, |k| k));
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut img = good();
        f(&mut img);
        img
    };
    let record = |old: u64, new: u64| store_image(L8, 256, &[(0, 2), (old, new)]);
    vec![
        ("magic", with(&|i| i[0] = b's'), "no snapshot header"),
        (
            "version",
            with(&|i| i[8] = 2),
            "unable to handle snapshot disk version",
        ),
        ("chunk", with(&|i| i[12] = 12), "invalid on-disk chunk size"),
        ("area", record(7, 1), "points at a metadata chunk"),
        (
            "beyond-cow",
            record(7, 256),
            "points beyond the end of the COW",
        ),
        ("beyond-2-56", record(7, 1 << 56), "beyond 2^56"),
        (
            "beyond-origin",
            record(origin_chunks, 3),
            "beyond the end of the origin",
        ),
        ("duplicate", record(0, 3), "appears in two records"),
        (
            "truncated",
            good()[..4 * 4096 + 2048].to_vec(),
            "beyond the end of the COW",
        ),
        ("tiny", vec![0u8; 8192], "needs at least 3 chunks"),
    ]
}

fn write_images(s: &Scratch, images: &[(&str, Vec<u8>, &str)]) -> Vec<PathBuf> {
    images
        .iter()
        .map(|(name, img, _)| {
            let path = s.path(&format!("{name}.cow"));
            std::fs::write(&path, img).unwrap();
            path
        })
        .collect()
}

// ----- mount options --------------------------------------------------------------------------

/// Runs `snapfs mount` (foreground or not) and checks it refuses with `code` and one line.
fn expect_mount_refused(s: &Scratch, origin: &Path, options: &[&str], code: i32, needle: &str) {
    for foreground in [true, false] {
        let out = s
            .command(origin, options, foreground)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let ctx = format!("{options:?} (foreground {foreground})");
        assert_eq!(out.status.code(), Some(code), "{ctx}: {stderr}");
        assert_eq!(lines.len(), 1, "{ctx}: one line: {stderr}");
        assert!(lines[0].starts_with("snapfs: "), "{ctx}: {stderr}");
        assert!(
            lines[0].contains(needle),
            "{ctx}: {stderr} should say {needle:?}"
        );
        assert!(!is_mounted(&s.mnt), "{ctx}: mounted");
    }
}

#[test]
fn malformed_mount_options_and_devices_are_refused_and_change_nothing() {
    let s = Scratch::new("h-options");
    let origin = s.path("origin.img");
    write_random_image(&origin, 4 * MIB, 1);
    let fresh = s.path("fresh.cow");
    sparse_file(&fresh, 4 * MIB);
    let dir = s.path("a-directory");
    std::fs::create_dir(&dir).unwrap();
    let images = hostile_images(1024);
    let mut files = write_images(&s, &images);
    let empty = s.path("empty.img");
    File::create(&empty).unwrap();
    files.extend([origin.clone(), fresh.clone(), empty.clone()]);
    let before = sums(&files);
    let (f, o, d) = (fresh.display(), origin.display(), dir.display());
    let long = "n".repeat(256);
    let usage: Vec<(String, &str)> = vec![
        ("frobnicate".into(), "unknown mount option"),
        ("ro=1".into(), "unknown mount option"),
        ("subtype=x".into(), "unknown mount option"),
        ("fsname=x".into(), "unknown mount option"),
        ("uid=".into(), "expected a numeric id"),
        ("uid=abc".into(), "expected a numeric id"),
        ("gid=-1".into(), "expected a numeric id"),
        ("gid=99999999999".into(), "id out of range"),
        ("allow_other,allow_root".into(), "mutually exclusive"),
        ("snapshot".into(), "unknown mount option"),
        ("snapshot=".into(), "expected NAME:COW"),
        ("snapshot=nocolon".into(), "expected NAME:COW"),
        (format!("snapshot=:{f}"), "empty snapshot name"),
        ("snapshot=a:".into(), "missing COW path"),
        ("snapshot=a::P:8".into(), "missing COW path"),
        (format!("snapshot=origin:{f}"), "reserved"),
        (format!("snapshot=control:{f}"), "reserved"),
        (format!("snapshot=a/b:{f}"), "contains '/'"),
        (format!("snapshot=..:{f}"), "not a file name"),
        (format!("snapshot={long}:{f}"), "longer than 127 bytes"),
        (format!("snapshot=a:{f}:N:0"), "Chunk size not set"),
        (format!("snapshot=a:{f}:P:12"), "not a power of 2"),
        (format!("snapshot=a:{f}:PO:4194304"), "too high"),
        (
            format!("snapshot=a:{f},snapshot=a:{f}"),
            "two snapshots are named",
        ),
    ];
    for (option, needle) in &usage {
        expect_mount_refused(&s, &origin, &[option], 2, needle);
    }
    let mut devices: Vec<(String, &str)> = vec![
        ("snapshot=a:/nonexistent/x.cow".into(), "/nonexistent/x.cow"),
        (
            format!("snapshot=a:{d}"),
            "not a regular file or block device",
        ),
        (
            "snapshot=a:/dev/null".into(),
            "not a regular file or block device",
        ),
        (format!("snapshot=a:{o}"), "in use"),
        (format!("snapshot=a:{f},snapshot=b:{f}"), "in use"),
        (
            format!("ro,snapshot=a:{f}"),
            "not initialised and the mount is read-only",
        ),
    ];
    for (name, _, needle) in &images {
        devices.push((
            format!(
                "snapshot=new:{f},snapshot={name}:{}",
                s.path(&format!("{name}.cow")).display()
            ),
            needle,
        ));
    }
    for (option, needle) in &devices {
        expect_mount_refused(&s, &origin, &[option], 1, needle);
    }
    // The origin itself.
    expect_mount_refused(&s, &empty, &[], 1, "is empty");
    expect_mount_refused(&s, &dir, &[], 1, "not a regular file or block device");
    expect_mount_refused(&s, &s.path("missing.img"), &[], 1, "missing.img");
    assert_eq!(before, sums(&files), "no device was written");
    report(
        "mount options and devices (x2: daemon and foreground)",
        usage.len() + devices.len() + 3,
    );
}

// ----- control commands -----------------------------------------------------------------------

/// A mount with two snapshots (P `s1` and N `s2`) and some exceptions; returns the files whose
/// bytes must not change.
fn control_rig(s: &mut Scratch) -> Vec<PathBuf> {
    let origin = s.path("origin.img");
    write_random_image(&origin, 8 * MIB, 2);
    let (cow1, cow2, spare) = (s.path("s1.cow"), s.path("s2.cow"), s.path("spare.cow"));
    for c in [&cow1, &cow2, &spare] {
        sparse_file(c, 8 * MIB);
    }
    let specs = format!(
        "snapshot=s1:{}:P:8,snapshot=s2:{}:N:8",
        cow1.display(),
        cow2.display()
    );
    s.mount_daemon(&origin, &[&specs], &[]);
    open_rw(&s.file("origin"))
        .write_all_at(&Rng(3).bytes(256 * 1024), MIB)
        .unwrap();
    let images = hostile_images(2048);
    let mut files = write_images(s, &images);
    files.extend([origin, cow1, cow2, spare]);
    files
}

fn bad_control_commands(s: &Scratch) -> Vec<(Vec<u8>, i32, String)> {
    let einval = libc::EINVAL;
    let p = |name: &str| s.path(name).display().to_string();
    let mut cases: Vec<(Vec<u8>, i32, String)> = [
        ("\n", "empty command"),
        ("   \t \n", "empty command"),
        ("frobnicate", "unknown command"),
        ("SNAPSHOT a /x", "unknown command"),
        ("snapshot", "usage: snapshot"),
        ("snapshot a", "usage: snapshot"),
        ("snapshot a /x P 8 extra", "usage: snapshot"),
        ("snapshot a relative.cow", "not absolute"),
        ("snapshot a /x Q", "not P, PO or N"),
        ("snapshot a /x PX", "unsupported persistent store option"),
        ("snapshot a /x P 12", "not a power of 2"),
        ("snapshot a /x P eight", "Invalid chunk size"),
        ("snapshot a /x N 0", "Chunk size not set"),
        ("snapshot a /x P 4194304", "too high"),
        ("snapshot origin /x", "reserved"),
        ("snapshot status /x", "reserved"),
        ("snapshot control /x", "reserved"),
        ("snapshot a:b /x", "contains ':'"),
        ("snapshot .. /x", "not a file name"),
        ("drop", "usage: drop"),
        ("drop a b", "usage: drop"),
        ("drop origin", "reserved"),
        ("merge a b", "usage: merge"),
        ("merge control", "reserved"),
        ("help me", "usage: help"),
        ("drop s1\ndrop s2", "one command per write"),
        ("drop s1\n\n", "one command per write"),
        ("drop s1\0", "contains '\\0'"),
        ("drop nosuch", "no snapshot named nosuch"),
        ("merge nosuch", "no snapshot named nosuch"),
        ("merge", "which snapshot?"),
        ("snapshot x /nonexistent/x.cow", "/nonexistent/x.cow"),
    ]
    .iter()
    .map(|(c, n)| (c.as_bytes().to_vec(), einval, n.to_string()))
    .collect();
    cases.push((vec![0xff, 0xfe, b'\n'], einval, "not UTF-8".into()));
    let attach = |name: &str, cow: String, needle: &str| {
        (
            format!("snapshot {name} {cow} P 8").into_bytes(),
            einval,
            needle.to_string(),
        )
    };
    cases.push(attach("x", p("origin.img"), "in use"));
    cases.push(attach("x", p("s1.cow"), "in use"));
    cases.push(attach(
        "x",
        s.path("").display().to_string(),
        "not a regular file",
    ));
    cases.push(attach(
        "x",
        "/dev/null".into(),
        "not a regular file or block device",
    ));
    cases.push(attach("s1", p("spare.cow"), "already exists"));
    cases.push(attach("s2", p("spare.cow"), "already exists"));
    for (name, _, needle) in hostile_images(2048) {
        cases.push(attach("x", p(&format!("{name}.cow")), needle));
    }
    cases
}

/// Every malformed or impossible command fails with EINVAL (EBUSY for a merge of a busy
/// origin), `control` then says why in one line, and nothing changes.
#[test]
fn malformed_control_commands_fail_and_change_nothing() {
    let mut s = Scratch::new("h-control");
    let files = control_rig(&mut s);
    let before = state(&s, &files);
    let cases = bad_control_commands(&s);
    for (command, errno, needle) in &cases {
        let ctx = format!("{:?}", String::from_utf8_lossy(command));
        let (result, answer) = control_bytes(&s, command);
        assert_eq!(errno_of(result), Some(*errno), "{ctx}: {answer}");
        assert!(answer.starts_with("error: "), "{ctx}: {answer}");
        assert_eq!(answer.lines().count(), 1, "{ctx}: one line: {answer:?}");
        assert!(
            answer.contains(needle.as_str()),
            "{ctx}: {answer:?} should say {needle:?}"
        );
        assert_same_state(&before, &state(&s, &files), &ctx);
    }
    // A zero-length write never reaches snapfs (the kernel answers it): nothing changes.
    let (result, answer) = control_bytes(&s, b"");
    assert_eq!(result.unwrap(), 0);
    assert!(
        answer.starts_with("error: "),
        "still the last answer: {answer}"
    );
    // A merge while the origin is open: EBUSY, nothing changes.
    let held = File::open(s.file("origin")).unwrap();
    let (result, answer) = control_bytes(&s, b"merge s1\n");
    assert_eq!(errno_of(result), Some(libc::EBUSY), "{answer}");
    assert!(answer.contains("origin is open"), "{answer}");
    drop(held);
    assert_same_state(&before, &state(&s, &files), "merge while open");
    let (result, answer) = control_bytes(&s, b"help\n");
    result.unwrap();
    assert!(answer.starts_with("ok commands:"), "{answer}");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("control commands", cases.len() + 1);
}

#[test]
fn oversized_control_writes_are_refused() {
    let mut s = Scratch::new("h-control-size");
    let files = control_rig(&mut s);
    let before = state(&s, &files);
    let padded = |verb: &str, len: usize, pad: u8| {
        let mut v = verb.as_bytes().to_vec();
        v.resize(len, pad);
        v
    };
    let refused = [
        (
            padded("help", 4097, b' '),
            "command too long (4097 bytes; at most 4096)",
        ),
        (padded("drop s1", 64 * 1024, b' '), "command too long ("),
        (padded("drop s1", 1 << 20, b'\n'), "command too long ("),
        (padded("drop ", 4096, b'x'), "longer than 127 bytes"),
    ];
    for (command, needle) in &refused {
        let (result, answer) = control_bytes(&s, command);
        assert_eq!(
            errno_of(result),
            Some(libc::EINVAL),
            "{} bytes",
            command.len()
        );
        assert!(
            answer.starts_with("error: ") && answer.contains(needle),
            "{answer:?}"
        );
        assert_eq!(answer.lines().count(), 1);
        assert_same_state(
            &before,
            &state(&s, &files),
            &format!("{} bytes", command.len()),
        );
    }
    // Exactly the limit is fine, and so is a write at an offset (the offset is ignored).
    let (result, answer) = control_bytes(&s, &padded("help", 4096, b' '));
    assert_eq!(result.unwrap(), 4096);
    assert!(answer.starts_with("ok commands:"), "{answer}");
    let f = OpenOptions::new()
        .write(true)
        .open(s.file("control"))
        .unwrap();
    assert_eq!(
        f.write_at(b"drop nosuch", 12345)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    drop(f);
    assert!(
        std::fs::read_to_string(s.file("control"))
            .unwrap()
            .contains("no snapshot named nosuch")
    );
    assert_same_state(&before, &state(&s, &files), "after the limit cases");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("oversized control writes", refused.len() + 2);
}

/// A reader of `control` gets one whole answer: a command run between two reads of one handle
/// does not change what that handle reads (it used to give the head of one answer and the
/// tail of the next).
#[test]
fn control_answers_are_never_torn() {
    let mut s = Scratch::new("h-torn");
    let files = control_rig(&mut s);
    let before = state(&s, &files);
    let (result, first) = control_bytes(&s, b"drop nosuch");
    assert!(
        result.is_err() && first.starts_with("error: no snapshot named nosuch"),
        "{first}"
    );
    let reader = File::open(s.file("control")).unwrap();
    let mut head = [0u8; 10];
    assert_eq!(reader.read_at(&mut head, 0).unwrap(), 10);
    let (_, second) = control_bytes(&s, b"help");
    assert!(second.starts_with("ok commands:"), "{second}");
    let mut rest = vec![0u8; 8192];
    let n = reader.read_at(&mut rest, 10).unwrap();
    let whole = [&head[..], &rest[..n]].concat();
    assert_eq!(
        String::from_utf8_lossy(&whole),
        first,
        "the handle's answer is whole"
    );
    let mut again = vec![0u8; 8192];
    let n = reader.read_at(&mut again, 0).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again[..n]),
        second,
        "a read at 0 takes the latest"
    );
    drop(reader);
    assert_same_state(&before, &state(&s, &files), "reads change nothing");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    report("torn control answers", 2);
}

// ----- I/O at and past the end ----------------------------------------------------------------

/// Reads at and past the end return 0 bytes; writes reaching past it fail with ENOSPC and
/// change nothing (not even a copy-out). Offsets whose end overflows a signed 64-bit file
/// position are refused by the kernel itself (EINVAL) before snapfs sees them.
#[test]
fn io_at_and_past_the_end() {
    let mut s = Scratch::new("h-eof");
    let origin = s.path("origin.img");
    // 4 MiB + 1536 served; the 100 bytes of ragged tail are never touched.
    let initial = write_random_image(&origin, 4 * MIB + 1536 + 100, 4);
    let (p, n) = (s.path("p.cow"), s.path("n.cow"));
    sparse_file(&p, 8 * MIB);
    sparse_file(&n, 8 * MIB);
    let specs = format!(
        "snapshot=p:{}:P:8,snapshot=n:{}:N:8",
        p.display(),
        n.display()
    );
    s.mount_daemon(&origin, &[&specs], &[]);
    let size = 4 * MIB + 1536;
    let files = [origin.clone(), p.clone(), n.clone()];
    let before = state(&s, &files);
    let near_max = i64::MAX as u64;
    let reads = [size, size + 1, size + 4096, 1 << 40, near_max - 8192 - 1];
    let enospc = [
        (size - 1, 2),
        (size, 1),
        (size - 100, 8192),
        (size + 4096, 4096),
        (1 << 40, 10),
        (near_max - 100, 10),
    ];
    let einval = [(near_max - 5, 10), (near_max, 1)];
    let mut cases = 0;
    for name in ["origin", "p", "n"] {
        let f = open_rw(&s.file(name));
        assert_eq!(f.metadata().unwrap().len(), size, "{name}: size");
        let mut buf = vec![0u8; 8192];
        for offset in reads {
            assert_eq!(
                f.read_at(&mut buf, offset).unwrap(),
                0,
                "{name}: read at {offset}"
            );
        }
        assert_eq!(
            f.read_at(&mut buf, size - 1).unwrap(),
            1,
            "{name}: the last byte"
        );
        assert_eq!(buf[0], initial[size as usize - 1]);
        for (offset, len) in enospc {
            let r = f.write_at(&vec![0xee; len], offset);
            assert_eq!(
                errno_of(r),
                Some(libc::ENOSPC),
                "{name}: write {offset}+{len}"
            );
        }
        for (offset, len) in einval {
            let r = f.write_at(&vec![0xee; len], offset);
            assert_eq!(
                errno_of(r),
                Some(libc::EINVAL),
                "{name}: write {offset}+{len}"
            );
        }
        assert_eq!(
            f.write_at(&[], size + 10).unwrap(),
            0,
            "{name}: empty write past the end"
        );
        let r = fallocate(&f, 0, size - 512, 4096);
        assert_eq!(r, Err(libc::EOPNOTSUPP), "{name}: growing fallocate");
        fallocate(
            &f,
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_ZERO_RANGE,
            size,
            4096,
        )
        .unwrap();
        let err = f.set_len(size + 1).unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EINVAL),
            "{name}: grow by truncate"
        );
        assert_same_state(&before, &state(&s, &files), name);
        assert_same(
            name,
            &std::fs::read(s.file(name)).unwrap(),
            &initial[..size as usize],
        );
        cases += reads.len() + 1 + enospc.len() + einval.len() + 4;
    }
    // A write ending exactly at the end works.
    open_rw(&s.file("origin"))
        .write_all_at(&[0x42; 512], size - 512)
        .unwrap();
    let mut model = initial.clone();
    model[size as usize - 512..size as usize].fill(0x42);
    assert_same(
        "p keeps the old end",
        &std::fs::read(s.file("p")).unwrap(),
        &initial[..size as usize],
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
    assert_same("origin image", &std::fs::read(&origin).unwrap(), &model);
    report("I/O at and past the end", cases + 1);
}

// ----- racing control commands ----------------------------------------------------------------

const RACE_NAMES: [&str; 4] = ["a", "b", "c", "d"];
const RACE_BLOCKS: u64 = 1024;
const BLOCK: u64 = 4096;

/// One command a racing thread sent and how it went.
#[derive(Debug)]
struct Sent {
    command: String,
    /// `None` when the write succeeded, else the errno.
    errno: Option<i32>,
    /// A fresh COW made for an attach (must stay all zero when the attach failed).
    cow: Option<PathBuf>,
}

/// Block `k` of the origin as the writer thread leaves it.
fn new_block(k: u64) -> Vec<u8> {
    Rng(1000 + k).bytes(BLOCK)
}

/// The answer `control` shows is always a whole answer of some command.
fn assert_coherent_answer(answer: &str) {
    let first = answer.lines().next().unwrap_or_default();
    let ok = first.starts_with("ok snapshot ")
        || first.starts_with("ok commands:")
        || first.starts_with("ok no command yet");
    let error = first.starts_with("error: ") && answer.lines().count() == 1;
    assert!(ok || error, "incoherent answer {answer:?}");
}

fn race_command(s: &Scratch, rng: &mut Rng, thread: u64, i: u64) -> Sent {
    let name = RACE_NAMES[rng.below(RACE_NAMES.len() as u64) as usize];
    let mut cow = None;
    let command = match rng.below(20) {
        0..=7 => {
            let path = s.path(&format!("{name}-{thread}-{i}.cow"));
            sparse_file(&path, 6 * MIB);
            let c = format!("snapshot {name} {} P 8", path.display());
            cow = Some(path);
            c
        }
        8..=13 => format!("drop {name}"),
        14..=15 => format!("merge {name}"),
        16 => "help".to_string(),
        _ => rng_bad(rng).to_string(),
    };
    let (result, answer) = control_bytes(s, command.as_bytes());
    assert_coherent_answer(&answer);
    Sent {
        command,
        errno: result.err().map(|e| e.raw_os_error().unwrap()),
        cow,
    }
}

fn rng_bad(rng: &mut Rng) -> &'static str {
    [
        "frobnicate",
        "drop",
        "snapshot x rel.cow",
        "drop a b",
        "snapshot a /x N 0",
        "merge a b",
    ][rng.below(6) as usize]
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Writes block after block of the origin, holding it open until told to stop (so every merge
/// is refused); returns how many blocks it wrote.
fn origin_writer(s: &Scratch, stop: &AtomicBool) -> u64 {
    let f = open_rw(&s.file("origin"));
    let mut k = 0;
    while k < RACE_BLOCKS && !stop.load(Ordering::Relaxed) {
        f.write_all_at(&new_block(k), k * BLOCK).unwrap();
        k += 1;
    }
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    k
}

/// A snapshot taken while blocks were written in order holds the first `k` blocks new and the
/// rest as they were, for some `k`.
fn assert_prefix_state(name: &str, data: &[u8], initial: &[u8], written: u64) {
    let is_new =
        |k: u64| data[(k * BLOCK) as usize..((k + 1) * BLOCK) as usize] == new_block(k)[..];
    let k = (0..written).take_while(|&k| is_new(k)).count() as u64;
    for j in k..RACE_BLOCKS {
        let range = (j * BLOCK) as usize..((j + 1) * BLOCK) as usize;
        assert!(
            data[range.clone()] == initial[range],
            "{name}: block {j} (prefix {k})"
        );
    }
    assert_eq!(
        &data[(RACE_BLOCKS * BLOCK) as usize..],
        &initial[(RACE_BLOCKS * BLOCK) as usize..]
    );
}

/// Several threads send snapshot, drop, merge and bad commands at once while another writes
/// the origin. Every write gets a coherent answer; the snapshots in the end are exactly those
/// the successful commands leave; a failed attach never touches its COW; each snapshot holds
/// the origin of one moment; every COW is a valid store afterwards.
#[test]
fn racing_control_commands_stay_coherent() {
    let mut s = Scratch::new("h-race");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, 2 * RACE_BLOCKS * BLOCK, 5);
    s.mount_daemon(&origin, &[], &[]);
    let stop = AtomicBool::new(false);
    let (sent, written) = std::thread::scope(|scope| {
        // Stops the writer however this closure ends (a panicking thread must not hang it).
        let _stop = StopOnDrop(&stop);
        let writer = scope.spawn(|| origin_writer(&s, &stop));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    let mut rng = Rng(77 + t);
                    (0..25)
                        .map(|i| race_command(s, &mut rng, t, i))
                        .collect::<Vec<Sent>>()
                })
            })
            .collect();
        let sent: Vec<Sent> = threads
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        stop.store(true, Ordering::Relaxed);
        (sent, writer.join().unwrap())
    });
    let expected = check_race_answers(&sent);
    let shown: BTreeSet<String> = listing(&s)
        .into_iter()
        .filter(|n| !["origin", "status", "control"].contains(&n.as_str()))
        .collect();
    assert_eq!(
        shown, expected,
        "the snapshots are what the successful commands say"
    );
    let in_status: BTreeSet<String> = status(&s)
        .into_iter()
        .map(|l| l.0)
        .filter(|n| n != "origin")
        .collect();
    assert_eq!(in_status, expected);
    for name in &expected {
        assert_prefix_state(
            name,
            &std::fs::read(s.file(name)).unwrap(),
            &initial,
            written,
        );
    }
    assert_eq!(s.unmount(), 0, "{}", s.log());
    check_race_cows(&sent, &origin);
    report("racing control commands", sent.len());
}

/// Checks each answer against its command; returns the names left attached.
fn check_race_answers(sent: &[Sent]) -> BTreeSet<String> {
    let mut balance: BTreeMap<String, i64> = BTreeMap::new();
    for c in sent {
        let words: Vec<&str> = c.command.split(' ').collect();
        match (words.as_slice(), c.errno) {
            (["snapshot", name, ..], None) if c.cow.is_some() => {
                *balance.entry(name.to_string()).or_default() += 1
            }
            (["drop", name], None) => *balance.entry(name.to_string()).or_default() -= 1,
            (["snapshot" | "drop", ..], Some(e)) => assert_eq!(e, libc::EINVAL, "{c:?}"),
            (["merge", ..], e) => {
                assert!(matches!(e, Some(libc::EBUSY) | Some(libc::EINVAL)), "{c:?}")
            }
            (["help"], e) => assert_eq!(e, None, "{c:?}"),
            (_, e) => assert_eq!(e, Some(libc::EINVAL), "{c:?}"),
        }
    }
    for (name, b) in &balance {
        assert!((0..=1).contains(b), "{name}: attaches minus drops = {b}");
    }
    balance
        .into_iter()
        .filter(|(_, b)| *b == 1)
        .map(|(n, _)| n)
        .collect()
}

/// After unmount: a COW whose attach failed is still all zero; every other one loads as a
/// valid store.
fn check_race_cows(sent: &[Sent], origin: &Path) {
    for c in sent {
        let Some(cow) = &c.cow else { continue };
        if c.errno.is_some() {
            let bytes = std::fs::read(cow).unwrap();
            assert!(
                bytes.iter().all(|&b| b == 0),
                "{c:?}: a refused COW was written"
            );
            continue;
        }
        let open = |p: &Path| Arc::new(FileDevice::open(p, OpenMode::ReadOnly).unwrap());
        let config = SnapshotConfig {
            name: "s".into(),
            cow: open(cow),
            kind: hostile_support::P,
            chunk_sectors: 0,
            features: Default::default(),
        };
        let ro = VolumeOptions {
            read_only: true,
            origin_discard: false,
            ..VolumeOptions::default()
        };
        let volume =
            Volume::open(open(origin), vec![config], ro).unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert!(!volume.snapshot("s").unwrap().is_invalid(), "{c:?}");
    }
}

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
