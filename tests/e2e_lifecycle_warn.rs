//! End-to-end tests of a snapshot's life as its COW fills (issue 14): usage warnings at the
//! `warn=` levels before the snapshot becomes Invalid, `notify=CMD` run once per level crossed
//! and once for the invalid event, and `autoextend=` keeping a COW file that would fill alive,
//! with its data checked against a model.

mod e2e_support;

use e2e_support::*;
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

const ORIGIN_BYTES: u64 = 8 * MIB;
const CHUNK: u64 = 4096;

/// A script that appends its four arguments, one line per run, to `out`.
fn notify_script(s: &Scratch) -> (PathBuf, PathBuf) {
    let out = s.path("notify.out");
    let script = s.path("notify.sh");
    std::fs::write(
        &script,
        format!("#!/bin/sh\necho \"$*\" >> '{}'\n", out.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, out)
}

/// `(allocated, total)` sectors of snapshot `name`, or `None` once it says Invalid.
fn usage(s: &Scratch, name: &str) -> Option<(u64, u64)> {
    let lines = status(s);
    let line = lines.iter().find(|l| l.0 == name).expect("snapshot line");
    let (a, t) = line.4[0].split_once('/')?;
    Some((a.parse().unwrap(), t.parse().unwrap()))
}

/// The `warning=` field of `name`'s detail line.
fn warning_field(s: &Scratch, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(s.file("status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("#: snapshot {name} ")))?;
    line.split(' ')
        .find_map(|w| w.strip_prefix("warning="))
        .map(|v| v.parse().unwrap())
}

/// Writes origin chunk `c` (new bytes, so it is copied out once) and syncs it.
fn write_chunk(origin: &File, model: &mut [u8], c: u64) {
    let data = vec![(c as u8) ^ 0xa5; CHUNK as usize];
    origin.write_all_at(&data, c * CHUNK).unwrap();
    model[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
}

fn notified(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn warnings_come_before_invalid_and_notify_runs_once_per_level() {
    let mut s = Scratch::new("lifecycle-warn");
    let origin = s.path("origin.img");
    let mut model = write_random_image(&origin, ORIGIN_BYTES, 14);
    let cow = s.path("s.cow");
    sparse_file(&cow, MIB);
    let (script, out) = notify_script(&s);
    let snap = format!("snapshot=s:{}:P:8", cow.display());
    let notify = format!("notify={}", script.display());
    s.mount_foreground(&origin, &[&snap, &notify], &[]);
    let f = open_rw(&s.file("origin"));
    let mnt = s.mnt.display().to_string();
    let mut next = 0;
    // Usage rises past each level in a step of its own; the status shows each level crossed.
    for (target, level) in [(82, 80), (87, 85), (92, 90), (97, 95)] {
        while let Some((a, t)) = usage(&s, "s") {
            if a * 100 >= target * t {
                break;
            }
            write_chunk(&f, &mut model, next);
            next += 1;
        }
        f.sync_data().unwrap();
        wait_for(10, &format!("warning={level}"), || {
            warning_field(&s, "s") == Some(level)
        });
        if level == 85 {
            let table = snapfs_ok(&["status", &mnt]);
            let row = table.lines().find(|l| l.starts_with("s ")).unwrap();
            assert!(row.contains("almost full"), "{table}");
            let json = snapfs_ok(&["status", &mnt, "--json"]);
            assert!(json.contains("\"warning_level\": 85"), "{json}");
            assert!(json.contains("\"state\": \"almost full\""), "{json}");
        }
    }
    assert!(usage(&s, "s").is_some(), "still valid at 97 %");
    // Then the COW fills: Invalid.
    while usage(&s, "s").is_some() {
        write_chunk(&f, &mut model, next);
        next += 1;
        assert!(next * CHUNK < ORIGIN_BYTES, "the COW never filled");
    }
    let want: Vec<String> = [80, 85, 90, 95]
        .iter()
        .map(|l| format!("{mnt} s {l} warning"))
        .chain([format!("{mnt} s 100 invalid")])
        .collect();
    wait_for(15, "the invalid event", || {
        notified(&out).len() >= want.len()
    });
    assert_eq!(
        notified(&out),
        want,
        "each level once, in order, then invalid"
    );
    // The log says the same, warnings first.
    let log = s.log();
    let at = |needle: &str| {
        log.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in the log:\n{log}"))
    };
    let positions: Vec<usize> = [80, 85, 90, 95]
        .iter()
        .map(|l| at(&format!("warning level {l}% crossed")))
        .collect();
    assert!(positions.is_sorted(), "{log}");
    assert!(positions[3] < at("Invalidating snapshot s"), "{log}");
    assert_eq!(log.matches("warning level 80% crossed").count(), 1);
    // The origin kept every write.
    let mut got = vec![0u8; ORIGIN_BYTES as usize];
    f.read_exact_at(&mut got, 0).unwrap();
    assert_same("origin", &got, &model);
    drop(f);
    assert_eq!(s.unmount(), 0);
}

#[test]
fn a_sharp_rise_warns_every_level_once_in_order() {
    let mut s = Scratch::new("lifecycle-sharp");
    let origin = s.path("origin.img");
    let mut model = write_random_image(&origin, ORIGIN_BYTES, 15);
    let cow = s.path("s.cow");
    sparse_file(&cow, MIB);
    let (script, out) = notify_script(&s);
    let snap = format!("snapshot=s:{}:P:8", cow.display());
    let notify = format!("notify={}", script.display());
    s.mount_foreground(&origin, &[&snap, &notify, "warn=50:75:90"], &[]);
    let f = open_rw(&s.file("origin"));
    // 96 % in one go, between two checks or across them: 50, 75, 90 once each, in order.
    let (a, t) = usage(&s, "s").unwrap();
    let chunks = (t * 96 / 100 - a).div_ceil(CHUNK / 512);
    for c in 0..chunks {
        write_chunk(&f, &mut model, c);
    }
    f.sync_data().unwrap();
    let (a, t) = usage(&s, "s").unwrap();
    assert!(a * 100 >= 96 * t && a < t, "{a}/{t}");
    let mnt = s.mnt.display().to_string();
    wait_for(15, "three warnings", || notified(&out).len() >= 3);
    std::thread::sleep(std::time::Duration::from_millis(2500)); // two more checks: nothing new
    assert_eq!(
        notified(&out),
        [50, 75, 90].map(|l| format!("{mnt} s {l} warning"))
    );
    assert_eq!(warning_field(&s, "s"), Some(90));
    drop(f);
    assert_eq!(s.unmount(), 0);
}

#[test]
fn autoextend_keeps_a_filling_cow_alive() {
    let mut s = Scratch::new("lifecycle-autoextend");
    let origin = s.path("origin.img");
    let before = write_random_image(&origin, ORIGIN_BYTES, 16);
    let mut model = before.clone();
    let cow = s.path("s.cow");
    sparse_file(&cow, MIB);
    let snap = format!("snapshot=s:{}:P:8", cow.display());
    s.mount_foreground(&origin, &[&snap, "autoextend=50:50:12M"], &[]);
    let f = open_rw(&s.file("origin"));
    // 6 MiB of copies into a 1 MiB COW, 128 KiB at a time; before each step the monitor has
    // had the time to act (usage back under 60 %).
    let steps = 6 * MIB / (128 << 10);
    let per_step = (128 << 10) / CHUNK;
    for step in 0..steps {
        wait_for(10, "the COW to grow", || {
            let (a, t) = usage(&s, "s").expect("still valid");
            a * 100 < 60 * t
        });
        for c in step * per_step..(step + 1) * per_step {
            write_chunk(&f, &mut model, c);
        }
        f.sync_data().unwrap();
    }
    let (a, t) = usage(&s, "s").expect("valid after 6 MiB of copies");
    assert!(a >= 6 * MIB / 512, "{a}/{t}");
    let grown = std::fs::metadata(&cow).unwrap().len();
    assert!(grown > 6 * MIB && grown <= 12 * MIB, "{grown}");
    assert_eq!(t, grown / 512, "the status total is the file's size");
    assert!(s.log().contains("extended from 1048576 to"), "{}", s.log());
    // The snapshot reads as the origin was, the origin as written.
    let mut got = vec![0u8; ORIGIN_BYTES as usize];
    File::open(s.file("s"))
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert_same("snapshot", &got, &before);
    f.read_exact_at(&mut got, 0).unwrap();
    assert_same("origin", &got, &model);
    drop(f);
    assert_eq!(s.unmount(), 0);
    // And after a remount the grown COW still holds it all.
    s.mount_foreground(&origin, &[&snap], &[]);
    File::open(s.file("s"))
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    assert_same("snapshot after remount", &got, &before);
    assert_eq!(s.unmount(), 0);
}
