//! The `control` file's commands: a pure parser and an executor over a [`Volume`].
//!
//! One write is one command: a single line (a trailing newline is allowed), at most
//! [`CONTROL_WRITE_MAX`] bytes, words separated by blanks:
//!
//! ```text
//! snapshot NAME COW [STORE [CHUNK]] [FEATURE...]
//!                                     attach a new snapshot now (COW: absolute path)
//! drop NAME                           detach a snapshot; its COW stays as it is
//! merge [NAME]                        merge a snapshot back into the origin
//! pause NAME                          pause NAME's merge (the merged view holds; kept across mounts)
//! resume NAME                         resume NAME's paused merge
//! changes NAME [FROM]                 the origin chunks that may differ from NAME, in pages
//! help                                list the commands
//! ```
//!
//! STORE is a kernel store word (`P`, `PO`, `N`; default `P`), CHUNK sectors or KiB (`8`,
//! `4k`; default: on-disk size or 32 sectors). FEATURE words (`discard_zeroes_cow`,
//! `discard_passdown_origin`, `autoextend=THRESHOLD:PERCENT[:MAX]`, `force`, `nofreeze`) come
//! last: see [`crate::features`]. Paths
//! with blanks cannot be given here.
//!
//! A `snapshot` freezes the file systems mounted from loop devices over the origin while it
//! attaches (see `crate::host::freeze`), unless `nofreeze` is given. Its answer has a line
//! per file system: `froze MNT (ext4 on /dev/loop3) in 30 ms, for 2 ms`, `left MNT (...) frozen: it was
//! frozen already`, or `not frozen: nofreeze`.

use crate::device::OpenMode;
use crate::features::{FEATURE_WORDS, FeatureWords};
use crate::options::{SnapshotSpec, check_snapshot_name, resolve_chunk};
use crate::registry::{Ledger, RegistryError};
use crate::store::StoreKind;
use crate::units::parse_chunk_sectors;
use crate::volume::Volume;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// Largest accepted write to `control`: a command is one short line.
pub const CONTROL_WRITE_MAX: usize = 4096;

/// What `help` answers.
pub const HELP: &str = "ok commands:
snapshot NAME COW [STORE [CHUNK]] [FEATURE...]
                                   attach a snapshot (COW: absolute path; STORE P, PO or N;
                                   CHUNK sectors or NNk; FEATURE discard_zeroes_cow,
                                   discard_passdown_origin, autoextend=THRESHOLD:PERCENT[:MAX]
                                   for the snapshot's own autoextension, force to format a COW
                                   that holds data, or nofreeze not to freeze the file systems
                                   on the origin while attaching)
drop NAME                          detach a snapshot (its COW is left as it is)
merge [NAME]                       merge a snapshot into the origin
pause NAME                         pause the merge of NAME (kept across mounts until resume)
resume NAME                        resume the paused merge of NAME
changes NAME [FROM]                the origin chunks that may differ from NAME (its exceptions)
                                   as runs FIRST COUNT, from chunk FROM on, at most 65536 runs;
                                   next= says where the next page starts
help                               this text";

/// Why a command was refused. The `control` write fails with `EINVAL`, or `EBUSY` for
/// [`CommandError::Busy`] (e.g. a merge already running); the reason is what `control` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Malformed, or not possible in this state (`EINVAL`).
    Invalid(String),
    /// The volume is busy with something that conflicts (`EBUSY`).
    Busy(String),
    /// The writer may not send this command (`EPERM`).
    Denied(String),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Invalid(why) | CommandError::Busy(why) | CommandError::Denied(why) => {
                f.write_str(why)
            }
        }
    }
}

/// The reasons of the checks a command shares with the other entry points (names, features,
/// chunk sizes, paths), which are one line of text each: the command is invalid.
impl From<String> for CommandError {
    fn from(why: String) -> CommandError {
        CommandError::Invalid(why)
    }
}

