//! The `status` file: the volume's `dmsetup status` lines, then snapfs's detail lines, and the
//! parser `snapfs status` reads them back with (see docs/status.md).
//!
//! Detail lines start with `#:` so that parsers written for dm, which skip `#` lines, are not
//! disturbed. They are stable: a keyword, then `key=value` fields (new keys may be added; a
//! reader ignores keys it does not know), with a path always last:
//!
//! ```text
//! #: origin mode=rw device=/var/lib/vols/data.img
//! #: snapshot nightly store=P chunk=8 exceptions=3 used=40 total=524288 metadata=16 attached=live cow=/var/lib/vols/nightly.cow
//! #: snapshot tmp store=P chunk=8 exceptions=900 used=7216 total=8192 metadata=16 attached=live warning=85 cow=/tmp/t.cow
//! #: snapshot old store=P chunk=8 ... merge=128/256 paused cow=/o.cow      (a paused merge)
//! #: registry /var/lib/snapfs/data.reg          (or: #: registry none)
//! #: log /var/log/snapfs-data.log                (only with -o log=)
//! #: warning <one sentence>
//! ```
//! Paths use fstab's escapes (`\040` for a space), as in the registry.

use crate::escape::{escape_path, unescape};
use crate::registry::Ledger;
use crate::store::Usage;
use crate::units::SECTOR_BYTES;
use crate::volume::{Snapshot, Volume};
use std::path::Path;

/// One line per target, as `dmsetup status` prints them (see docs/status.md):
/// `origin: 0 <sectors> snapshot-origin`, then `<name>: 0 <sectors> snapshot <word>` (or
/// `snapshot-merge` while merging), then, while merging, one line for people starting `#`.
/// The snapshot list is read once, so the lines describe one moment.
pub fn dm_lines(volume: &Volume) -> String {
    // What status shows follows every acknowledged write (an invalidation by a failed
    // copy-out included).
    volume.drain();
    dm_lines_as_held(volume)
}

/// [`dm_lines`] without waiting for held origin writes: the figures may trail writes already
/// answered. For the `status` file's size in `getattr` (a hint: reads regenerate the text),
/// which `ls -l` and every lookup of the mount ask for and which must not wait for a
/// write-back group to commit.
pub fn dm_lines_as_held(volume: &Volume) -> String {
    let sectors = volume.size_bytes() / SECTOR_BYTES;
    let mut out = format!("origin: 0 {sectors} snapshot-origin\n");
    let list = volume.snapshots();
    for s in &list {
        let target = if s.is_merging() {
            "snapshot-merge"
        } else {
            "snapshot"
        };
        out.push_str(&format!(
            "{}: 0 {sectors} {target} {}\n",
            s.name(),
            s.status_word()
        ));
    }
    for s in &list {
        if let Some((left, total)) = s.merge_progress() {
            let done = total - left;
            let pct = if total == 0 {
                100.0
            } else {
                done as f64 * 100.0 / total as f64
            };
            let state = if s.is_merge_failed() {
                "merge failed"
            } else if s.is_merge_paused() {
                "merge paused"
            } else {
                "merging"
            };
            out.push_str(&format!(
                "# {} {state}: {pct:.1}% done, {left} of {total} chunks left\n",
                s.name()
            ));
        }
    }
    out
}

/// The whole text of the status file at this moment.
pub fn render(volume: &Volume, ledger: &Ledger) -> String {
    let mut text = dm_lines(volume);
    let mode = if volume.is_read_only() { "ro" } else { "rw" };
    let device = escape_path(Path::new(&volume.origin_name()));
    text.push_str(&format!("#: origin mode={mode} device={device}\n"));
    for snap in volume.snapshots() {
        let attached = ledger.source(snap.name());
        text.push_str(&detail_line(&snap, attached.map(|s| s.to_string())));
    }
    match ledger.registry() {
        Some(path) => text.push_str(&format!("#: registry {}\n", escape_path(path))),
        None => text.push_str("#: registry none\n"),
    }
    if let Some(log) = ledger.log() {
        text.push_str(&format!("#: log {}\n", escape_path(log)));
    }
    for warning in ledger.warnings() {
        text.push_str(&format!("#: warning {}\n", warning.replace('\n', " ")));
    }
    text
}

