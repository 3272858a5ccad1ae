//! Merge pause and resume end to end (`pause NAME`, `resume NAME`, `snapfs merge --pause`,
//! `--resume`), across a remount; and `snapfs status` without a mount point: every snapfs
//! mount, a stopped daemon listed as not answering, an Invalid snapshot at 100 % used.

mod e2e_support;

use e2e_support::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// The `merge=LEFT/TOTAL` field of `name`'s detail line, and whether `paused` follows it.
fn merge_field(s: &Scratch, name: &str) -> Option<(u64, u64, bool)> {
    let text = std::fs::read_to_string(s.file("status")).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("#: snapshot {name} ")))?;
    let words: Vec<&str> = line.split(' ').collect();
    let at = words.iter().position(|w| w.starts_with("merge="))?;
    let (left, total) = words[at].strip_prefix("merge=")?.split_once('/')?;
    Some((
        left.parse().unwrap(),
        total.parse().unwrap(),
        words.get(at + 1) == Some(&"paused"),
    ))
}

fn einval(s: &Scratch, command: &str, reason: &str) {
    let (result, answer) = control(s, command);
    assert_eq!(
        result.unwrap_err().raw_os_error(),
        Some(libc::EINVAL),
        "{command}: {answer}"
    );
    assert!(answer.contains(reason), "{command}: {answer}");
}

fn origin_matches(s: &Scratch, model: &[u8], when: &str) {
    let got = std::fs::read(s.file("origin")).unwrap();
    assert_same(&format!("origin {when}"), &got, model);
}

#[test]
fn a_paused_merge_holds_across_a_remount_then_resumes() {
    let mut s = Scratch::new("pause-remount");
    let (origin, cow, other) = (s.path("origin.img"), s.path("big.cow"), s.path("other.cow"));
    let mut model = write_random_image(&origin, 16 * MIB, 21);
    sparse_file(&cow, 32 * MIB);
    sparse_file(&other, 32 * MIB);
    // One-sector chunks: 32768 exceptions merged in runs of at most 32, so the merge is still
    // running when the pause comes.
    let specs = [
        format!("snapshot=big:{}:P:1", cow.display()),
        format!("snapshot=other:{}:P:8", other.display()),
    ];
    let opts: Vec<&str> = specs.iter().map(String::as_str).collect();
    s.mount_daemon(&origin, &opts, &[]);
    {
        let mut f = open_rw(&s.file("origin"));
        let mut rng = Rng(22);
        for _ in 0..16 {
            f.write_all(&rng.bytes(MIB)).unwrap();
        }
        f.sync_all().unwrap();
    }
    let (started, answer) = control(&s, "merge big");
    started.unwrap_or_else(|e| panic!("merge: {e}: {answer}"));
    let (paused, answer) = control(&s, "pause big");
    paused.unwrap_or_else(|e| panic!("pause: {e}: {answer}"));
    assert!(answer.starts_with("ok merge of big paused"), "{answer}");
    let (left, total, flag) = merge_field(&s, "big").expect("merge field");
    assert!(flag, "the detail line says paused");
    assert!(left > 0 && left <= total, "{left}/{total}");
    origin_matches(&s, &model, "right after the pause");

    // Held: nothing moves; the origin takes writes.
    let patch = Rng(23).bytes(MIB + 4096);
    std::os::unix::fs::FileExt::write_all_at(&open_rw(&s.file("origin")), &patch, 3 * MIB + 512)
        .unwrap();
    model[3 * MIB as usize + 512..][..patch.len()].copy_from_slice(&patch);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(merge_field(&s, "big").unwrap().0, left, "no chunk moved");
    origin_matches(&s, &model, "after a write while paused");

    // Errors, with the reasons readable.
    einval(&s, "pause big", "already paused");
    einval(&s, "pause other", "not merging");
    einval(&s, "resume other", "not merging");
    einval(&s, "resume nope", "no snapshot named nope");
    einval(&s, "pause a/b", "");
    let mnt = s.mnt.display().to_string();
    let out = snapfs(&["merge", &mnt, "big", "--pause"]);
    assert!(!out.status.success(), "a second pause fails");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already paused"),
        "{out:?}"
    );
    let out = snapfs(&["merge", &mnt, "other", "--resume"]);
    assert!(
        !out.status.success(),
        "resume of a snapshot that is not merging"
    );

    // The tools show it.
    let json: Value = serde_json::from_str(&snapfs_ok(&["status", &mnt, "--json"])).unwrap();
    let big = json["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "big")
        .unwrap()
        .clone();
    assert_eq!(big["paused"], true, "{big}");
    assert_eq!(big["merge"]["paused"], true, "{big}");
    assert_eq!(big["state"], "merging");
    let table = snapfs_ok(&["status", &mnt]);
    let row = table.lines().find(|l| l.starts_with("big ")).unwrap();
    assert!(row.contains("paused"), "{table}");

    // Across a remount, the pause holds.
    assert_eq!(s.unmount(), 0, "{}", s.log());
    s.mount_daemon(&origin, &opts, &[]);
    let (left2, _, flag) = merge_field(&s, "big").expect("still merging after the remount");
    assert!(
        flag && left2 == left,
        "paused at {left} chunks, now {left2}"
    );
    origin_matches(&s, &model, "after the remount, paused");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(merge_field(&s, "big").unwrap().0, left, "no chunk moved");

    // --resume --wait completes it.
    let out = snapfs_ok(&["merge", &mnt, "big", "--resume", "--wait"]);
    assert!(out.contains("ok merge of big resumed"), "{out}");
    assert!(out.contains("merge of big complete"), "{out}");
    assert!(merge_field(&s, "big").is_none());
    origin_matches(&s, &model, "after the merge");
    assert_eq!(s.unmount(), 0, "{}", s.log());
    let mut header = [0u8; 32];
    std::fs::File::open(&cow)
        .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut header, 0))
        .unwrap();
    assert_eq!(&header[16..32], &[0; 16], "marker and flags cleared");
}

