//! Mount options (`-o ...`) and snapshot specs, parsed without touching any device, so that
//! the command line and a `mount.snapfs` helper refuse bad input the same way, before forking.
//!
//! A snapshot spec is `NAME:COW[:STORE[:CHUNK]]`, read from the right because COW paths may
//! contain ':' (`/dev/disk/by-path/pci-0000:00:04.0-part1`): NAME is everything up to the first
//! ':'; then, if the last field is a chunk word and the one before it a store word, both are
//! taken; otherwise, if the last field is a store word, it is taken; the rest is the COW path.
//! Store words are exactly `P`, `PO` or `N` (any case) here, so that a path ending in, say,
//! `:nvme0` is never read as a store; chunk words are sectors (`8`) or KiB (`4k`). A last field
//! of feature words joined by `+` (`NAME:COW:STORE[:CHUNK]:discard_zeroes_cow+force`, see
//! [`crate::features`]) is taken first, and only when a store word comes before it (or a store
//! and a chunk word). Its `autoextend=` word separates its value's fields with `/` here
//! (`NAME:COW:P:8:autoextend=70/20/10G`): an `autoextend=` anywhere else in a spec (a value
//! written with `:`, or no store word before it) is refused, never read as part of the path.

use crate::device::{Device, FileDevice, OpenMode};
use crate::features::{FeatureWords, SnapshotFeatures};
use crate::lifecycle::{Autoextend, WarnLevels};
use crate::store::StoreKind;
use crate::store::probe::{self, Content};
use crate::units::{ChunkSize, ChunkSizeError, parse_chunk_sectors};
use crate::volume::SnapshotConfig;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use crate::names::{RESERVED_NAMES, check_snapshot_name};

/// Chunk size of a transient (`N`) snapshot when none is given: the kernel's default, 16 KiB.
pub const TRANSIENT_DEFAULT_CHUNK_SECTORS: u64 = 32;

/// Options mount(8) passes (or users keep in fstab) that snapfs accepts and ignores.
const IGNORED: [&str; 22] = [
    "defaults",
    "_netdev",
    "nofail",
    "auto",
    "noauto",
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "user",
    "users",
    "nouser",
    "owner",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "sync",
    "async",
];

/// A refused option or spec: one line for a person, naming what was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError(pub String);

impl fmt::Display for OptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OptionError {}

/// One snapshot to attach, as given by the user. `chunk_sectors` is resolved: `0` asks for the
/// on-disk size (or the kernel default for a new persistent COW); a transient store always has a
/// size here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// File name in the mount; see [`check_snapshot_name`].
    pub name: String,
    /// The COW device or image file.
    pub cow: PathBuf,
    /// `P`, `PO` or `N`.
    pub kind: StoreKind,
    /// Requested chunk size in 512-byte sectors; 0 for the on-disk (or default) size.
    pub chunk_sectors: u64,
    /// The kernel's optional features (recorded with the snapshot).
    pub features: SnapshotFeatures,
    /// Format the COW even if it holds something (never recorded).
    pub force: bool,
    /// Leave the file systems on the origin unfrozen while a live snapshot is attached (never
    /// recorded; no effect at mount).
    pub nofreeze: bool,
}

impl SnapshotSpec {
    /// A spec without features or force.
    pub fn new(name: &str, cow: PathBuf, kind: StoreKind, chunk_sectors: u64) -> SnapshotSpec {
        SnapshotSpec {
            name: name.to_string(),
            cow,
            kind,
            chunk_sectors,
            features: SnapshotFeatures::default(),
            force: false,
            nofreeze: false,
        }
    }

    /// Opens the COW device (claiming it exclusively), checks that it may become this
    /// snapshot's COW, and builds the volume's configuration. Nothing is written here.
    pub fn open(&self, mode: OpenMode) -> Result<SnapshotConfig, String> {
        let cow = FileDevice::open(&self.cow, mode).map_err(|e| {
            let shown = self.cow.display().to_string();
            if e.kind() == std::io::ErrorKind::NotFound && shown.contains(':') {
                // A spec is read from the right: a mistyped store or chunk word becomes part
                // of the path.
                format!(
                    "{e} (if the path was meant to end before a ':', check the store and chunk \
                     words: STORE is P, PO or N, CHUNK sectors or NNk)"
                )
            } else {
                e.to_string()
            }
        })?;
        let cow: Device = Arc::new(cow);
        self.check_content(&cow)?;
        Ok(SnapshotConfig {
            name: self.name.clone(),
            cow,
            kind: self.kind,
            chunk_sectors: self.chunk_sectors,
            features: self.features,
        })
    }