fn detail_line(snap: &Snapshot, attached: Option<String>) -> String {
    let usage = snap.usage();
    let mut line = format!(
        "#: snapshot {} store={} chunk={} exceptions={} used={} total={} metadata={}",
        snap.name(),
        snap.kind(),
        snap.chunk_size().sectors(),
        snap.exceptions(),
        usage.allocated_sectors,
        usage.total_sectors,
        usage.metadata_sectors
    );
    if let Some(source) = attached {
        line.push_str(&format!(" attached={source}"));
    }
    if let Some((left, total)) = snap.merge_progress() {
        line.push_str(&format!(" merge={left}/{total}"));
        if snap.is_merge_paused() {
            line.push_str(" paused");
        }
    }
    if snap.warning_level() > 0 {
        line.push_str(&format!(" warning={}", snap.warning_level()));
    }
    let features = snap.features();
    if !features.is_empty() {
        line.push_str(&format!(" features={features}"));
    }
    let cow = escape_path(Path::new(&snap.cow_name()));
    line.push_str(&format!(" cow={cow}\n"));
    line
}

/// A snapshot's state, in the kernel's order of precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotState {
    Active,
    /// Active, with usage past a warning level (`warn=`; the detail line's `warning=`).
    AlmostFull,
    Merging,
    Invalid,
    MergeFailed,
    Overflow,
}

impl SnapshotState {
    /// The word `snapfs status` prints and `--json` carries.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Active => "active",
            SnapshotState::AlmostFull => "almost full",
            SnapshotState::Merging => "merging",
            SnapshotState::Invalid => "invalid",
            SnapshotState::MergeFailed => "merge-failed",
            SnapshotState::Overflow => "overflow",
        }
    }
}

/// One snapshot as the status file describes it. Fields from the detail line are `None` when
/// that line is missing (the snapshot came or went between the two parts of one read).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub name: String,
    /// The target line's status word(s): `16/524288 16`, `Invalid`, `Merge failed`, `Overflow`.
    pub word: String,
    pub state: SnapshotState,
    pub store: Option<String>,
    pub chunk_sectors: Option<u64>,
    pub exceptions: Option<u64>,
    pub usage: Option<Usage>,
    /// `options`, `registry` or `live`.
    pub attached: Option<String>,
    /// `(chunks left, chunks when the merge started)` while merging.
    pub merge: Option<(u64, u64)>,
    /// The merge is paused (`pause NAME`): the word `paused` after `merge=`.
    pub merge_paused: bool,
    /// The kernel's feature words joined by `+` (`discard_zeroes_cow`), if any.
    pub features: Option<String>,
    /// The highest usage warning level crossed, in percent (`warn=`), if any.
    pub warning: Option<u64>,
    pub cow: Option<String>,
}

/// The whole status file, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub origin_sectors: u64,
    pub origin_device: Option<String>,
    pub read_only: bool,
    pub snapshots: Vec<SnapshotReport>,
    /// The registry file; `None` when the mount has none.
    pub registry: Option<String>,
    /// The daemon's log file (`-o log=`); `None` when it logs elsewhere.
    pub log: Option<String>,
    pub warnings: Vec<String>,
}

impl Report {
    /// Parses a status text. Fails only on a malformed target line.
    pub fn parse(text: &str) -> Result<Report, String> {
        let mut report = Report {
            origin_sectors: 0,
            origin_device: None,
            read_only: false,
            snapshots: Vec::new(),
            registry: None,
            log: None,
            warnings: Vec::new(),
        };
        for line in text.lines() {
            if let Some(detail) = line.strip_prefix("#: ") {
                report.apply_detail(detail)?;
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                report.apply_target(line)?;
            }
        }
        Ok(report)
    }

    fn apply_target(&mut self, line: &str) -> Result<(), String> {
        let bad = || format!("malformed status line {line:?}");
        let (name, rest) = line.split_once(": ").ok_or_else(bad)?;
        let words: Vec<&str> = rest.split(' ').collect();
        let [_start, sectors, target, word @ ..] = words.as_slice() else {
            return Err(bad());
        };
        let sectors: u64 = sectors.parse().map_err(|_| bad())?;
        let word = word.join(" ");
        match *target {
            "snapshot-origin" => self.origin_sectors = sectors,
            "snapshot" | "snapshot-merge" => self.snapshots.push(SnapshotReport {
                name: name.to_string(),
                state: state_of(*target == "snapshot-merge", &word),
                usage: parse_usage(&word),
                word,
                store: None,
                chunk_sectors: None,
                exceptions: None,
                attached: None,
                merge: None,
                merge_paused: false,
                features: None,
                warning: None,
                cow: None,
            }),
            _ => return Err(bad()),
        }
        Ok(())
    }