/// Runs `snapfs status [--json]` (no mount point); it must return within `secs`.
fn status_all(json: bool, secs: u64) -> String {
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("status");
    if json {
        cmd.arg("--json");
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("snapfs status did not return within {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn canonical(p: &Path) -> String {
    p.canonicalize().unwrap().display().to_string()
}

fn object_for<'a>(list: &'a Value, mnt: &str) -> &'a Value {
    list.as_array()
        .expect("an array of mounts")
        .iter()
        .find(|v| v["mountpoint"] == mnt)
        .unwrap_or_else(|| panic!("{mnt} not listed: {list}"))
}

#[test]
fn status_lists_every_mount_and_a_stopped_one() {
    let mut a = Scratch::new("status-all-a");
    let mut b = Scratch::new("status-all-b");
    let (origin_a, cow_a) = (a.path("origin.img"), a.path("a.cow"));
    write_random_image(&origin_a, 4 * MIB, 31);
    sparse_file(&cow_a, 8 * MIB);
    a.mount_daemon(
        &origin_a,
        &[&format!("snapshot=keep:{}:P:8", cow_a.display())],
        &[],
    );
    let (origin_b, cow_b) = (b.path("origin.img"), b.path("small.cow"));
    write_random_image(&origin_b, 8 * MIB, 32);
    sparse_file(&cow_b, MIB);
    b.mount_daemon(
        &origin_b,
        &[&format!("snapshot=small:{}:P:8", cow_b.display())],
        &[],
    );
    // b's snapshot fills up and turns Invalid.
    std::os::unix::fs::FileExt::write_all_at(
        &open_rw(&b.file("origin")),
        &Rng(33).bytes(4 * MIB),
        0,
    )
    .unwrap();
    assert!(
        status(&b)
            .iter()
            .any(|l| l.0 == "small" && l.4 == ["Invalid"]),
        "{:?}",
        status(&b)
    );
    let (ma, mb) = (canonical(&a.mnt), canonical(&b.mnt));

    let table = status_all(false, 20);
    assert!(table.contains(&format!(" on {ma}: ")), "{table}");
    assert!(table.contains(&format!(" on {mb}: ")), "{table}");
    let small = table.lines().find(|l| l.starts_with("small ")).unwrap();
    assert!(
        small.contains("invalid") && small.contains("100.00%"),
        "Invalid shows 100%, as lvs: {table}"
    );
    let list: Value = serde_json::from_str(&status_all(true, 20)).unwrap();
    assert_eq!(object_for(&list, &ma)["snapshots"][0]["name"], "keep");
    let sb = &object_for(&list, &mb)["snapshots"][0];
    assert_eq!(sb["state"], "invalid");
    assert_eq!(sb["cow_used_percent"], 100.0);
    // The same objects as `snapfs status MNT --json`.
    let one: Value = serde_json::from_str(&snapfs_ok(&["status", &ma, "--json"])).unwrap();
    assert_eq!(object_for(&list, &ma), &one);

    // A stopped daemon is listed as not answering; the command does not hang.
    let pid = b.server_pid();
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = Instant::now();
    let table = status_all(false, 15);
    let list = status_all(true, 15);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let took = started.elapsed();
    assert!(
        table.contains(&format!("snapfs on {mb}: not answering")),
        "{table}"
    );
    assert!(table.contains(&format!(" on {ma}: ")), "{table}");
    let list: Value = serde_json::from_str(&list).unwrap();
    let err = object_for(&list, &mb)["error"].as_str().unwrap();
    assert!(err.starts_with("not answering"), "{err}");
    assert_eq!(object_for(&list, &ma)["snapshots"][0]["name"], "keep");
    eprintln!("two `snapfs status` runs with a stopped daemon took {took:?}");
    assert_eq!(a.unmount(), 0, "{}", a.log());
    assert_eq!(b.unmount(), 0, "{}", b.log());
    let table = status_all(false, 20);
    assert!(!table.contains(&ma) && !table.contains(&mb), "{table}");
}
