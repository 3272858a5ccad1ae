//! `snapfs backup MNT --to IMAGE`: a rotating incremental backup of the volume into a plain
//! image. Each run: decide from the image's marker (`snapfs::backup::plan`), drop what a dead
//! run left attached, mark the image incomplete (durably), take snapshot NEW, copy into the
//! image what the old base lists as changed (or everything), read from NEW, fsync the image,
//! mark it complete with NEW, drop the old base. docs/backup.md says why each step is where it
//! is.

use super::backup_image::{Image, stamp_of};
use super::client::Mount;
use super::sizes::{human, parse_size};
use super::snapshot::control_path;
use snapfs::backup::copy::{Options, copy_ranges};
use snapfs::backup::marker::{Marker, SnapRef, State};
use snapfs::backup::plan::{Attached, Copy, Facts, plan};
use snapfs::backup::{default_cow_bytes, snapshot_name};
use snapfs::features::{BackupId, SnapshotFeatures};
use snapfs::status::{Report, SnapshotState};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

pub const ABOUT: &str = "\
A rotating incremental backup of the volume into IMAGE, a plain image of it (a file or a block
device) that can be loop-mounted or copied back as it is.

The first run takes a snapshot (freezing the file systems on the origin, as snapfs snapshot
does) and copies all of it into IMAGE. Each later run takes a new snapshot NEW, copies into
IMAGE only the ranges the previous base lists as changed (snapfs changes), read from NEW (never
from the moving origin), fsyncs IMAGE, marks it as holding NEW, and drops the old base (its COW
file is removed). The base is a snapshot in the mount's registry (-o registry= is required),
carrying its identity as the feature word backup=ID.

IMAGE carries a marker beside it, IMAGE.snapfs-backup (for a block device, a file in the
registry's directory; --marker puts it elsewhere): it says which snapshot IMAGE holds. It is
marked incomplete before the first byte is copied and complete only after the data is
fsynced. A run that finds IMAGE incomplete (a killed run, a full disk) finishes it: from the
recorded base's changes when that base is still usable, else with a full copy, and says so.
An IMAGE that is not this volume's (no marker, another volume, the wrong size, a base the
mount does not have) is refused unless --full; an IMAGE written since its last backup (a
read-write mount) gets a full copy.

