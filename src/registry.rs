//! The snapshot registry (`-o registry=PATH`): a small text file naming every snapshot a mount
//! serves, rewritten whenever that set changes and read again at the next mount.
//!
//! Why it exists: a snapshot taken live (`snapfs snapshot`, or `snapshot` written to `control`)
//! lives only in the daemon. If the next mount did not attach it again, the origin would be
//! written without copy-out and the snapshot would silently rot. The mount options cannot
//! remember it; the registry does.
//!
//! Format: one snapshot per line, four or five fields separated by blanks,
//! `NAME COW STORE CHUNK [FEATURES]` (`nightly /var/lib/vols/nightly.cow P 8`; FEATURES is the
//! snapshot's recorded feature words joined by `+`, as in `P 8 discard_zeroes_cow` or
//! `P 8 discard_zeroes_cow+autoextend=70:20:10G`; a line without it is a snapshot without
//! features, as older snapfs wrote them). `COW` is an absolute path with space, tab,
//! newline and backslash written as `\040`, `\011`, `\012` and `\134` (as in fstab); `STORE` is
//! `P`, `PO` or `N`; `CHUNK` is in 512-byte sectors. Lines starting with `#` and blank lines are
//! ignored. Anything else is an error and the mount is refused: guessing could attach the
//! wrong COW.
//!
//! Writes are atomic (a temporary file in the same directory, fsync, rename, fsync of the
//! directory), so a crash leaves either the old or the new file. [`Ledger`] keeps the daemon's
//! side: what is attached and where it came from.

mod error;
mod ledger;

pub use error::RegistryError;
pub use ledger::{Ledger, Source};

use crate::escape::{escape_path, unescape_path};
use crate::features::SnapshotFeatures;
use crate::options::{SnapshotSpec, check_snapshot_name, resolve_chunk};
use crate::store::StoreKind;
use crate::units::parse_chunk_sectors;
use std::io;
use std::path::Path;

/// First line of every registry file snapfs writes.
const HEADER: &str =
    "# snapfs registry: NAME COW STORE CHUNK [FEATURES] (written by snapfs; see docs/cli.md)\n";

/// Parses a registry's text. Errors name the line and the problem, in one line.
pub fn parse(text: &str) -> Result<Vec<SnapshotSpec>, RegistryError> {
    let mut specs: Vec<SnapshotSpec> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = parse_line(i + 1, line)?;
        if specs.iter().any(|s| s.name == spec.name) {
            return Err(RegistryError::SecondName {
                line: i + 1,
                name: spec.name,
            });
        }
        specs.push(spec);
    }
    Ok(specs)
}

/// The snapshot on line `number` (`line`, trimmed).
fn parse_line(number: usize, line: &str) -> Result<SnapshotSpec, RegistryError> {
    let bad = |why: String| RegistryError::BadLine { line: number, why };
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let (name, cow, store, chunk, features) = match fields.as_slice() {
        [name, cow, store, chunk] => (name, cow, store, chunk, None),
        [name, cow, store, chunk, features] => (name, cow, store, chunk, Some(features)),
        _ => {
            return Err(bad(format!(
                "expected NAME COW STORE CHUNK [FEATURES], found {} fields",
                fields.len()
            )));
        }
    };
    check_snapshot_name(name).map_err(bad)?;
    let cow = unescape_path(cow).map_err(bad)?;
    if !cow.is_absolute() {
        return Err(bad(format!("COW path {} is not absolute", cow.display())));
    }
    let kind = match *store {
        "P" | "PO" | "N" => StoreKind::parse(store).map_err(bad)?,
        other => return Err(bad(format!("store {other:?} is not P, PO or N"))),
    };
    let sectors = parse_chunk_sectors(chunk).map_err(|e| bad(e.to_string()))?;
    let features = features
        .map(|f| SnapshotFeatures::parse_field(f))
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    let chunk_sectors = resolve_chunk(kind, Some(sectors)).map_err(bad)?;
    Ok(SnapshotSpec {
        features,
        ..SnapshotSpec::new(name, cow, kind, chunk_sectors)
    })
}