    fn apply_detail(&mut self, detail: &str) -> Result<(), String> {
        let (keyword, rest) = detail.split_once(' ').unwrap_or((detail, ""));
        match keyword {
            "origin" => {
                let (fields, device) = fields_and_path(rest, "device=")?;
                self.read_only = fields.iter().any(|(k, v)| k == "mode" && v == "ro");
                self.origin_device = device;
            }
            "snapshot" => self.apply_snapshot_detail(rest)?,
            "registry" if rest == "none" => self.registry = None,
            "registry" => self.registry = Some(unescape(rest)?),
            "log" => self.log = Some(unescape(rest)?),
            "warning" => self.warnings.push(rest.to_string()),
            // Newer keywords: ignored, as documented.
            _ => {}
        }
        Ok(())
    }

    fn apply_snapshot_detail(&mut self, rest: &str) -> Result<(), String> {
        let (name, rest) = rest.split_once(' ').unwrap_or((rest, ""));
        let Some(snap) = self.snapshots.iter_mut().find(|s| s.name == name) else {
            return Ok(());
        };
        let (fields, cow) = fields_and_path(rest, "cow=")?;
        let number = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        };
        let text = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.clone())
        };
        snap.store = text("store");
        snap.chunk_sectors = number("chunk");
        snap.exceptions = number("exceptions");
        if let (Some(a), Some(t), Some(m)) = (number("used"), number("total"), number("metadata")) {
            snap.usage = Some(Usage {
                allocated_sectors: a,
                total_sectors: t,
                metadata_sectors: m,
            });
        }
        snap.attached = text("attached");
        snap.merge = text("merge").and_then(|m| {
            let (left, total) = m.split_once('/')?;
            Some((left.parse().ok()?, total.parse().ok()?))
        });
        snap.merge_paused =
            snap.merge.is_some() && fields.iter().any(|(k, v)| k == "paused" && v.is_empty());
        snap.features = text("features");
        snap.warning = number("warning");
        if snap.warning.is_some() && snap.state == SnapshotState::Active {
            snap.state = SnapshotState::AlmostFull;
        }
        snap.cow = cow;
        Ok(())
    }
}

/// The kernel's order: Invalid, Merge failed, Overflow, then the figures.
fn state_of(merging: bool, word: &str) -> SnapshotState {
    match word {
        "Invalid" => SnapshotState::Invalid,
        "Merge failed" => SnapshotState::MergeFailed,
        "Overflow" => SnapshotState::Overflow,
        _ if merging => SnapshotState::Merging,
        _ => SnapshotState::Active,
    }
}

/// `<allocated>/<total> <metadata>`.
fn parse_usage(word: &str) -> Option<Usage> {
    let (fraction, metadata) = word.split_once(' ')?;
    let (allocated, total) = fraction.split_once('/')?;
    Some(Usage {
        allocated_sectors: allocated.parse().ok()?,
        total_sectors: total.parse().ok()?,
        metadata_sectors: metadata.parse().ok()?,
    })
}

type Fields = Vec<(String, String)>;