    /// The one rule for what a COW may hold, for every entry point: a persistent store opens
    /// a snapshot store as it is and formats only a blank device; a transient store, which
    /// overwrites from chunk 0 and reads nothing back, takes only a blank device. Anything
    /// else (a file system, a partition table, an LVM label, swap, any data, or for `N` a
    /// persistent store) is refused unless `force` was given, as mkfs refuses.
    fn check_content(&self, cow: &Device) -> Result<(), String> {
        if self.force {
            return Ok(());
        }
        let chunk_bytes = match self.chunk_sectors {
            0 => TRANSIENT_DEFAULT_CHUNK_SECTORS,
            s => s,
        } * crate::units::SECTOR_BYTES;
        let content = probe::probe(cow, chunk_bytes)
            .map_err(|e| format!("cannot read {}: {e}", self.cow.display()))?;
        let found = match (content, self.kind) {
            (Content::Blank, _) => return Ok(()),
            (Content::SnapshotStore, StoreKind::Persistent { .. }) => return Ok(()),
            (Content::SnapshotStore, StoreKind::Transient) => {
                "a persistent snapshot store, which a transient snapshot would overwrite"
                    .to_string()
            }
            (Content::Foreign(what), _) => what,
        };
        Err(format!(
            "{} holds {found}; refusing to use it as a COW (it is neither a snapshot store nor \
             blank): choose another device, zero its first {} KiB, or add the feature word \
             force to format it anyway",
            self.cow.display(),
            probe::window(cow.size_bytes(), chunk_bytes) >> 10
        ))
    }
}

/// Everything `-o` can say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// In the order given: the volume attaches them in this order.
    pub snapshots: Vec<SnapshotSpec>,
    /// `ro`: no device is ever written.
    pub read_only: bool,
    /// Let every user in (the kernel's `allow_other`).
    pub allow_other: bool,
    /// Let root in besides the mounting user.
    pub allow_root: bool,
    /// Owner of the files (default: the mounting user).
    pub uid: Option<u32>,
    /// Group of the files (default: the mounting user's group).
    pub gid: Option<u32>,
    /// Pass origin discards down to the origin device.
    pub origin_discard: bool,
    /// `registry=PATH`: record the snapshots served in this file and attach them again at the
    /// next mount (see [`crate::registry`]).
    pub registry: Option<PathBuf>,
    /// `log=PATH`: the daemon appends its log here instead of writing it to stderr.
    pub log: Option<PathBuf>,
    /// `warn=L1:L2:...` or `warn=none`: usage warning levels (default 80:85:90:95).
    pub warn: Option<WarnLevels>,
    /// `notify=CMD`: an absolute path, run as `CMD MOUNTPOINT SNAPSHOT PERCENT EVENT`.
    pub notify: Option<PathBuf>,
    /// `autoextend=THRESHOLD:PERCENT[:MAX]`: grow file COWs (every snapshot of the mount).
    pub autoextend: Option<Autoextend>,
    /// `writeback=SIZE`: the write-back budget in bytes (0: none); default
    /// [`crate::volume::DEFAULT_WRITEBACK_BYTES`].
    pub writeback: Option<u64>,
}

impl MountOptions {
    /// The monitor's policy these options ask for.
    pub fn policy(&self) -> crate::lifecycle::Policy {
        crate::lifecycle::Policy {
            levels: self.warn.clone().unwrap_or_default(),
            autoextend: self.autoextend,
        }
    }
}