/// The text of a registry holding `specs`.
pub fn render(specs: &[SnapshotSpec]) -> String {
    let mut text = HEADER.to_string();
    for s in specs {
        text.push_str(&format!(
            "{} {} {} {}",
            s.name,
            escape_path(&s.cow),
            s.kind,
            s.chunk_sectors
        ));
        if !s.features.is_empty() {
            text.push_str(&format!(" {}", s.features));
        }
        text.push('\n');
    }
    text
}

/// Reads a registry; a missing file is an empty registry (it is created at the first save).
pub fn load(path: &Path) -> Result<Vec<SnapshotSpec>, RegistryError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map_err(|error| RegistryError::Content {
            path: path.to_path_buf(),
            error: Box::new(error),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(RegistryError::Read {
            path: path.to_path_buf(),
            error,
        }),
    }
}

/// Replaces the registry at `path` atomically and durably.
pub fn save(path: &Path, specs: &[SnapshotSpec]) -> io::Result<()> {
    crate::host::replace::replace_file(path, render(specs).as_bytes(), "registry path")
}

/// Whether two specs name the same snapshot: same name, COW, store and kernel features, and
/// the same chunk size where both say one (0 on a persistent store means "whatever is on
/// disk"). Autoextend is a policy, not a property of the COW: it may differ (see [`plan`]).
pub fn same_snapshot(a: &SnapshotSpec, b: &SnapshotSpec) -> bool {
    let chunks_agree = a.chunk_sectors == b.chunk_sectors
        || (a.kind.is_persistent() && (a.chunk_sectors == 0 || b.chunk_sectors == 0));
    let kernel = |s: &SnapshotSpec| SnapshotFeatures {
        autoextend: None,
        ..s.features
    };
    a.name == b.name && a.cow == b.cow && a.kind == b.kind && kernel(a) == kernel(b) && chunks_agree
}

/// What a mount attaches: the `-o snapshot=` ones in order, then the registry's others. A name
/// in both must describe the same snapshot (the option's spec is kept, its autoextend too,
/// which is how fstab changes a recorded snapshot's autoextend); otherwise the mount is
/// refused, since one of the two COWs would be left without copy-outs.
pub fn plan(
    options: &[SnapshotSpec],
    registry: Option<&Path>,
) -> Result<Vec<(SnapshotSpec, Source)>, RegistryError> {
    let mut out: Vec<(SnapshotSpec, Source)> = options
        .iter()
        .map(|s| (s.clone(), Source::Options))
        .collect();
    let Some(path) = registry else {
        return Ok(out);
    };
    for recorded in load(path)? {
        if recorded.kind == StoreKind::Transient {
            // Recorded by an older snapfs. A transient snapshot ends with its mount: attaching
            // its COW again would bring back the name with new content.
            log::warn!(
                "registry {}: snapshot {} is transient (N) and ended with the mount that took \
                 it; it is not attached again and leaves the registry",
                path.display(),
                recorded.name
            );
            continue;
        }
        match out.iter().find(|(s, _)| s.name == recorded.name) {
            Some((given, _)) if same_snapshot(given, &recorded) => {
                if given.features.autoextend != recorded.features.autoextend {
                    log::info!(
                        "snapshot {}: the mount options' autoextend ({}) replaces registry {}'s \
                         ({})",
                        given.name,
                        given
                            .features
                            .autoextend
                            .map_or("none".into(), |a| a.to_string()),
                        path.display(),
                        recorded
                            .features
                            .autoextend
                            .map_or("none".into(), |a| a.to_string())
                    );
                }
            }
            Some((given, _)) => {
                return Err(RegistryError::Disagree {
                    name: given.name.clone(),
                    option: option_text(given),
                    path: path.to_path_buf(),
                    recorded: option_text(&recorded),
                });
            }
            None => out.push((recorded, Source::Registry)),
        }
    }
    Ok(out)
}