/// `k=v k=v ... <path_key><escaped path to the end of the line>`.
fn fields_and_path(text: &str, path_key: &str) -> Result<(Fields, Option<String>), String> {
    let mut fields = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(path) = rest.strip_prefix(path_key) {
            return Ok((fields, Some(unescape(path)?)));
        }
        let (word, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        match word.split_once('=') {
            Some((k, v)) => fields.push((k.to_string(), v.to_string())),
            // A flag word (`paused`): a key without a value.
            None if !word.is_empty() => fields.push((word.to_string(), String::new())),
            None => {}
        }
        rest = tail;
    }
    Ok((fields, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::options::SnapshotSpec;
    use crate::registry::Source;
    use crate::store::StoreKind;
    use crate::volume::{SnapshotConfig, VolumeOptions};
    use std::path::PathBuf;
    use std::sync::Arc;

    fn config(name: &str, kind: StoreKind) -> SnapshotConfig {
        SnapshotConfig {
            name: name.to_string(),
            cow: Arc::new(MemDevice::new(&format!("/cow dir/{name}.cow"), 1 << 20)),
            kind,
            chunk_sectors: 8,
            features: Default::default(),
        }
    }

    fn spec(name: &str) -> SnapshotSpec {
        SnapshotSpec::new(
            name,
            PathBuf::from(format!("/cow dir/{name}.cow")),
            StoreKind::Transient,
            8,
        )
    }

    #[test]
    fn rendered_text_parses_back() {
        let p = StoreKind::Persistent { overflow: false };
        let origin = Arc::new(MemDevice::new("/img/origin.img", 4 << 20));
        let configs = vec![config("a", p), config("b", StoreKind::Transient)];
        let vol = Volume::open(origin, configs, VolumeOptions::default()).unwrap();
        vol.write_origin(0, &[7u8; 8192]).unwrap();
        let planned = vec![(spec("a"), Source::Options)];
        let ledger = Ledger::new(None, false, planned);
        ledger.attached(spec("b")).unwrap();
        let text = render(&vol, &ledger);
        assert!(
            text.starts_with("origin: 0 8192 snapshot-origin\na: 0 8192 snapshot 32/2048 16\n"),
            "{text}"
        );
        let r = Report::parse(&text).unwrap();
        assert_eq!(r.origin_sectors, 8192);
        assert_eq!(r.origin_device.as_deref(), Some("/img/origin.img"));
        assert!(!r.read_only);
        assert_eq!(r.registry, None);
        let a = &r.snapshots[0];
        assert_eq!(
            (a.name.as_str(), a.state, a.store.as_deref()),
            ("a", SnapshotState::Active, Some("P"))
        );
        assert_eq!((a.chunk_sectors, a.exceptions), (Some(8), Some(2)));
        assert_eq!(a.usage.unwrap().to_string(), "32/2048 16");
        assert_eq!(a.attached.as_deref(), Some("options"));
        assert_eq!(a.cow.as_deref(), Some("/cow dir/a.cow"));
        assert_eq!(r.snapshots[1].attached.as_deref(), Some("live"));
        assert_eq!(r.warnings.len(), 1, "b is recorded nowhere: {text}");
        assert!(r.warnings[0].starts_with("snapshot b "), "{:?}", r.warnings);
    }

    #[test]
    fn states_and_foreign_lines() {
        let text = "origin: 0 100 snapshot-origin\n\
                    a: 0 100 snapshot Invalid\n\
                    b: 0 100 snapshot-merge 24/200 16\n\
                    c: 0 100 snapshot-merge Merge failed\n\
                    d: 0 100 snapshot Overflow\n\
                    # b merging: 50.0% done, 1 of 2 chunks left\n\
                    #: snapshot b store=PO chunk=8 future=1 merge=1/2 cow=/x\\040y\n\
                    #: snapshot gone store=P cow=/z\n\
                    #: newkeyword whatever\n\
                    #: registry /r\\040s.reg\n";
        let r = Report::parse(text).unwrap();
        let states: Vec<SnapshotState> = r.snapshots.iter().map(|s| s.state).collect();
        use SnapshotState::*;
        assert_eq!(states, [Invalid, Merging, MergeFailed, Overflow]);
        let b = &r.snapshots[1];
        assert_eq!(b.merge, Some((1, 2)));
        assert!(!b.merge_paused);
        assert_eq!(b.cow.as_deref(), Some("/x y"));
        assert_eq!(
            b.usage.unwrap().allocated_sectors,
            24,
            "from the target line"
        );
        assert_eq!(r.snapshots[0].usage, None);
        assert_eq!(r.registry.as_deref(), Some("/r s.reg"));
        let paused = Report::parse(
            "origin: 0 100 snapshot-origin\n\
             b: 0 100 snapshot-merge 24/200 16\n\
             #: snapshot b store=P chunk=8 merge=1/2 paused cow=/x\n",
        )
        .unwrap();
        assert!(paused.snapshots[0].merge_paused);
        assert_eq!(paused.snapshots[0].merge, Some((1, 2)));
        assert!(Report::parse("nonsense\n").is_err());
        assert!(Report::parse("a: 0 x snapshot 1/2 3\n").is_err());
    }
}