impl MountOptions {
    /// Parses every `-o` argument (each a comma-separated list) in order; a later `ro`/`rw`
    /// overrides an earlier one, as in mount(8).
    pub fn parse<S: AsRef<str>>(lists: &[S]) -> Result<MountOptions, OptionError> {
        let mut options = MountOptions::default();
        let mut given = Vec::new();
        for list in lists {
            for option in list.as_ref().split(',').filter(|o| !o.is_empty()) {
                options.apply(option, &mut given)?;
            }
        }
        if options.allow_other && options.allow_root {
            return Err(OptionError(
                "allow_other and allow_root are mutually exclusive".to_string(),
            ));
        }
        Ok(options)
    }

    /// `given`: the single-valued options applied so far, as written (for messages).
    fn apply(&mut self, option: &str, given: &mut Vec<String>) -> Result<(), OptionError> {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        match (key, value) {
            ("snapshot", Some(spec)) => {
                let spec = parse_snapshot_spec(spec).map_err(OptionError)?;
                if self.snapshots.iter().any(|s| s.name == spec.name) {
                    return Err(OptionError(format!(
                        "two snapshots are named {:?}",
                        spec.name
                    )));
                }
                self.snapshots.push(spec);
            }
            ("ro", None) => self.read_only = true,
            ("rw", None) => self.read_only = false,
            ("allow_other", None) => self.allow_other = true,
            ("allow_root", None) => self.allow_root = true,
            // Always in force: the kernel checks the modes snapfs reports.
            ("default_permissions", None) => {}
            ("origin_discard", None) => self.origin_discard = true,
            ("registry", Some(path)) => set_once(
                &mut self.registry,
                key,
                parse_path(option, path)?,
                option,
                given,
            )?,
            ("log", Some(path)) => {
                set_once(&mut self.log, key, parse_path(option, path)?, option, given)?
            }
            ("warn", Some(v)) => set_once(
                &mut self.warn,
                key,
                WarnLevels::parse(v).map_err(OptionError)?,
                option,
                given,
            )?,
            ("notify", Some(path)) => {
                let path = parse_path(option, path)?;
                if !path.is_absolute() {
                    return Err(OptionError(format!(
                        "option {option:?}: the command must be an absolute path"
                    )));
                }
                set_once(&mut self.notify, key, path, option, given)?
            }
            ("autoextend", Some(v)) => set_once(
                &mut self.autoextend,
                key,
                Autoextend::parse(v).map_err(OptionError)?,
                option,
                given,
            )?,
            ("writeback", Some(v)) => set_once(
                &mut self.writeback,
                key,
                parse_writeback(v).map_err(|e| OptionError(format!("option {option:?}: {e}")))?,
                option,
                given,
            )?,
            ("uid", Some(v)) => set_once(&mut self.uid, key, parse_id(option, v)?, option, given)?,
            ("gid", Some(v)) => set_once(&mut self.gid, key, parse_id(option, v)?, option, given)?,
            (k, _) if k.starts_with("x-") => {}
            // `comment=` is fstab's; `user=NAME` is what mount(8) adds for a user mount.
            ("comment" | "user", Some(_)) => {}
            (k, None) if IGNORED.contains(&k) => {}
            _ => {
                return Err(OptionError(format!("unknown mount option {option:?}")));
            }
        }
        Ok(())
    }
}

/// `writeback=SIZE`: `0` (off) or a size from 1 MiB to 1 GiB, as `parse_bytes` reads it.
fn parse_writeback(v: &str) -> Result<u64, String> {
    if v == "0" {
        return Ok(0);
    }
    let bytes = crate::units::parse_bytes(v)?;
    if !((1 << 20)..=(1 << 30)).contains(&bytes) {
        return Err(format!(
            "the write-back budget must be 0 (off) or from 1M to 1G, not {v:?}"
        ));
    }
    Ok(bytes)
}

/// Options that name one thing may be given once: two `registry=` (or `log=`, `uid=`, `gid=`,
/// `warn=`, `notify=`, `autoextend=`) are a mistake somewhere, and silently taking the last
/// could record snapshots in the wrong file or hand the volume to the wrong user. The same
/// value twice (fstab and the command line) is no conflict. The message shows both options as
/// they were written.
fn set_once<T: PartialEq>(
    slot: &mut Option<T>,
    key: &str,
    value: T,
    option: &str,
    given: &mut Vec<String>,
) -> Result<(), OptionError> {
    let prefix = format!("{key}=");
    match slot {
        Some(old) if *old != value => {
            let earlier = given.iter().find(|o| o.starts_with(&prefix)).cloned();
            // Quoted and escaped: an option may hold any byte, a message is one line.
            Err(OptionError(format!(
                "option {key}= is given twice ({:?} and {option:?}): give it once",
                earlier.unwrap_or(prefix)
            )))
        }
        _ => {
            *slot = Some(value);
            given.push(option.to_string());
            Ok(())
        }
    }
}