/// The registry could not record the change: the command did not happen.
impl From<RegistryError> for CommandError {
    fn from(e: RegistryError) -> CommandError {
        CommandError::Invalid(e.to_string())
    }
}

/// What a command runs against: the volume, the record of what it serves (the registry), and
/// what only the file layer knows.
pub struct Context<'a> {
    pub volume: &'a Arc<Volume>,
    pub ledger: &'a Ledger,
    /// Open handles the mount has on `origin` or on a snapshot's file (by name); 0 for unknown
    /// names.
    pub open_handles: &'a dyn Fn(&str) -> u64,
}

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `snapshot NAME COW [STORE [CHUNK]]`: attach a snapshot taken now.
    Snapshot(SnapshotSpec),
    /// `drop NAME`: detach a snapshot, leaving its COW as it is.
    Drop { name: String },
    /// `merge [NAME]`: merge a snapshot (the only one when no name is given) into the origin.
    Merge { name: Option<String> },
    /// `pause NAME`: pause the merge of NAME, durably.
    Pause { name: String },
    /// `resume NAME`: resume the paused merge of NAME.
    Resume { name: String },
    /// `changes NAME [FROM]`: a page of NAME's changed-chunk map (see [`crate::changes`]).
    Changes { name: String, from: u64 },
    /// `help`: list the commands.
    Help,
}

/// Parses one write to `control`. Errors are one line, for a person.
pub fn parse_command(input: &[u8]) -> Result<Command, CommandError> {
    if input.len() > CONTROL_WRITE_MAX {
        return Err(CommandError::Invalid(format!(
            "command too long ({} bytes; at most {CONTROL_WRITE_MAX})",
            input.len()
        )));
    }
    let text = std::str::from_utf8(input).map_err(|_| "command is not UTF-8".to_string())?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains(['\n', '\r']) {
        return Err(CommandError::Invalid("one command per write".to_string()));
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] => Err(CommandError::Invalid(
            "empty command (try: help)".to_string(),
        )),
        ["snapshot", name, cow, rest @ ..] => parse_snapshot(name, cow, rest),
        ["snapshot", ..] => Err(CommandError::Invalid(SNAPSHOT_USAGE.to_string())),
        ["drop", name] => {
            check_snapshot_name(name)?;
            Ok(Command::Drop {
                name: name.to_string(),
            })
        }
        ["drop", ..] => Err(CommandError::Invalid("usage: drop NAME".to_string())),
        ["merge"] => Ok(Command::Merge { name: None }),
        ["merge", name] => {
            check_snapshot_name(name)?;
            Ok(Command::Merge {
                name: Some(name.to_string()),
            })
        }
        ["merge", ..] => Err(CommandError::Invalid("usage: merge [NAME]".to_string())),
        ["pause", name] => {
            check_snapshot_name(name)?;
            Ok(Command::Pause {
                name: name.to_string(),
            })
        }
        ["pause", ..] => Err(CommandError::Invalid("usage: pause NAME".to_string())),
        ["resume", name] => {
            check_snapshot_name(name)?;
            Ok(Command::Resume {
                name: name.to_string(),
            })
        }
        ["resume", ..] => Err(CommandError::Invalid("usage: resume NAME".to_string())),
        ["changes", name, from @ ..] if from.len() <= 1 => {
            check_snapshot_name(name)?;
            let from = match from {
                [] => 0,
                [word] => word.parse::<u64>().map_err(|_| {
                    CommandError::Invalid(format!("changes: FROM {word:?} is not a chunk number"))
                })?,
                _ => unreachable!(),
            };
            Ok(Command::Changes {
                name: name.to_string(),
                from,
            })
        }
        ["changes", ..] => Err(CommandError::Invalid(
            "usage: changes NAME [FROM]".to_string(),
        )),
        ["help"] => Ok(Command::Help),
        ["help", ..] => Err(CommandError::Invalid("usage: help".to_string())),
        [verb, ..] => Err(CommandError::Invalid(format!(
            "unknown command {verb:?} (try: help)"
        ))),
    }
}