COWs of the backup snapshots go to --cow-dir (default: the registry's directory), named
NAME.cow, sparse, sized to hold every chunk of the volume (so a base never fills up; it takes
host space only for what changes); --cow-size sets another size. Snapshots are named
backup-YYYYMMDDTHHMMSSZ (UTC).

A progress bar is drawn on stderr when it is a terminal. --json prints
{\"snapshot\", \"copied_bytes\", \"volume_bytes\", \"seconds\"} on stdout (notes go to stderr).";

pub const EXAMPLES: &str = "\
Examples:
  snapfs backup /srv/data-vol --to /backup/data.img
  snapfs backup /srv/data-vol --to /dev/vg/data-backup --full
  snapfs backup /srv/data-vol --to /backup/data.img --cow-dir /var/lib/vols --json
  # nightly, from cron:
  30 2 * * * root snapfs backup /srv/data-vol --to /backup/data.img --json >> /var/log/backup.json";

#[derive(clap::Args)]
pub struct Args {
    /// The snapfs mountpoint
    mountpoint: PathBuf,
    /// The backup image: a file (created if missing) or a block device
    #[arg(long, value_name = "IMAGE")]
    to: PathBuf,
    /// Where the backup snapshots' COW files go (default: the registry's directory)
    #[arg(long, value_name = "DIR")]
    cow_dir: Option<PathBuf>,
    /// Size of a new backup snapshot's COW (default: room for every chunk of the volume)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    cow_size: Option<u64>,
    /// The marker file (default: IMAGE.snapfs-backup; for a block device, in the registry's
    /// directory)
    #[arg(long, value_name = "PATH")]
    marker: Option<PathBuf>,
    /// Copy everything, also over an image that is not a backup of this volume
    #[arg(long)]
    full: bool,
    /// Copy at most this many bytes a second (e.g. 50M)
    #[arg(long, value_name = "RATE", value_parser = snapfs::units::parse_bytes)]
    bwlimit: Option<u64>,
    /// Do not freeze the file systems on the origin while the snapshot is taken
    #[arg(long)]
    no_freeze: bool,
    /// Print {"snapshot", "copied_bytes", "volume_bytes", "seconds"}
    #[arg(long)]
    json: bool,
}

const CHOOSE_COW_DIR: &str = "choose another --cow-dir (the default is the registry's directory)";

/// Chunk size of backup snapshots: the kernel's default, 16 KiB.
const CHUNK_SECTORS: u64 = 32;

pub fn run(args: Args) -> Result<(), String> {
    let started = Instant::now();
    let mount = Mount::open(&args.mountpoint)?;
    let report = mount.status()?;
    if report.read_only {
        return Err(format!(
            "{} is mounted read-only: no snapshot can be taken",
            mount.dir().display()
        ));
    }
    let registry = PathBuf::from(report.registry.clone().ok_or_else(|| {
        format!(
            "{} has no registry: a backup's base snapshot must be recorded to survive a \
             remount; mount with -o registry=PATH",
            mount.dir().display()
        )
    })?);
    let volume_bytes = report.origin_sectors * 512;
    let reg_dir = registry.parent().unwrap_or(Path::new("/")).to_path_buf();
    let cow_dir = match &args.cow_dir {
        Some(d) => std::path::absolute(d).map_err(|e| format!("{}: {e}", d.display()))?,
        None => reg_dir.clone(),
    };
    // Checked again on each COW path, but here before anything is created or said.
    control_path(&cow_dir, CHOOSE_COW_DIR)?;
    if !cow_dir.is_dir() {
        return Err(format!(
            "--cow-dir {} is not a directory",
            cow_dir.display()
        ));
    }
    let marker_arg = match &args.marker {
        Some(p) => {
            Some(std::path::absolute(p).map_err(|e| format!("--marker {}: {e}", p.display()))?)
        }
        None => None,
    };
    // Every check that needs no image comes before it is opened (and maybe created).
    let image = Image::open(&args.to, volume_bytes, &mount, &report)?;
    let marker_path = marker_arg.unwrap_or_else(|| image.default_marker(&reg_dir));
    let say = |line: String| {
        if args.json {
            to_stderr(&line);
        } else {
            to_stdout(&line);
        }
    };
    if let Err(why) = Marker::may_replace(&marker_path) {
        image.undo_new();
        return Err(why);
    }
    let previous_marker = Marker::load(&marker_path);
    let snapshots = attached(&report);
    let facts = Facts {
        registry: &registry,
        volume_bytes,
        image_new: image.new,
        image_unwritten: image.unwritten,
        size_problem: image.size_problem(volume_bytes),
        stamp: stamp_of(&image.file, image.is_file, image.size.min(volume_bytes))?,
        snapshots: &snapshots,
        full: args.full,
        marker_path: &marker_path,
    };
    // Until the copy begins, a failure leaves a new image as it was found.
    let before_copy = |why: String| {
        image.undo_new();
        why
    };
    let plan = plan(previous_marker.clone(), &facts)
        .map_err(|why| before_copy(format!("{}: {why}", args.to.display())))?;
    if let Some(note) = &plan.note {
        say(format!("{}: {note}", args.to.display()));
    }
    for r in &plan.cleanup {
        say(drop_backup(&mount, r, "left by an interrupted run").map_err(before_copy)?);
    }
    // The new snapshot's name, identity and COW.
    let base = match &plan.copy {
        Copy::Changes(b) => Some(b.clone()),
        Copy::Full => None,
    };
    let cow_bytes = args
        .cow_size
        .unwrap_or(default_cow_bytes(volume_bytes, CHUNK_SECTORS * 512));
    // Another run of this mount (onto another image) may choose the same name in the same
    // second: whoever creates the COW file or attaches the name first has it, the other
    // chooses the next name.
    let mut lost: Vec<String> = Vec::new();
    let (new, report) = loop {
        let report = mount.status().map_err(before_copy)?;
        let new = SnapRef {
            name: new_name(&report, &cow_dir, previous_marker.as_ref().ok(), &lost),
            id: BackupId::random().map_err(|e| before_copy(format!("no random identity: {e}")))?,
        };
        // Durable before the first byte is copied (and before the snapshot exists, so that a
        // run dying after taking it finds it named here and drops it).
        Marker {
            state: State::Incomplete,
            registry: registry.clone(),
            volume_bytes,
            origin: PathBuf::from(report.origin_device.clone().unwrap_or_default()),
            base: base.clone(),
            attempt: Some(new.clone()),
            previous: None,
            stamp: None,
        }
        .save(&marker_path)
        .map_err(|e| {
            before_copy(format!(
                "cannot write the backup marker {}: {e}",
                marker_path.display()
            ))
        })?;
        let cow = cow_dir.join(format!("{}.cow", new.name));
        let why = match take_snapshot(&mount, &new, &cow, cow_bytes, args.no_freeze, &say) {
            Ok(()) => break (new, report),
            Err(Taken::NameLost) if lost.len() < NAME_TRIES => {
                lost.push(new.name);
                continue;
            }
            Err(Taken::NameLost) => format!(
                "snapshot {}: the name was taken by another run {NAME_TRIES} times over",
                new.name
            ),
            Err(Taken::Failed(why)) => why,
        };
        // Nothing was copied: the image is what the old marker said.
        match &previous_marker {
            Ok(Some(m)) => m.save(&marker_path).map_err(|e| e.to_string())?,
            _ => std::fs::remove_file(&marker_path).map_err(|e| e.to_string())?,
        }
        return Err(before_copy(why));
    };
    let name = new.name.clone();
    if image.is_file && facts.size_problem.is_some() {
        // --full over an image of another size: it becomes the volume's size.
        image
            .file
            .set_len(volume_bytes)
            .map_err(|e| format!("{}: {e}", args.to.display()))?;
    }
    // From here on the marker says incomplete: every failure is finished by the next run.
    let unfinished =
        |why: String| format!("{why}; the image is marked incomplete and the next run finishes it");
    let ranges = match &base {
        Some(b) => mount
            .changes(&b.name)
            .map_err(|why| unfinished(format!("changes of base {}: {why}", b.name)))?
            .byte_ranges(Some(volume_bytes)),
        None => vec![(0, volume_bytes)],
    };
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    let source = std::fs::File::open(mount.dir().join(&name))
        .map_err(|e| unfinished(format!("{}: {e}", mount.dir().join(&name).display())))?;
    let mut bar = Bar::new(&name, total);
    let options = Options {
        punch_zeroes: image.is_file,
        bytes_per_second: args.bwlimit,
    };
    let copied = copy_ranges(&source, &image.file, &ranges, &options, &mut |d| {
        bar.show(d)
    })
    .and_then(|n| {
        image
            .file
            .sync_all()
            .map_err(|e| format!("flushing the image: {e}"))?;
        Ok(n)
    })
    .map_err(|why| {
        bar.end();
        unfinished(format!("{}: {why}", args.to.display()))
    })?;
    bar.end();
    Marker {
        state: State::Complete,
        registry,
        volume_bytes,
        origin: PathBuf::from(report.origin_device.clone().unwrap_or_default()),
        base: Some(new.clone()),
        attempt: None,
        previous: plan.retire.clone(),
        stamp: Some(stamp_of(&image.file, image.is_file, volume_bytes)?),
    }
    .save(&marker_path)
    .map_err(|e| {
        format!(
            "cannot mark {} complete ({}): {e}; the next run copies again",
            args.to.display(),
            marker_path.display()
        )
    })?;
    let what = match &base {
        Some(b) => format!("the {} ranges {} listed as changed", ranges.len(), b.name),
        None => "everything".to_string(),
    };
    say(format!(
        "copied {} of {} ({what}) from {name} into {} in {:.1} s; it holds {name} (marker {})",
        human(copied),
        human(volume_bytes),
        args.to.display(),
        started.elapsed().as_secs_f64(),
        marker_path.display()
    ));
    if let Some(old) = &plan.retire {
        match drop_backup(&mount, old, "the previous base") {
            Ok(line) => say(line),
            Err(why) => to_stderr(&format!("snapfs: WARNING: {why}; the next run drops it")),
        }
    }
    if args.json {
        // In the order (serde_json's maps sort their keys).
        let line = format!(
            "{{\"snapshot\": {}, \"copied_bytes\": {copied}, \"volume_bytes\": {volume_bytes}, \"seconds\": {:.3}}}",
            serde_json::Value::from(name.as_str()),
            started.elapsed().as_secs_f64()
        );
        if !to_stdout(&line) {
            to_stderr(&format!(
                "snapfs: WARNING: cannot print the result ({line}) on stdout; the backup is done"
            ));
        }
    }
    Ok(())
}

/// Prints a line on stdout; false if it could not be written. A reader that went away (a
/// `| tee` that died, a full log disk) never stops a run midway: println! would panic there,
/// between two steps of the backup.
fn to_stdout(line: &str) -> bool {
    writeln!(std::io::stdout().lock(), "{line}").is_ok()
}

/// [`to_stdout`] for stderr.
fn to_stderr(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// The mount's backup snapshots (and the others, without identity), as the plan sees them.
fn attached(report: &Report) -> Vec<Attached> {
    report
        .snapshots
        .iter()
        .map(|s| Attached {
            name: s.name.clone(),
            id: backup_id(s.features.as_deref()),
            // A transient store's table starts blank at each attach: it knows of no change
            // before it, whatever identity it carries.
            usable: matches!(s.state, SnapshotState::Active | SnapshotState::AlmostFull)
                && matches!(s.store.as_deref(), Some("P" | "PO")),
        })
        .collect()
}

fn backup_id(features: Option<&str>) -> Option<BackupId> {
    SnapshotFeatures::parse_field(features?).ok()?.backup
}

/// Creates the sparse COW and takes the snapshot with its identity; the COW is removed again
/// if the snapshot is not taken.
fn take_snapshot(
    mount: &Mount,
    new: &SnapRef,
    cow: &Path,
    cow_bytes: u64,
    no_freeze: bool,
    say: &dyn Fn(String),
) -> Result<(), Taken> {
    let shown = control_path(cow, CHOOSE_COW_DIR).map_err(Taken::Failed)?;
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(cow)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Taken::NameLost),
        Err(e) => return Err(Taken::Failed(format!("cannot create {shown}: {e}"))),
    };
    if let Err(e) = file.set_len(cow_bytes).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(cow);
        return Err(Taken::Failed(format!("cannot size {shown}: {e}")));
    }
    let mut command = format!(
        "snapshot {} {shown} P {CHUNK_SECTORS} backup={}",
        new.name, new.id
    );
    if no_freeze {
        command.push_str(" nofreeze");
    }
    match mount.command(&command) {
        Ok(answer) => {
            say(format!("snapshot {} taken ({shown})", new.name));
            for note in answer.notes {
                say(note);
            }
            for w in answer.warnings {
                to_stderr(&format!("snapfs: WARNING: {w}"));
            }
            Ok(())
        }
        Err(why) => {
            let _ = std::fs::remove_file(cow);
            // Attached meanwhile under this name by someone else (its identity is not ours).
            let lost = mount.status().is_ok_and(|r| {
                r.snapshots
                    .iter()
                    .any(|s| s.name == new.name && backup_id(s.features.as_deref()) != Some(new.id))
            });
            Err(if lost {
                Taken::NameLost
            } else {
                Taken::Failed(format!("snapshot {}: {why}", new.name))
            })
        }
    }
}