fn parse_path(option: &str, value: &str) -> Result<PathBuf, OptionError> {
    if value.is_empty() {
        return Err(OptionError(format!("option {option:?}: expected a path")));
    }
    Ok(PathBuf::from(value))
}

fn parse_id(option: &str, value: &str) -> Result<u32, OptionError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OptionError(format!(
            "option {option:?}: expected a numeric id"
        )));
    }
    value
        .parse()
        .map_err(|_| OptionError(format!("option {option:?}: id out of range")))
}

/// Parses `NAME:COW[:STORE[:CHUNK]][:FEATURES]` (see the module documentation for the rule).
pub fn parse_snapshot_spec(spec: &str) -> Result<SnapshotSpec, String> {
    let bad = |why: String| format!("invalid snapshot spec {spec:?}: {why}");
    let Some((name, rest)) = spec.split_once(':') else {
        return Err(bad("expected NAME:COW[:STORE[:CHUNK]]".to_string()));
    };
    check_snapshot_name(name).map_err(bad)?;
    let mut fields: Vec<&str> = rest.split(':').collect();
    // Feature words come last, after a store word (and maybe a chunk word).
    let words = match fields.as_slice() {
        [.., store, last] if is_store_word(store) && FeatureWords::is_field(last) => fields.pop(),
        [.., store, chunk, last]
            if is_store_word(store) && is_chunk_word(chunk) && FeatureWords::is_field(last) =>
        {
            fields.pop()
        }
        _ => None,
    };
    let words = words
        .map(FeatureWords::parse_field)
        .transpose()
        .map_err(bad)?
        .unwrap_or_default();
    if fields.iter().any(|f| crate::features::names_autoextend(f)) {
        return Err(bad(
            "autoextend= must be in the last field, after a store word (and a chunk word), \
             with / between its fields, since : splits the spec: \
             NAME:COW:P:8:autoextend=70/20/10G"
                .to_string(),
        ));
    }
    let n = fields.len();
    // The COW keeps at least one field: `a:P` is a COW named "P", not a missing one.
    let (cow_fields, store, chunk) =
        if n >= 3 && is_chunk_word(fields[n - 1]) && is_store_word(fields[n - 2]) {
            (&fields[..n - 2], Some(fields[n - 2]), Some(fields[n - 1]))
        } else if n >= 3 && is_store_word(fields[n - 2]) {
            // `c.cow:P:-8`: a store word, then something that is not a chunk size. Reading it
            // as a path ending in ":P:-8" would only fail later as a missing file.
            let e = parse_chunk_sectors(fields[n - 1]).unwrap_err();
            return Err(bad(format!(
                "{e} (after the store word {}; feature words are {})",
                fields[n - 2],
                crate::features::FEATURE_WORDS
            )));
        } else if n >= 2 && is_store_word(fields[n - 1]) {
            (&fields[..n - 1], Some(fields[n - 1]), None)
        } else {
            (&fields[..], None, None)
        };
    let cow = cow_fields.join(":");
    if cow.is_empty() {
        return Err(bad("missing COW path".to_string()));
    }
    let kind = match store {
        Some(word) => StoreKind::parse(word).map_err(bad)?,
        None => StoreKind::Persistent { overflow: false },
    };
    let chunk = chunk.map(|w| parse_chunk_sectors(w).map_err(|e| bad(e.to_string())));
    let chunk_sectors = resolve_chunk(kind, chunk.transpose()?).map_err(bad)?;
    Ok(SnapshotSpec {
        features: words.features,
        force: words.force,
        nofreeze: words.nofreeze,
        ..SnapshotSpec::new(name, PathBuf::from(cow), kind, chunk_sectors)
    })
}