const SNAPSHOT_USAGE: &str = "usage: snapshot NAME COW [STORE [CHUNK]] [FEATURE...]";

/// `rest` is `[STORE [CHUNK]] [FEATURE...]`: positions first, then feature words.
fn parse_snapshot(name: &str, cow: &str, rest: &[&str]) -> Result<Command, CommandError> {
    check_snapshot_name(name)?;
    let cow = PathBuf::from(cow);
    // The daemon's working directory means nothing to whoever writes the command.
    if !cow.is_absolute() {
        return Err(CommandError::Invalid(format!(
            "COW path {} is not absolute",
            cow.display()
        )));
    }
    let split = rest
        .iter()
        .position(|w| FeatureWords::is_word(w))
        .unwrap_or(rest.len());
    let (positional, words) = rest.split_at(split);
    let (store, chunk) = match positional {
        [] => (None, None),
        [store] => (Some(*store), None),
        [store, chunk] => (Some(*store), Some(*chunk)),
        [_, _, extra, ..] => {
            return Err(CommandError::Invalid(format!(
                "unexpected word {:?} after the chunk size ({SNAPSHOT_USAGE}; FEATURE is one of \
                 {FEATURE_WORDS})",
                extra.escape_debug().to_string()
            )));
        }
    };
    let kind = match store {
        Some(word) => StoreKind::parse(word)?,
        None => StoreKind::Persistent { overflow: false },
    };
    let chunk = match chunk {
        Some(word) => Some(parse_chunk_sectors(word).map_err(|e| e.to_string())?),
        None => None,
    };
    let words = FeatureWords::parse(words.iter().copied())?;
    Ok(Command::Snapshot(SnapshotSpec {
        features: words.features,
        force: words.force,
        nofreeze: words.nofreeze,
        ..SnapshotSpec::new(name, cow, kind, resolve_chunk(kind, chunk)?)
    }))
}

/// Runs a command. `Ok` is the whole answer (starting `ok`); `Err` is the reason.
pub fn execute(context: &Context, command: &Command) -> Result<String, CommandError> {
    let volume = context.volume;
    match command {
        Command::Snapshot(spec) => attach(volume, context.ledger, spec),
        Command::Drop { name } => drop_snapshot(volume, context.ledger, name),
        Command::Merge { name } => execute_merge(context, name.as_deref()),
        Command::Pause { name } => {
            let (left, total) = volume
                .pause_merge(name)
                .map_err(|e| CommandError::Invalid(e.to_string()))?;
            Ok(format!(
                "ok merge of {name} paused, {left} of {total} chunks left; resume {name} continues it"
            ))
        }
        Command::Resume { name } => {
            let (left, total) = volume
                .resume_paused_merge(name)
                .map_err(|e| CommandError::Invalid(e.to_string()))?;
            Ok(format!(
                "ok merge of {name} resumed, {left} of {total} chunks left; progress in status"
            ))
        }
        Command::Changes { name, from } => changes(volume, name, *from),
        Command::Help => Ok(HELP.to_string()),
    }
}

/// A page of snapshot `name`'s changed-chunk map, from the in-memory table once every
/// acknowledged write is in it (drained): right while writes continue (the map only grows)
/// and during a merge (the chunks not merged back yet). An
/// invalid snapshot's map is refused: its table no longer says what changed.
fn changes(volume: &Volume, name: &str, from: u64) -> Result<String, CommandError> {
    let snap = volume
        .snapshot(name)
        .ok_or_else(|| CommandError::Invalid(format!("no snapshot named {name}")))?;
    if snap.is_invalid() {
        return Err(CommandError::Invalid(format!(
            "snapshot {name} is invalid: which chunks changed is no longer known (any may \
             differ)"
        )));
    }
    // An acknowledged origin write still held by write-back has no exception yet: the map
    // must list its chunks too.
    volume.drain();
    let map =
        crate::changes::ChangeMap::from_runs(snap.chunk_size().bytes(), snap.exception_runs());
    Ok(crate::changes::render_page(
        name,
        &map,
        from,
        crate::changes::PAGE_RUNS,
    ))
}

