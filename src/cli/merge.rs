//! `snapfs merge MNT NAME [--wait | --pause | --resume [--wait]]`: start merging a snapshot
//! into the origin (or pause / resume its merge); with `--wait`, follow `MNT/status` with a
//! progress bar until the merge is done.

use super::client::Mount;
use super::status::merge_done;
use snapfs::options::check_snapshot_name;
use snapfs::status::SnapshotState;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub const ABOUT: &str = "\
Merge a snapshot back into the origin: the origin becomes what the snapshot shows (a roll-back),
at once for every reader, while the chunks are copied back in the background. It is the
kernel's snapshot-merge: online, and crash-safe (an interrupted merge resumes at the next
mount). When it completes, the snapshot is detached and its COW is an empty store.

Nothing may use the origin or the snapshot file while the merge starts (a filesystem on the
origin would see its blocks change under it): unmount it and detach its loop device first,
otherwise the merge is refused with EBUSY (docs/troubleshooting.md).

--wait shows a progress bar (chunks, rate, time left) until the merge is done, and fails if it
fails. Ctrl-C stops the waiting, not the merge. The same as: echo \"merge NAME\" > MNT/control.

--pause stops the copying after its current step: the origin keeps reading as the snapshot and
stays writable, and the pause is kept across unmount and mount until --resume (with --wait,
follows the resumed merge). The same as: echo \"pause NAME\" (\"resume NAME\") > MNT/control.";

pub const EXAMPLES: &str = "\
Examples:
  umount /data && losetup -d /dev/loop0
  snapfs merge /srv/data-vol nightly --wait
  snapfs merge /srv/data-vol nightly && watch snapfs status /srv/data-vol
  snapfs merge /srv/data-vol nightly --pause
  snapfs merge /srv/data-vol nightly --resume --wait";

/// How often `--wait` reads the status file.
const POLL: Duration = Duration::from_millis(200);
/// Without a terminal, one progress line per this interval (logs stay short).
const LINE_INTERVAL: Duration = Duration::from_secs(2);
const BAR_WIDTH: usize = 30;

#[derive(clap::Args)]
pub struct Args {
    /// The snapfs mountpoint
    mountpoint: PathBuf,
    /// The snapshot to merge
    name: String,
    /// Wait for the merge to complete, with a progress bar
    #[arg(long, conflicts_with = "pause")]
    wait: bool,
    /// Pause the merge of NAME (the merged view holds; kept across mounts until --resume)
    #[arg(long, conflicts_with = "resume")]
    pause: bool,
    /// Resume the paused merge of NAME
    #[arg(long)]
    resume: bool,
}

pub fn run(args: Args) -> Result<(), String> {
    check_snapshot_name(&args.name)?;
    let mount = Mount::open(&args.mountpoint)?;
    let verb = if args.pause {
        "pause"
    } else if args.resume {
        "resume"
    } else {
        "merge"
    };
    let answer = mount
        .command(&format!("{verb} {}", args.name))
        .map_err(|why| format!("{verb} {}: {why}", args.name))?;
    println!("{}", answer.ok);
    if args.wait {
        wait(&mount, &args.name)?;
    }
    Ok(())
}

/// One sample of a merge's progress.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    left: u64,
    total: u64,
}

fn wait(mount: &Mount, name: &str) -> Result<(), String> {
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut first: Option<Sample> = None;
    let mut last_line = started;
    loop {
        let report = mount.status()?;
        let Some(snap) = report.snapshots.iter().find(|s| s.name == name) else {
            // The merged snapshot is detached when the merge completes.
            finish_line(tty);
            let chunks = first.map(|s| s.total).unwrap_or(0);
            let secs = started.elapsed().as_secs_f64();
            println!("merge of {name} complete: {chunks} chunks in {secs:.1} s");
            return Ok(());
        };
        match snap.state {
            SnapshotState::MergeFailed | SnapshotState::Invalid => {
                finish_line(tty);
                return Err(format!(
                    "merge of {name} failed ({}); see the daemon's log and docs/troubleshooting.md",
                    snap.word
                ));
            }
            _ if snap.merge_paused => {
                finish_line(tty);
                return Err(format!(
                    "merge of {name} is paused; snapfs merge MNT {name} --resume continues it"
                ));
            }
            _ => {}
        }
        if let Some((left, total)) = snap.merge {
            let now = Sample {
                at: Instant::now(),
                left,
                total,
            };
            let base = *first.get_or_insert(now);
            if tty {
                eprint!("\r{}\x1b[K", progress_line(name, base, now));
            } else if now.at.duration_since(last_line) >= LINE_INTERVAL {
                eprintln!("{}", progress_line(name, base, now));
                last_line = now.at;
            }
        }
        std::thread::sleep(POLL);
    }
}

fn finish_line(tty: bool) {
    if tty {
        eprintln!();
    }
    let _ = std::io::stderr().flush();
}

/// `merging NAME [#####.....]  45.0%  1234/2741 chunks  820 chunks/s  0:02 left`; the rate is
/// measured since the first sample.
fn progress_line(name: &str, first: Sample, now: Sample) -> String {
    let done = now.total - now.left;
    let pct = merge_done(now.left, now.total);
    let filled = ((pct / 100.0) * BAR_WIDTH as f64).round() as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(filled),
        ".".repeat(BAR_WIDTH - filled.min(BAR_WIDTH))
    );
    let secs = now.at.duration_since(first.at).as_secs_f64();
    let merged_since = first.left.saturating_sub(now.left);
    let (rate, eta) = if secs > 0.0 && merged_since > 0 {
        let rate = merged_since as f64 / secs;
        (format!("{rate:.0} chunks/s"), clock(now.left as f64 / rate))
    } else {
        ("- chunks/s".to_string(), "-:--".to_string())
    };
    format!(
        "merging {name} [{bar}] {pct:5.1}%  {done}/{} chunks  {rate}  {eta} left",
        now.total
    )
}

/// `m:ss`.
fn clock(secs: f64) -> String {
    let s = secs.ceil() as u64;
    format!("{}:{:02}", s / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        let t0 = Instant::now();
        let first = Sample {
            at: t0,
            left: 1000,
            total: 1000,
        };
        let now = Sample {
            at: t0 + Duration::from_secs(2),
            left: 600,
            total: 1000,
        };
        let line = progress_line("nightly", first, now);
        assert_eq!(
            line,
            "merging nightly [############..................]  40.0%  400/1000 chunks  200 chunks/s  0:03 left"
        );
        let start = progress_line("n", first, first);
        assert!(
            start.contains("0.0%") && start.contains("- chunks/s") && start.contains("-:-- left"),
            "{start}"
        );
        assert_eq!(clock(61.2), "1:02");
    }
}