/// Applies the defaults and the checks that need no device: `N` needs a size (omitted means
/// 32 sectors; an explicit 0 is the kernel's "Chunk size not set"); `P`/`PO` take 0 as "the
/// on-disk size". A non-zero size must be a power of two and not too large; the block-size
/// rule is checked when the devices are open.
pub fn resolve_chunk(kind: StoreKind, given: Option<u64>) -> Result<u64, String> {
    let sectors = match (kind, given) {
        (StoreKind::Transient, None) => TRANSIENT_DEFAULT_CHUNK_SECTORS,
        (StoreKind::Transient, Some(0)) => return Err(ChunkSizeError::Zero.to_string()),
        (_, Some(s)) => s,
        (StoreKind::Persistent { .. }, None) => 0,
    };
    if sectors != 0 {
        ChunkSize::new(sectors, &[]).map_err(|e| e.to_string())?;
    }
    Ok(sectors)
}

fn is_store_word(word: &str) -> bool {
    ["P", "PO", "N"]
        .iter()
        .any(|w| w.eq_ignore_ascii_case(word))
}

fn is_chunk_word(word: &str) -> bool {
    parse_chunk_sectors(word).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const P: StoreKind = StoreKind::Persistent { overflow: false };
    const PO: StoreKind = StoreKind::Persistent { overflow: true };
    const N: StoreKind = StoreKind::Transient;

    fn spec(s: &str) -> (String, String, StoreKind, u64) {
        let sp = parse_snapshot_spec(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        (
            sp.name,
            sp.cow.display().to_string(),
            sp.kind,
            sp.chunk_sectors,
        )
    }

    fn t(name: &str, cow: &str, kind: StoreKind, chunk: u64) -> (String, String, StoreKind, u64) {
        (name.to_string(), cow.to_string(), kind, chunk)
    }

    #[test]
    fn specs_read_from_the_right() {
        assert_eq!(spec("a:/x.cow"), t("a", "/x.cow", P, 0));
        assert_eq!(spec("a:/x.cow:N"), t("a", "/x.cow", N, 32));
        assert_eq!(spec("a:/x.cow:po:16"), t("a", "/x.cow", PO, 16));
        assert_eq!(spec("a:/x.cow:P:4k"), t("a", "/x.cow", P, 8));
        assert_eq!(spec("a:/x.cow:N:8"), t("a", "/x.cow", N, 8));
        let by_path = "/dev/disk/by-path/pci-0000:00:04.0-part1";
        assert_eq!(spec(&format!("d:{by_path}")), t("d", by_path, P, 0));
        assert_eq!(spec(&format!("d:{by_path}:N:16")), t("d", by_path, N, 16));
        assert_eq!(spec(&format!("d:{by_path}:PO")), t("d", by_path, PO, 0));
        // A chunk word without a store word before it belongs to the path.
        assert_eq!(spec("a:/x:8"), t("a", "/x:8", P, 0));
        // Store words are exact here: a path ending in ":nvme0" is not an N store.
        assert_eq!(spec("a:/dev/x:nvme0"), t("a", "/dev/x:nvme0", P, 0));
        // The COW keeps at least one field.
        assert_eq!(spec("a:P"), t("a", "P", P, 0));
        assert_eq!(spec("a:P:8"), t("a", "P:8", P, 0));
        assert_eq!(spec("a:P:P:8"), t("a", "P", P, 8));
        assert_eq!(spec("a:rel/x.cow"), t("a", "rel/x.cow", P, 0));
        // Feature words come last, after a store word (and a chunk word).
        let sp = parse_snapshot_spec("a:/x:y.cow:P:8:discard_zeroes_cow+force").unwrap();
        assert_eq!((sp.cow.to_str(), sp.chunk_sectors), (Some("/x:y.cow"), 8));
        assert!(sp.force && sp.features.discard_zeroes_cow);
        let sp = parse_snapshot_spec("a:/x.cow:N:force").unwrap();
        assert_eq!((sp.kind, sp.chunk_sectors, sp.force), (N, 32, true));
        // Without a store word before it, the word belongs to the path.
        assert_eq!(spec("a:/x:force"), t("a", "/x:force", P, 0));
    }

    #[test]
    fn specs_carry_autoextend_with_slashes_only() {
        let sp =
            parse_snapshot_spec("a:/x:y.cow:P:8:discard_zeroes_cow+autoextend=70/20/10G").unwrap();
        assert_eq!((sp.cow.to_str(), sp.chunk_sectors), (Some("/x:y.cow"), 8));
        let ax = sp.features.autoextend.unwrap();
        assert_eq!(ax.to_string(), "70:20:10G");
        assert!(sp.features.discard_zeroes_cow);
        let sp = parse_snapshot_spec("a:/x.cow:PO:autoextend=50/50").unwrap();
        assert_eq!((sp.kind, sp.features.autoextend.unwrap().percent), (PO, 50));
        // A `:` in the value, or no store word before it: refused, not read as a path.
        for bad in [
            "a:/x.cow:P:8:autoextend=70:20:10G",
            "a:/x.cow:P:autoextend=70:20",
            "a:/x.cow:autoextend=70/20",
            "a:/x.cow:P:8:force+autoextend=70:20",
        ] {
            let e = parse_snapshot_spec(bad).unwrap_err();
            assert!(
                e.contains("autoextend=70/20/10G") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
        // A value the parser refuses is named.
        let e = parse_snapshot_spec("a:/x.cow:P:autoextend=70/0").unwrap_err();
        assert!(
            e.contains("PERCENT") && e.contains("autoextend=70/0"),
            "{e}"
        );
    }

    #[test]
    fn bad_specs() {
        for bad in [
            "",
            "nocolon",
            ":/x.cow",
            "a:",
            "a::P",
            "a::N:8",
            "origin:/x",
            "status:/x",
            "control:/x",
            "a/b:/x",
            "a b:/x",
            ".:/x",
            "..:/x",
            "a:/x:N:0",
            "a:/x:P:12",
            "a:/x:N:3",
            "a:/x:P:4194304",
            "a:/x:P:-8",
            "a:/x:P:8x",
            "a:/x:PO:eight",
            "#x:/x",
            "a,b:/x",
            "a=b:/x",
            "-a:/x",
            "a:/x:P:8:discard_passdown_origin",
            "a:/x:P:8:force+force",
        ] {
            let r = parse_snapshot_spec(bad);
            assert!(r.is_err(), "{bad:?} must be refused, got {r:?}");
            let msg = r.unwrap_err();
            assert!(!msg.contains('\n'), "one line: {msg}");
        }
        assert!(
            parse_snapshot_spec("a:/x:N:0")
                .unwrap_err()
                .contains("Chunk size not set")
        );
        assert!(parse_snapshot_spec(&format!("{}:/x", "n".repeat(256))).is_err());
        let e = parse_snapshot_spec("c:/v/c.cow:P:-8").unwrap_err();
        assert!(e.contains("Invalid chunk size") && e.contains("-8"), "{e}");
    }

    #[test]
    fn writeback_budget() {
        let wb = |o: &str| MountOptions::parse(&[o]).map(|m| m.writeback);
        assert_eq!(wb("writeback=0").unwrap(), Some(0));
        assert_eq!(wb("writeback=64M").unwrap(), Some(64 << 20));
        assert_eq!(wb("writeback=1G").unwrap(), Some(1 << 30));
        assert_eq!(wb("writeback=1M,writeback=1048576").unwrap(), Some(1 << 20));
        for bad in [
            "writeback=512K",
            "writeback=2G",
            "writeback=",
            "writeback=x",
            "writeback",
        ] {
            let e = wb(bad).unwrap_err().to_string();
            assert!(e.contains("writeback"), "{bad}: {e}");
        }
        let e = wb("writeback=8M,writeback=16M").unwrap_err().to_string();
        assert!(
            e.contains("writeback=8M") && e.contains("writeback=16M"),
            "{e}"
        );
        let e = wb("writeback=1\nx").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn option_lists() {
        let o = MountOptions::parse(&[
            "snapshot=a:/a.cow:P:8,snapshot=b:/b.cow:N,ro",
            "uid=1000,gid=100,allow_other,defaults,_netdev,x-systemd.automount,comment=hi",
            "nofail,noatime,relatime,user=bob,origin_discard,default_permissions",
        ])
        .unwrap();
        assert_eq!(o.snapshots.len(), 2);
        assert_eq!(o.snapshots[1].kind, N);
        assert!(o.read_only && o.allow_other && o.origin_discard);
        assert_eq!((o.uid, o.gid), (Some(1000), Some(100)));
        let o = MountOptions::parse(&["ro", "rw"]).unwrap();
        assert!(!o.read_only, "the last of ro/rw wins");
        assert_eq!(
            MountOptions::parse::<&str>(&[]).unwrap(),
            MountOptions::default()
        );
        assert!(!MountOptions::parse(&["ro,,rw"]).unwrap().read_only);
        let o =
            MountOptions::parse(&["registry=/var/lib/snapfs/a.reg,log=rel/snapfs.log"]).unwrap();
        assert_eq!(o.registry, Some(PathBuf::from("/var/lib/snapfs/a.reg")));
        assert_eq!(o.log, Some(PathBuf::from("rel/snapfs.log")));
        // The same value twice (fstab and the command line) is no conflict.
        let o = MountOptions::parse(&["uid=7,uid=7", "registry=/r,registry=/r"]).unwrap();
        assert_eq!((o.uid, o.registry), (Some(7), Some(PathBuf::from("/r"))));
    }

    #[test]
    fn bad_option_lists() {
        for bad in [
            "bogus",
            "ro=1",
            "uid=",
            "uid=-1",
            "uid=abc",
            "gid=99999999999",
            "snapshot",
            "snapshot=",
            "snapshot=a:/x,snapshot=a:/y",
            "allow_other,allow_root",
            "subtype=snapfs",
            "registry",
            "registry=",
            "log=",
            "registry=/a.reg,registry=/b.reg",
            "log=/a.log,log=/b.log",
            "uid=1,uid=2",
            "gid=1,gid=2",
            "warn",
            "warn=",
            "warn=90:80",
            "warn=0",
            "warn=101",
            "warn=80,warn=90",
            "notify",
            "notify=",
            "notify=relative/cmd",
            "autoextend=70",
            "autoextend=100:20",
            "autoextend=70:0",
            "autoextend=70:20:big",
        ] {
            let r = MountOptions::parse(&[bad]);
            assert!(r.is_err(), "{bad:?} must be refused");
        }
        let e = MountOptions::parse(&["ro,frobnicate"]).unwrap_err();
        assert_eq!(e.to_string(), "unknown mount option \"frobnicate\"");
        let e = MountOptions::parse(&["warn=50:150"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option \"warn=50:150\": 150 is not between 1 and 100 (expected levels in percent, \
             ascending, like warn=80:90:95, or warn=none)"
        );
        let e = MountOptions::parse(&["notify=cmd.sh"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "option \"notify=cmd.sh\": the command must be an absolute path"
        );
    }

    #[test]
    fn lifecycle_options() {
        let o =
            MountOptions::parse(&["warn=50:75:90,notify=/usr/local/bin/n,autoextend=70:20:10G"])
                .unwrap();
        assert_eq!(o.policy().levels.levels(), [50, 75, 90]);
        assert_eq!(o.notify.as_deref(), Some(Path::new("/usr/local/bin/n")));
        let ax = o.autoextend.unwrap();
        assert_eq!(
            (ax.threshold, ax.percent, ax.max_bytes),
            (70, 20, Some(10 << 30))
        );
        let default = MountOptions::parse(&["ro"]).unwrap().policy();
        assert_eq!(default.levels.levels(), [80, 85, 90, 95]);
        assert_eq!(default.autoextend, None);
        let none = MountOptions::parse(&["warn=none"]).unwrap().policy();
        assert!(none.levels.levels().is_empty());
    }

    #[test]
    fn chunk_resolution() {
        assert_eq!(resolve_chunk(N, None), Ok(32));
        assert!(resolve_chunk(N, Some(0)).is_err());
        assert_eq!(resolve_chunk(P, None), Ok(0));
        assert_eq!(resolve_chunk(P, Some(0)), Ok(0));
        assert_eq!(resolve_chunk(PO, Some(128)), Ok(128));
        assert!(resolve_chunk(P, Some(24)).is_err());
    }
}