/// Why a snapshot was not taken.
enum Taken {
    /// Another run had the name first (its COW file, or the name attached): try the next one.
    NameLost,
    Failed(String),
}

/// How many names a run tries before it gives up.
const NAME_TRIES: usize = 8;

/// A name for the new backup snapshot: not attached, without a COW file in `cow_dir`, not one
/// the old marker uses (a dropped attempt of this same second: logs and outputs never show two
/// snapshots under one name, though identities tell them apart), not one this run lost.
fn new_name(
    report: &Report,
    cow_dir: &Path,
    marker: Option<&Option<Marker>>,
    lost: &[String],
) -> String {
    let named = |n: &str| {
        marker.and_then(Option::as_ref).is_some_and(|m| {
            [&m.base, &m.attempt, &m.previous]
                .into_iter()
                .flatten()
                .any(|r| r.name == n)
        })
    };
    snapshot_name(SystemTime::now(), |n| {
        report.snapshots.iter().any(|s| s.name == n)
            || cow_dir.join(format!("{n}.cow")).exists()
            || named(n)
            || lost.iter().any(|l| l == n)
    })
}

/// Drops backup snapshot `r` if the mount has it (same name and identity) and removes its COW
/// file; a line saying what was done.
fn drop_backup(mount: &Mount, r: &SnapRef, why: &str) -> Result<String, String> {
    let report = mount.status()?;
    let Some(s) = report
        .snapshots
        .iter()
        .find(|s| s.name == r.name && backup_id(s.features.as_deref()) == Some(r.id))
    else {
        return Ok(format!("snapshot {} ({why}) is gone already", r.name));
    };
    mount
        .command(&format!("drop {}", r.name))
        .map_err(|e| format!("drop {} ({why}): {e}", r.name))?;
    let cow = s.cow.as_deref().map(snapfs::escape::unescape_lenient);
    match cow.as_deref().map(Path::new) {
        Some(p) if p.is_file() => {
            std::fs::remove_file(p).map_err(|e| {
                format!("dropped {}, but cannot remove {}: {e}", r.name, p.display())
            })?;
            Ok(format!(
                "dropped {} ({why}) and removed {}",
                r.name,
                p.display()
            ))
        }
        _ => Ok(format!("dropped {} ({why})", r.name)),
    }
}

/// The progress bar: on stderr, only when it is a terminal, at most ten redraws a second.
struct Bar {
    tty: bool,
    name: String,
    total: u64,
    started: Instant,
    last: Option<Instant>,
}

impl Bar {
    fn new(name: &str, total: u64) -> Bar {
        Bar {
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            name: name.to_string(),
            total,
            started: Instant::now(),
            last: None,
        }
    }

    fn show(&mut self, done: u64) {
        if !self.tty
            || self.last.is_some_and(|t| t.elapsed().as_millis() < 100) && done < self.total
        {
            return;
        }
        self.last = Some(Instant::now());
        let fraction = if self.total == 0 {
            1.0
        } else {
            done as f64 / self.total as f64
        };
        let filled = (fraction * 30.0) as usize;
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[Kbackup {} [{}{}] {:5.1}%  {} of {}  {}/s",
            self.name,
            "#".repeat(filled),
            ".".repeat(30 - filled),
            fraction * 100.0,
            human(done),
            human(self.total),
            human(rate as u64)
        );
        let _ = err.flush();
    }

    fn end(&mut self) {
        if self.tty && self.last.is_some() {
            to_stderr("");
            self.last = None;
        }
    }
}