/// Attaches the snapshot, then records it (registry): a snapshot is acknowledged only once
/// the next mount will find it. If it cannot be recorded it is detached again.
fn attach(volume: &Volume, ledger: &Ledger, spec: &SnapshotSpec) -> Result<String, CommandError> {
    let mode = if volume.is_read_only() {
        OpenMode::ReadOnly
    } else {
        OpenMode::ReadWrite
    };
    // A COW that leads back to this mount would hang it at the first copy-out.
    crate::host::reach::check_snapshot_cow(&spec.name, &spec.cow)?;
    let config = spec
        .open(mode)
        .map_err(|e| format!("snapshot {}: {e}", spec.name))?;
    // The file systems on the origin write out their caches and stop writing for the instant
    // of the attach, as LVM's suspend freezes them; thawed whatever the attach does.
    let frozen = match crate::host::freeze::live_origin() {
        Some(origin) if !spec.nofreeze => Some(
            crate::host::freeze::freeze_users(origin)
                .map_err(|e| format!("snapshot {} not taken: {e}", spec.name))?,
        ),
        _ => None,
    };
    let attached = volume.attach_snapshot(config);
    let thawed = frozen.map(|f| f.thaw()).unwrap_or_default();
    let snap = attached.map_err(|e| {
        let mut why = e.to_string();
        for w in &thawed.warnings {
            why.push_str(&format!("; {w}"));
        }
        why
    })?;
    let recorded = SnapshotSpec {
        chunk_sectors: snap.chunk_size().sectors(),
        ..spec.clone()
    };
    if let Err(why) = ledger.attached(recorded) {
        volume.detach_snapshot(snap.name());
        let _ = volume.flush_snapshot(&snap);
        return Err(CommandError::Invalid(format!(
            "snapshot {} not taken: {why}",
            spec.name
        )));
    }
    let mut answer = format!(
        "ok snapshot {} attached: {} {} {}",
        snap.name(),
        snap.cow_name(),
        snap.kind(),
        snap.chunk_size().sectors()
    );
    if spec.nofreeze {
        answer.push_str("\nnot frozen: nofreeze");
    }
    for line in thawed.notes {
        answer.push_str(&format!("\n{line}"));
    }
    for w in thawed.warnings {
        answer.push_str(&format!("\nwarning: {w}"));
    }
    Ok(with_warning(answer, ledger, &spec.name))
}

/// Forgets the snapshot in the registry first, then detaches it: the next mount must not
/// attach a COW that stopped taking copies.
fn drop_snapshot(volume: &Volume, ledger: &Ledger, name: &str) -> Result<String, CommandError> {
    match volume.snapshot(name) {
        None => return Err(CommandError::Invalid(format!("no snapshot named {name}"))),
        Some(s) if s.is_merging() => {
            return Err(CommandError::Invalid(format!(
                "snapshot {name} is merging: it cannot be dropped"
            )));
        }
        Some(_) => {}
    }
    ledger.forget(name)?;
    let snap = volume
        .detach_snapshot(name)
        .ok_or_else(|| format!("no snapshot named {name}"))?;
    // Exceptions are durable already; data written to the snapshot may still be cached.
    volume
        .flush_snapshot(&snap)
        .map_err(|e| format!("snapshot {name} detached, but flushing its COW failed: {e}"))?;
    volume
        .end_transient(&snap)
        .map_err(|e| format!("snapshot {name} detached, but blanking its COW failed: {e}"))?;
    let answer = format!(
        "ok snapshot {name} detached; {} is left as it is",
        snap.cow_name()
    );
    Ok(with_warning(answer, ledger, name))
}

/// Appends the ledger's warning about `name` (what the mount options must say) as a second
/// line starting `warning:`.
fn with_warning(answer: String, ledger: &Ledger, name: &str) -> String {
    match ledger.warning_for(name) {
        Some(w) => format!("{answer}\nwarning: {w}"),
        None => answer,
    }
}

