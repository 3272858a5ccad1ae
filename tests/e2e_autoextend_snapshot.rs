//! End-to-end test of a snapshot's own autoextend (issue 14): `snapfs snapshot --autoextend`
//! on a mount without `-o autoextend=` keeps a 1 MiB COW file alive through 6 MiB of
//! copy-outs, the registry records it with the snapshot, status shows it, and after a remount
//! from the registry the snapshots autoextend still. Data is checked against a model.

mod e2e_support;

use e2e_support::*;
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const ORIGIN_BYTES: u64 = 8 * MIB;
const CHUNK: u64 = 4096;

fn write_chunk(origin: &File, model: &mut [u8], c: u64) {
    let data = vec![(c as u8) ^ 0x5a; CHUNK as usize];
    origin.write_all_at(&data, c * CHUNK).unwrap();
    model[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
}

/// `(allocated, total)` sectors of snapshot `name`; panics once it is Invalid.
fn usage(s: &Scratch, name: &str) -> (u64, u64) {
    let lines = status(s);
    let line = lines.iter().find(|l| l.0 == name).expect("snapshot line");
    let (a, t) = line.4[0]
        .split_once('/')
        .unwrap_or_else(|| panic!("snapshot {name} is {:?}", line.4));
    (a.parse().unwrap(), t.parse().unwrap())
}

/// Copies origin chunks `[from, to)` out, 128 KiB at a time, each step once the monitor has
/// had the time to act on every snapshot in `names` (usage under 60 %).
fn copy_out(s: &Scratch, f: &File, model: &mut [u8], from: u64, to: u64, names: &[&str]) {
    let per_step = (128 << 10) / CHUNK;
    let mut c = from;
    while c < to {
        for name in names {
            wait_for(10, "the COW to grow", || {
                let (a, t) = usage(s, name);
                a * 100 < 60 * t
            });
        }
        for chunk in c..(c + per_step).min(to) {
            write_chunk(f, model, chunk);
        }
        f.sync_data().unwrap();
        c += per_step;
    }
}

fn read_all(path: &Path) -> Vec<u8> {
    let mut got = vec![0u8; ORIGIN_BYTES as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut got, 0)
        .unwrap();
    got
}

fn detail_line(s: &Scratch, name: &str) -> String {
    let text = std::fs::read_to_string(s.file("status")).unwrap();
    text.lines()
        .find(|l| l.starts_with(&format!("#: snapshot {name} ")))
        .unwrap_or_else(|| panic!("no detail line for {name}: {text}"))
        .to_string()
}

#[test]
fn a_snapshots_own_autoextend_is_recorded_and_survives_a_remount() {
    let mut s = Scratch::new("autoextend-snapshot");
    let origin = s.path("origin.img");
    let before = write_random_image(&origin, ORIGIN_BYTES, 41);
    let mut model = before.clone();
    let registry = s.path("vol.reg");
    let reg_opt = format!("registry={}", registry.display());
    // No mount-wide autoextend: only the snapshot's own can grow its COW.
    s.mount_foreground(&origin, &[&reg_opt], &[]);
    let mnt = s.mnt.display().to_string();
    let cow = s.path("s.cow");
    let cow_text = cow.display().to_string();
    snapfs_ok(&[
        "snapshot",
        &mnt,
        "s",
        "--cow",
        &cow_text,
        "--size",
        "1M",
        "--chunk",
        "8",
        "--autoextend",
        "50:50:12M",
    ]);
    // Recorded with the snapshot, and shown.
    let recorded = std::fs::read_to_string(&registry).unwrap();
    assert!(
        recorded.contains(&format!("s {cow_text} P 8 autoextend=50:50:12M\n")),
        "{recorded}"
    );
    assert!(
        detail_line(&s, "s").contains(" features=autoextend=50:50:12M "),
        "{}",
        detail_line(&s, "s")
    );
    let json: Value = serde_json::from_str(&snapfs_ok(&["status", &mnt, "--json"])).unwrap();
    let js = &json["snapshots"][0];
    assert_eq!(js["name"], "s");
    assert_eq!(js["autoextend"], "50:50:12M");
    assert_eq!(js["features"], serde_json::json!(["autoextend=50:50:12M"]));
    // A bad value is refused by the client, before anything is created.
    let bad = snapfs(&[
        "snapshot",
        &mnt,
        "b",
        "--cow",
        &s.path("b.cow").display().to_string(),
        "--size",
        "1M",
        "--autoextend",
        "50",
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("autoextend"),
        "{bad:?}"
    );
    assert!(!s.path("b.cow").exists());

    // 6 MiB of copy-outs into the 1 MiB COW.
    let f = open_rw(&s.file("origin"));
    copy_out(&s, &f, &mut model, 0, 6 * MIB / CHUNK, &["s"]);
    let (a, t) = usage(&s, "s");
    assert!(a >= 6 * MIB / 512, "{a}/{t}");
    let grown = std::fs::metadata(&cow).unwrap().len();
    assert!(grown > 6 * MIB && grown <= 12 * MIB, "{grown}");
    assert_eq!(t, grown / 512, "the status total is the file's size");
    assert!(s.log().contains("extended from 1048576 to"), "{}", s.log());
    assert_same("snapshot s", &read_all(&s.file("s")), &before);
    assert_same("origin", &read_all(&s.file("origin")), &model);

    // A second snapshot, taken just before the remount, with nothing copied out yet: after
    // the remount it must grow from its registry line alone.
    let cow_t = s.path("t.cow");
    let cow_t_text = cow_t.display().to_string();
    let at_t = model.clone();
    snapfs_ok(&[
        "snapshot",
        &mnt,
        "t",
        "--cow",
        &cow_t_text,
        "--size",
        "1M",
        "--chunk",
        "8",
        "--autoextend",
        "50:100",
    ]);
    drop(f);
    assert_eq!(s.unmount(), 0);
    let recorded = std::fs::read_to_string(&registry).unwrap();
    assert!(
        recorded.contains(&format!("t {cow_t_text} P 8 autoextend=50:100\n")),
        "{recorded}"
    );

    // Remount: the snapshots come from the registry only.
    s.mount_foreground(&origin, &[&reg_opt], &[]);
    assert!(
        detail_line(&s, "s").contains(" attached=registry ")
            && detail_line(&s, "s").contains(" features=autoextend=50:50:12M "),
        "{}",
        detail_line(&s, "s")
    );
    assert_same("snapshot s after remount", &read_all(&s.file("s")), &before);
    // s is past its threshold at its MAX: its own autoextend is what says so.
    wait_for(10, "s's autoextend to reach its maximum", || {
        s.log()
            .contains("cannot grow: it reached the autoextend maximum of 12582912 bytes")
    });
    // The last 2 MiB: copy-outs to both, 2 MiB into t's 1 MiB COW.
    let f = open_rw(&s.file("origin"));
    copy_out(
        &s,
        &f,
        &mut model,
        6 * MIB / CHUNK,
        ORIGIN_BYTES / CHUNK,
        &["t"],
    );
    let (a, _) = usage(&s, "t");
    assert!(a >= 2 * MIB / 512, "{a}");
    let (a, _) = usage(&s, "s");
    assert!(a >= 8 * MIB / 512, "{a}");
    let grown_t = std::fs::metadata(&cow_t).unwrap().len();
    assert!(
        grown_t > 2 * MIB,
        "t's COW grew after the remount: {grown_t}"
    );
    assert_same("snapshot s", &read_all(&s.file("s")), &before);
    assert_same("snapshot t", &read_all(&s.file("t")), &at_t);
    assert_same("origin", &read_all(&s.file("origin")), &model);
    drop(f);
    assert_eq!(s.unmount(), 0);
    // And the registry still says so.
    let recorded = std::fs::read_to_string(&registry).unwrap();
    assert!(
        recorded.contains(" P 8 autoextend=50:50:12M\n"),
        "{recorded}"
    );
    assert!(recorded.contains(" P 8 autoextend=50:100\n"), "{recorded}");
}