/// The `-o` option that attaches `spec`: `snapshot=NAME:COW:STORE:CHUNK[:FEATURES]` (without
/// the chunk when it is 0, "the on-disk size").
pub fn option_text(spec: &SnapshotSpec) -> String {
    let mut text = format!(
        "snapshot={}:{}:{}",
        spec.name,
        spec.cow.display(),
        spec.kind
    );
    if spec.chunk_sectors != 0 {
        text.push_str(&format!(":{}", spec.chunk_sectors));
    }
    if !spec.features.is_empty() {
        text.push_str(&format!(":{}", spec.features.spec_field()));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn spec(name: &str, cow: &str, kind: StoreKind, chunk: u64) -> SnapshotSpec {
        SnapshotSpec::new(name, PathBuf::from(cow), kind, chunk)
    }

    const P: StoreKind = StoreKind::Persistent { overflow: false };
    const PO: StoreKind = StoreKind::Persistent { overflow: true };

    #[test]
    fn render_and_parse_round_trip() {
        let specs = vec![
            spec("nightly", "/var/lib/vols/nightly.cow", P, 8),
            spec("odd", "/mnt/my vols/a\\b\tc.cow", PO, 16),
            spec(
                "t",
                "/dev/disk/by-path/pci-0000:00:04.0-part1",
                StoreKind::Transient,
                32,
            ),
        ];
        let mut specs = specs;
        specs[0].features.discard_zeroes_cow = true;
        let text = render(&specs);
        assert!(text.starts_with("# snapfs registry"));
        assert!(
            text.contains("nightly /var/lib/vols/nightly.cow P 8 discard_zeroes_cow\n"),
            "{text}"
        );
        assert!(
            text.contains("odd /mnt/my\\040vols/a\\134b\\011c.cow PO 16\n"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), specs);
        assert_eq!(parse("").unwrap(), vec![]);
        // A registry without feature words (as older snapfs wrote it) reads as before.
        assert_eq!(
            parse("nightly /var/lib/vols/nightly.cow P 8\n").unwrap(),
            vec![spec("nightly", "/var/lib/vols/nightly.cow", P, 8)]
        );
        assert_eq!(
            parse("\n  # comment\n a /a.cow N 8  \n").unwrap(),
            vec![spec("a", "/a.cow", StoreKind::Transient, 8)]
        );
    }

    #[test]
    fn autoextend_round_trips() {
        let mut specs = vec![
            spec("a", "/a:b.cow", P, 8),
            spec("b", "/b.cow", PO, 16),
            spec("c", "/c.cow", P, 0),
        ];
        for (s, field) in specs.iter_mut().zip([
            "discard_zeroes_cow+autoextend=70:20:10G",
            "autoextend=50:50",
            "autoextend=1:1000:6320640",
        ]) {
            s.features = SnapshotFeatures::parse_field(field).unwrap();
        }
        let text = render(&specs);
        assert!(
            text.contains("a /a:b.cow P 8 discard_zeroes_cow+autoextend=70:20:10G\n"),
            "{text}"
        );
        assert!(text.contains("b /b.cow PO 16 autoextend=50:50\n"), "{text}");
        let back = parse(&text).unwrap();
        assert_eq!(back, specs, "render then parse gives the same specs");
        assert_eq!(render(&back), text);
        // The -o option text carries it too (with `/`), and parses back to the same.
        for s in &specs {
            let option = option_text(s);
            let parsed = crate::options::parse_snapshot_spec(&option["snapshot=".len()..]).unwrap();
            assert_eq!(&parsed, s, "{option}");
        }
        assert_eq!(
            option_text(&specs[0]),
            "snapshot=a:/a:b.cow:P:8:discard_zeroes_cow+autoextend=70/20/10G"
        );
        // Another autoextend is the same snapshot (a policy, not the COW's content); other
        // kernel features are not.
        let mut other = specs[1].clone();
        other.features.autoextend = None;
        assert!(same_snapshot(&other, &specs[1]));
        other.features.discard_zeroes_cow = true;
        assert!(!same_snapshot(&other, &specs[1]));
        // At mount the option's autoextend is kept (and recorded then).
        let dir = std::env::temp_dir().join(format!("snapfs-registry-ax-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vol.reg");
        save(&path, &specs).unwrap();
        assert_eq!(load(&path).unwrap(), specs);
        let mut given = specs[0].clone();
        given.features.autoextend = Some(crate::lifecycle::Autoextend::parse("80:10").unwrap());
        let planned = plan(std::slice::from_ref(&given), Some(&path)).unwrap();
        assert_eq!(planned.len(), 3);
        assert_eq!(planned[0], (given, Source::Options));
        assert_eq!(planned[1], (specs[1].clone(), Source::Registry));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parse_errors_name_the_line() {
        for (text, needle) in [
            ("a /a.cow P", "line 1: expected NAME COW STORE CHUNK"),
            ("# c\na /a.cow P 8 x", "line 2: unknown snapshot feature"),
            ("# c\na /a.cow P 8 x y", "line 2: expected"),
            ("a /a.cow P 8 force", "force is not recorded"),
            (
                "a /a.cow P 8 autoextend=70",
                "line 1: snapshot feature \"autoextend=70\"",
            ),
            ("a /a.cow P 8 autoextend=0:20", "THRESHOLD"),
            (
                "a /a.cow P 8 discard_passdown_origin",
                "depends on discard_zeroes_cow",
            ),
            ("a,b /a.cow P 8", "contains ','"),
            ("a rel.cow P 8", "not absolute"),
            ("a /a.cow Q 8", "not P, PO or N"),
            ("a /a.cow POX 8", "not P, PO or N"),
            ("a /a.cow P 12", "power of 2"),
            ("a /a.cow P eight", "Invalid chunk size"),
            ("a /a.cow N 0", "Chunk size not set"),
            ("origin /a.cow P 8", "reserved"),
            ("a /a\\x.cow P 8", "unknown escape"),
            (
                "a /a.cow P 8\na /b.cow P 8",
                "line 2: a second snapshot named a",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn plan_merges_options_and_registry() {
        let dir = std::env::temp_dir().join(format!("snapfs-registry-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vol.reg");
        let recorded = vec![spec("a", "/a.cow", P, 8), spec("live", "/live.cow", P, 16)];
        save(&path, &recorded).unwrap();
        assert_eq!(load(&path).unwrap(), recorded);
        // The option's spec wins when it agrees (chunk 0 = on-disk agrees with 8).
        let options = vec![spec("a", "/a.cow", P, 0), spec("o", "/o.cow", P, 8)];
        let planned = plan(&options, Some(&path)).unwrap();
        let names: Vec<(&str, u64, Source)> = planned
            .iter()
            .map(|(s, src)| (s.name.as_str(), s.chunk_sectors, *src))
            .collect();
        assert_eq!(
            names,
            [
                ("a", 0, Source::Options),
                ("o", 8, Source::Options),
                ("live", 16, Source::Registry)
            ]
        );
        let conflicting = vec![spec("live", "/other.cow", P, 16)];
        let e = plan(&conflicting, Some(&path)).unwrap_err().to_string();
        assert!(
            e.contains("snapshot live") && e.contains("/other.cow"),
            "{e}"
        );
        assert!(plan(&[spec("a", "/a.cow", PO, 8)], Some(&path)).is_err());
        assert_eq!(plan(&options, None).unwrap().len(), 2);
        assert!(
            plan(&[], Some(&dir.join("missing.reg")))
                .unwrap()
                .is_empty()
        );
        std::fs::write(&path, "garbage\n").unwrap();
        let e = plan(&[], Some(&path)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("registry {}: line 1", path.display())),
            "{e}"
        );
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn transient_snapshots_do_not_come_back() {
        let dir = std::env::temp_dir().join(format!("snapfs-registry-n-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vol.reg");
        // What an older snapfs wrote: a transient snapshot beside a persistent one.
        std::fs::write(&path, "t /t.cow N 8\np /p.cow P 8\n").unwrap();
        let planned = plan(&[], Some(&path)).unwrap();
        let names: Vec<&str> = planned.iter().map(|(s, _)| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["p"],
            "a recorded transient snapshot is not attached again"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn option_texts() {
        assert_eq!(
            option_text(&spec("n", "/x:y.cow", PO, 16)),
            "snapshot=n:/x:y.cow:PO:16"
        );
        assert_eq!(
            option_text(&spec("n", "/x.cow", P, 0)),
            "snapshot=n:/x.cow:P"
        );
        let mut s = spec("n", "/x.cow", P, 8);
        s.features.discard_zeroes_cow = true;
        assert_eq!(option_text(&s), "snapshot=n:/x.cow:P:8:discard_zeroes_cow");
        assert_eq!(
            crate::options::parse_snapshot_spec(&option_text(&s)["snapshot=".len()..]).unwrap(),
            s,
            "the option text parses back"
        );
    }
}
