//! The notify runner: `notify=CMD MOUNTPOINT SNAPSHOT PERCENT EVENT` for each [`Event`] the
//! monitor finds, one at a time and in order, from a thread of its own, each bounded by
//! [`NOTIFY_TIMEOUT`] together with whatever it started (its own process group).

use super::{Event, NOTIFY_TIMEOUT};
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::{Duration, Instant};

/// Runs `notify=CMD MOUNTPOINT SNAPSHOT PERCENT EVENT` for each event, one at a time, from a
/// thread of its own.
pub struct Notifier {
    tx: Sender<Event>,
}

impl Notifier {
    pub fn spawn(command: PathBuf, mountpoint: PathBuf) -> std::io::Result<Notifier> {
        let (tx, rx) = channel::<Event>();
        std::thread::Builder::new()
            .name("snapfs-notify".to_string())
            .spawn(move || notify_loop(rx, &command, &mountpoint))?;
        Ok(Notifier { tx })
    }

    pub fn send(&self, event: Event) {
        let _ = self.tx.send(event);
    }
}

fn notify_loop(rx: Receiver<Event>, command: &Path, mountpoint: &Path) {
    for event in rx {
        let args: Vec<OsString> = vec![
            mountpoint.as_os_str().to_owned(),
            event.snapshot.clone().into(),
            event.percent.to_string().into(),
            event.kind.as_str().into(),
        ];
        match run_notify(command, &args, NOTIFY_TIMEOUT) {
            Ok(status) if status.success() => {}
            Ok(status) => log::warn!(
                "notify command {} for snapshot {} ({}) failed: {status}",
                command.display(),
                event.snapshot,
                event.kind.as_str()
            ),
            Err(e) => log::warn!(
                "notify command {} for snapshot {} ({}): {e}",
                command.display(),
                event.snapshot,
                event.kind.as_str()
            ),
        }
    }
}

/// The process group of the notify command running now, 0 for none: what
/// [`kill_running_notify`] ends when the daemon exits.
static RUNNING_GROUP: AtomicI32 = AtomicI32::new(0);

/// Runs `command args...` with no stdin or stdout (stderr goes to the daemon's log), killing
/// it after `timeout`. The command runs in a process group of its own, and the timeout kills
/// the whole group: a hook's `sleep` or `lvextend` cannot outlive it (as `timeout(1)` and
/// systemd end what a unit started).
pub fn run_notify(
    command: &Path,
    args: &[OsString],
    timeout: Duration,
) -> Result<ExitStatus, String> {
    let mut child = Command::new(command)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let group = child.id() as i32;
    RUNNING_GROUP.store(group, Ordering::Release);
    let start = Instant::now();
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if start.elapsed() >= timeout => {
                kill_group(group);
                let _ = child.wait();
                break Err(format!(
                    "still running after {} s: killed (with what it started)",
                    timeout.as_secs_f64()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => break Err(format!("cannot wait for it: {e}")),
        }
    };
    RUNNING_GROUP.store(0, Ordering::Release);
    outcome
}

/// Ends the notify command still running, with its process group: the daemon is exiting,
/// and a hook must not outlive it unbounded.
pub fn kill_running_notify() {
    let group = RUNNING_GROUP.swap(0, Ordering::AcqRel);
    if group > 0 {
        log::warn!("notify command still running at exit: killed (process group {group})");
        kill_group(group);
    }
}

fn kill_group(group: i32) {
    // SAFETY: kill with a negative pid signals the process group we created for the command.
    unsafe {
        libc::kill(-group, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_runs_fails_and_times_out() {
        let dir = std::env::temp_dir().join(format!("snapfs-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let args: Vec<OsString> = vec![out.clone().into(), "b".into()];
        let sh = Path::new("/bin/sh");
        let script = |text: &str| -> Vec<OsString> {
            let mut a: Vec<OsString> = vec!["-c".into(), text.into(), "sh".into()];
            a.extend(args.iter().cloned());
            a
        };
        let ok = run_notify(sh, &script("echo \"$2\" > \"$1\""), NOTIFY_TIMEOUT).unwrap();
        assert!(ok.success());
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "b\n");
        let failed = run_notify(sh, &script("exit 3"), NOTIFY_TIMEOUT).unwrap();
        assert_eq!(failed.code(), Some(3));
        let e = run_notify(sh, &script("sleep 30"), Duration::from_millis(200)).unwrap_err();
        assert!(e.contains("killed"), "{e}");
        assert!(run_notify(&dir.join("missing"), &[], NOTIFY_TIMEOUT).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
