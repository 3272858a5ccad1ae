//! Edges of the lifecycle features found by an outside attack: a notify hook and what it
//! starts are bounded by the timeout and by the daemon's exit, autoextend values read the same
//! everywhere and follow the size rule, options given twice are named as written, and `snapfs
//! status MNT` on a stopped daemon answers within its bound. Each test failed before its fix;
//! the comment on each says what happened then.

mod e2e_support;

use e2e_support::*;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An executable `/bin/sh` script at `s.path(name)`.
fn script(s: &Scratch, name: &str, body: &str) -> PathBuf {
    let path = s.path(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Pids of the processes whose command line contains `marker` as one argument.
fn processes_with(marker: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .rsplit(')')
            .next()
            .map(|r| r.trim_start().starts_with('Z'));
        if zombie != Some(true) && cmdline.split(|&b| b == 0).any(|a| a == marker.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

/// Kills whatever still runs with `marker` in its arguments (cleanup after a failed assert).
struct KillOnDrop(String);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let marked = processes_with(&self.0);
        let mut all = marked.clone();
        // Their children too (the `sleep` under a marked shell).
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let ppid = parent_of(&entry.path());
            if ppid.is_some_and(|p| marked.contains(&p)) {
                all.push(pid);
            }
        }
        for pid in all {
            // SAFETY: signalling a leftover process this test caused to be started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A marker unique to this test run, passed as an argument so the processes can be found.
fn marker(test: &str) -> String {
    format!("snapfs-attack-{}-{test}", std::process::id())
}

/// Mounts an origin with a small snapshot and `options`; writes enough origin chunks that the
/// snapshot crosses the 10 % warning level.
fn mount_and_cross_a_level(s: &mut Scratch, options: &[&str]) {
    let origin = s.path("origin.img");
    write_random_image(&origin, 8 * MIB, 71);
    let cow = s.path("w.cow");
    sparse_file(&cow, MIB);
    let snap = format!("snapshot=w:{}:P:8", cow.display());
    let log = format!("log={}", s.path("daemon.log").display());
    let mut all = vec![snap.as_str(), log.as_str(), "warn=10"];
    all.extend_from_slice(options);
    s.mount_daemon(&origin, &all, &[]);
    // 64 chunks of 4 KiB: a quarter of the 1 MiB COW.
    let data = Rng(72).bytes(64 * 4096);
    std::os::unix::fs::FileExt::write_all_at(&open_rw(&s.file("origin")), &data, 0).unwrap();
}

/// Was: the notify timeout kills only the hook's own process. A hook that hangs in a child
/// (`sleep` here; `lvextend` waiting on a lock in real life) is logged as "still running after
/// 10 s: killed", yet its child runs on, reparented to init, one more per event.
/// Should: the hook runs in its own process group and the timeout kills the whole group, as
/// `timeout(1)` and systemd do, so that "killed" is true.
#[test]
fn notify_timeout_kills_the_hooks_children_too() {
    let mut s = Scratch::new("attack-notify-group");
    let mark = marker("notify-group");
    let _cleanup = KillOnDrop(mark.clone());
    // The hook waits on a child (a shell that carries the marker and sleeps).
    let sleeper = script(&s, "sleeper.sh", "sleep 1000\n:\n");
    let hook = script(
        &s,
        "hang.sh",
        &format!(
            "echo started >> '{}'\n'{}' '{mark}'\n",
            s.path("hook.out").display(),
            sleeper.display()
        ),
    );
    let notify = format!("notify={}", hook.display());
    mount_and_cross_a_level(&mut s, &[&notify]);
    wait_for(10, "the hook to start", || s.path("hook.out").exists());
    wait_for(20, "the daemon to kill the hook after its 10 s", || {
        std::fs::read_to_string(s.path("daemon.log"))
            .unwrap_or_default()
            .contains("still running after 10 s: killed")
    });
    std::thread::sleep(Duration::from_millis(500));
    let left = processes_with(&mark);
    assert_eq!(s.unmount(), 0);
    assert!(
        left.is_empty(),
        "the log says the hook was killed, but its child still runs: pids {left:?}"
    );
}

/// Was: a hook still running when the mount goes away is left running for good: the daemon
/// exits without waiting for it or killing it, so the 10 s limit no longer holds for it.
/// Should: at exit the daemon kills (the group of) a hook that still runs, or waits for it
/// within its 10 s.
#[test]
fn notify_hook_does_not_outlive_the_daemon() {
    let mut s = Scratch::new("attack-notify-exit");
    let mark = marker("notify-exit");
    let _cleanup = KillOnDrop(mark.clone());
    // `exec`: the hook itself is the long-running process (no child involved).
    let hook = script(
        &s,
        "hang.sh",
        &format!(
            "echo started >> '{}'\nexec /bin/sh -c 'sleep 1000; :' '{mark}'\n",
            s.path("hook.out").display()
        ),
    );
    let notify = format!("notify={}", hook.display());
    mount_and_cross_a_level(&mut s, &[&notify]);
    wait_for(10, "the hook to start", || s.path("hook.out").exists());
    assert_eq!(s.unmount(), 0);
    // Well past the 10 s any hook may run.
    std::thread::sleep(Duration::from_secs(12));
    let left = processes_with(&mark);
    assert!(
        left.is_empty(),
        "the notify hook still runs 12 s after its daemon exited: pids {left:?}"
    );
}

/// Was: docs/cli.md (Feature words) says `/` between THRESHOLD, PERCENT and MAX "is read the
/// same everywhere", and the feature word takes it in `control`, `--autoextend` and the
/// registry, but the mount option `-o autoextend=70/20/10G` is refused ("wrong number of
/// fields"). The same value, two entry points, two answers.
/// Should: the mount option reads `/` as the feature word does (one parser).
#[test]
fn mount_option_autoextend_reads_the_slash_form() {
    let mut s = Scratch::new("attack-autoextend-slash");
    let origin = s.path("origin.img");
    sparse_file(&origin, 4 * MIB);
    let out = s
        .command(&origin, &["autoextend=70/20/10G"], false)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .output()
        .unwrap();
    let mounted = is_mounted(&s.mnt);
    if mounted {
        s.daemon = find_daemon(&s.mnt);
        assert_eq!(s.unmount(), 0);
    }
    assert!(
        out.status.success() && mounted,
        "-o autoextend=70/20/10G refused while snapshot=...:autoextend=70/20/10G, control's \
         autoextend=70/20/10G and --autoextend 70/20/10G take it: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Was: an option given twice is refused with Rust's debug notation of the values
/// (`Autoextend { threshold: 70, percent: 20, max_bytes: None }`, `WarnLevels([80])`) instead
/// of the values as the user wrote them.
/// Should: `option autoextend= is given twice (70:20 and 80:20): give it once`.
#[test]
fn twice_given_option_names_the_values_as_written() {
    let s = Scratch::new("attack-twice-message");
    let origin = s.path("origin.img");
    sparse_file(&origin, 4 * MIB);
    for (a, b) in [
        ("autoextend=70:20", "autoextend=80:20"),
        ("warn=80", "warn=90"),
    ] {
        let out = s
            .command(&origin, &[a, b], false)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{a} then {b} must be refused");
        assert!(!is_mounted(&s.mnt));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("{a:?} and {b:?}")),
            "both options as written: {err}"
        );
        for debug in ["Autoextend {", "max_bytes", "WarnLevels(", "None", "])"] {
            assert!(
                !err.contains(debug),
                "{a},{b}: the message shows Rust debug text {debug:?}: {err}"
            );
        }
    }
}

/// Was: `snapfs status` (every mount) lists a stopped daemon as "not answering" within 3 s,
/// but `snapfs status MNT` on that same mount waits for ever (and so does `snapfs status DIR`
/// on a stopped non-snapfs FUSE mount).
/// Should: the one-mount form has the same time limit and says the same thing (exit 1).
#[test]
fn status_of_one_stopped_mount_answers_within_seconds() {
    let mut s = Scratch::new("attack-status-stopped");
    let origin = s.path("origin.img");
    sparse_file(&origin, 4 * MIB);
    s.mount_daemon(&origin, &[], &[]);
    let pid = s.server_pid();
    // SAFETY: stopping the daemon this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut child = Command::new(BIN)
        .arg("status")
        .arg(&s.mnt)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut returned = false;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            returned = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !returned {
        let _ = child.kill();
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(s.unmount(), 0);
    assert!(
        returned,
        "snapfs status MNT on a stopped daemon did not return within 10 s (snapfs status \
         without MNT says `not answering` after 3 s)"
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not answering"),
        "{out:?}"
    );
}

/// Was: an autoextend MAX below one sector (`70:20:1`) or not a multiple of 512 (`70:20:513`)
/// is accepted, although `70:20:0` is refused as an invalid size and `--size 513` as "not a
/// multiple of 512 bytes". `70:20:1` gives a snapshot whose recorded autoextend can never do
/// anything ("reached the autoextend maximum of 1 bytes" in the log only); a MAX like
/// 5M+100 grows a COW file to 5242980 bytes, a size no block device has.
/// Should: MAX follows the one size rule (a positive multiple of 512), at every entry point.
#[test]
fn autoextend_max_follows_the_size_rule() {
    let mut s = Scratch::new("attack-autoextend-max");
    let origin = s.path("origin.img");
    sparse_file(&origin, 4 * MIB);
    s.mount_daemon(&origin, &[], &[]);
    let mnt = s.mnt.display().to_string();
    let mut accepted = Vec::new();
    for max in ["1", "513", "5242980"] {
        let cow = s.path(&format!("max{max}.cow"));
        let value = format!("70:20:{max}");
        let out = snapfs(&[
            "snapshot",
            &mnt,
            &format!("m{max}"),
            "--cow",
            cow.to_str().unwrap(),
            "--size",
            "1M",
            "--autoextend",
            &value,
        ]);
        if out.status.success() {
            accepted.push(format!("--autoextend {value}"));
        }
        let cow2 = s.path(&format!("c{max}.cow"));
        sparse_file(&cow2, MIB);
        let (result, answer) = control(
            &s,
            &format!("snapshot c{max} {} P 8 autoextend={value}", cow2.display()),
        );
        if result.is_ok() {
            accepted.push(format!("control autoextend={value}: {}", answer.trim()));
        }
    }
    assert_eq!(s.unmount(), 0);
    assert!(
        accepted.is_empty(),
        "MAX not a multiple of 512 accepted (0 is refused, --size 513 is refused): {accepted:#?}"
    );
}