/// Starts merging snapshot `name` (or the only snapshot) into the origin and returns at once;
/// progress shows in `status`. Refused (EBUSY) while the origin or that snapshot is open through
/// the mount (a loop device counts): a filesystem on the origin would see its blocks change
/// underneath it. LVM defers the merge in that case; snapfs asks the user to unmount first.
fn execute_merge(context: &Context, name: Option<&str>) -> Result<String, CommandError> {
    let volume = context.volume;
    let name = match name {
        Some(n) => n.to_string(),
        None => {
            let names: Vec<String> = volume
                .snapshots()
                .iter()
                .filter(|s| !s.is_merging())
                .map(|s| s.name().to_string())
                .collect();
            match names.as_slice() {
                [only] => only.clone(),
                _ => {
                    return Err(CommandError::Invalid(format!(
                        "which snapshot? the mount has {} snapshots: use merge NAME",
                        names.len()
                    )));
                }
            }
        }
    };
    // What is wrong with the request comes before what is busy: a missing or invalid
    // snapshot cannot be merged however long one waits.
    match volume.snapshot(&name) {
        None => {
            return Err(CommandError::Invalid(format!("no snapshot named {name}")));
        }
        Some(s) if s.is_invalid() => {
            return Err(CommandError::Invalid(format!(
                "snapshot {name} is invalid (its COW overflowed or failed): it cannot be merged; \
                 drop it"
            )));
        }
        Some(_) => {}
    }
    if let Some(m) = volume.merging_snapshot() {
        let paused = if m.is_merge_paused() {
            " (paused: resume it first)"
        } else {
            ""
        };
        return Err(CommandError::Busy(format!(
            "snapshot {} is already merging{paused}",
            m.name()
        )));
    }
    for file in ["origin", name.as_str()] {
        let open = (context.open_handles)(file);
        if open > 0 {
            return Err(CommandError::Busy(format!(
                "{file} is open ({open} handles, a loop device counts): unmount what uses it \
                 and detach its loop device, then merge"
            )));
        }
    }
    match volume.start_merge(&name) {
        Ok(name) => Ok(format!(
            "ok merging {name} into the origin; progress in status"
        )),
        Err(e) if e.is_busy() => Err(CommandError::Busy(e.to_string())),
        Err(e) => Err(CommandError::Invalid(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    #[test]
    fn good_commands() {
        let c = parse("snapshot daily /cow/daily.cow P 8\n").unwrap();
        let Command::Snapshot(s) = c else { panic!() };
        assert_eq!(s.name, "daily");
        assert_eq!(s.cow, PathBuf::from("/cow/daily.cow"));
        assert_eq!(s.kind, StoreKind::Persistent { overflow: false });
        assert_eq!(s.chunk_sectors, 8);
        let Command::Snapshot(s) = parse("snapshot t  /x.cow\tN").unwrap() else {
            panic!()
        };
        assert_eq!((s.kind, s.chunk_sectors), (StoreKind::Transient, 32));
        let Command::Snapshot(s) = parse("snapshot t /x.cow po 4k\r\n").unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.kind, s.chunk_sectors),
            (StoreKind::Persistent { overflow: true }, 8)
        );
        let Command::Snapshot(s) = parse("snapshot t /x.cow").unwrap() else {
            panic!()
        };
        assert_eq!(s.chunk_sectors, 0, "P without chunk: the on-disk size");
        let Command::Snapshot(s) = parse("snapshot t /x.cow P 8 discard_zeroes_cow force").unwrap()
        else {
            panic!()
        };
        assert!(s.force && s.features.discard_zeroes_cow && s.chunk_sectors == 8);
        let Command::Snapshot(s) = parse("snapshot t /x.cow force").unwrap() else {
            panic!()
        };
        assert!(s.force && s.kind == StoreKind::Persistent { overflow: false });
        let Command::Snapshot(s) = parse("snapshot t /x.cow P 8 nofreeze").unwrap() else {
            panic!()
        };
        assert!(s.nofreeze && !s.force);
        let Command::Snapshot(s) =
            parse("snapshot t /x.cow P 8 discard_zeroes_cow autoextend=70:20:10G force").unwrap()
        else {
            panic!()
        };
        let ax = s.features.autoextend.unwrap();
        assert_eq!(
            (ax.threshold, ax.percent, ax.max_bytes),
            (70, 20, Some(10 << 30))
        );
        assert!(s.force && s.features.discard_zeroes_cow && s.chunk_sectors == 8);
        let Command::Snapshot(s) = parse("snapshot t /x.cow autoextend=50:50").unwrap() else {
            panic!()
        };
        assert_eq!(s.features.to_string(), "autoextend=50:50");
        assert_eq!(s.chunk_sectors, 0);
        assert_eq!(
            parse("drop daily").unwrap(),
            Command::Drop {
                name: "daily".into()
            }
        );
        assert_eq!(parse("merge\n").unwrap(), Command::Merge { name: None });
        assert_eq!(
            parse("  merge   daily  ").unwrap(),
            Command::Merge {
                name: Some("daily".into())
            }
        );
        assert_eq!(parse("help\n").unwrap(), Command::Help);
        assert_eq!(
            parse("changes daily 42").unwrap(),
            Command::Changes {
                name: "daily".into(),
                from: 42
            }
        );
        assert_eq!(
            parse("changes daily").unwrap(),
            Command::Changes {
                name: "daily".into(),
                from: 0
            }
        );
        assert_eq!(
            parse("pause daily\n").unwrap(),
            Command::Pause {
                name: "daily".into()
            }
        );
        assert_eq!(
            parse(" resume  daily").unwrap(),
            Command::Resume {
                name: "daily".into()
            }
        );
    }

    #[test]
    fn malformed_commands() {
        let long = format!("drop {}", "x".repeat(CONTROL_WRITE_MAX));
        for bad in [
            "",
            "\n",
            "   \n",
            "frobnicate",
            "SNAPSHOT a /x",
            "snapshot",
            "snapshot a",
            "snapshot a /x P 8 extra",
            "snapshot a /x P 8 force extra",
            "snapshot a /x discard_passdown_origin",
            "snapshot a /x autoextend=70",
            "snapshot a /x P autoextend=0:20",
            "snapshot a /x P autoextend=70:20 autoextend=70:20",
            "snapshot a /x P 8 autoextend",
            "snapshot #x /x",
            "snapshot a,b /x",
            "drop #x",
            "merge a=b",
            "snapshot a relative.cow",
            "snapshot a /x Q",
            "snapshot a /x PX",
            "snapshot a /x P 12",
            "snapshot a /x P eight",
            "snapshot a /x N 0",
            "snapshot origin /x",
            "snapshot status /x",
            "snapshot control /x",
            "snapshot a:b /x",
            "snapshot .. /x",
            "drop",
            "drop a b",
            "drop origin",
            "merge a b",
            "merge control",
            "pause",
            "pause a b",
            "pause origin",
            "pause a/b",
            "resume",
            "resume a b",
            "resume status",
            "help me",
            "changes",
            "changes a b",
            "changes a -1",
            "changes a 1 2",
            "changes origin",
            "drop a\ndrop b",
            "drop a\n\n",
            long.as_str(),
        ] {
            let r = parse(bad);
            assert!(r.is_err(), "{bad:?} must be refused, got {r:?}");
            let e = r.unwrap_err();
            assert!(matches!(e, CommandError::Invalid(_)), "{bad:?}: {e:?}");
            assert!(!e.to_string().contains('\n'));
        }
        assert!(parse_command(&[0xff, 0xfe]).is_err(), "not UTF-8");
        assert!(
            parse("snapshot a /x N 0")
                .unwrap_err()
                .to_string()
                .contains("Chunk size not set")
        );
    }
}
