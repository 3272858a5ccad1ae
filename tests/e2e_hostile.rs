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

#[path = "e2e_hostile/access.rs"]
mod access;
#[path = "e2e_hostile/control.rs"]
mod control;
#[path = "e2e_hostile/races.rs"]
mod races;

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
