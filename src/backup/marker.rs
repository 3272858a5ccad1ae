//! The backup marker: a small text file that says which snapshot a backup image holds.
//!
//! The image itself stays a plain image (its bytes are the snapshot's, nothing more), so the
//! marker lives beside it: `IMAGE.snapfs-backup` next to a file image, or a file named after
//! the device beside the registry for a block device (see `snapfs backup --marker`). It is
//! replaced atomically and durably (a temporary file, fsync, rename, fsync of the directory),
//! so a crash leaves the old marker or the new one, never a mix.
//!
//! ```text
//! # snapfs backup marker: which snapshot IMAGE holds (docs/backup.md)
//! version 1
//! state complete
//! registry /var/lib/snapfs/data.reg
//! volume_bytes 1073741824
//! origin /var/lib/vols/data.img
//! base backup-20261206T020000Z 3f2a...   (NAME ID: the snapshot IMAGE equals)
//! previous backup-20261205T020000Z 9c41...  (the base before; dropped once this is durable)
//! image_mtime 1765072800.123456789        (file images: the mtime after the last fsync)
//! image_head 8c3b9f3c1d2e4a5b             (a hash of the image's first 64 KiB)
//! ```
//!
//! `state incomplete` is written (durably) before the first byte of a run is copied, with the
//! snapshot being copied as `attempt` and, when the run copies only what changed, the base the
//! image held before as `base`: while incomplete, every byte written since that base was
//! complete lies within that base's changed chunks, which is what lets the next run finish
//! from the base (`super::plan`). `complete` is written only after the image's data is
//! fsynced.

use crate::escape::{escape_path, unescape_path};
use crate::features::BackupId;
use std::fs::File;
use std::path::{Path, PathBuf};

/// A backup snapshot as the marker names it: its name and its `backup=ID` identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapRef {
    pub name: String,
    pub id: BackupId,
}

impl std::fmt::Display for SnapRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (backup={})", self.name, self.id)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// A run is (or was, when it died) writing the image.
    Incomplete,
    /// The image equals `base`, byte for byte, and is durable.
    Complete,
}

/// What the image looked like right after its last complete run: a later write by anyone
/// (a read-write mount of it, a copy over it) changes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The file's mtime in nanoseconds since the epoch; `None` for a block device.
    pub mtime_ns: Option<i128>,
    /// FNV-1a of the first [`HEAD_BYTES`] of the image (an ext4 superblock changes at every
    /// read-write mount).
    pub head: u64,
}

/// How much of the image's start the stamp hashes.
pub const HEAD_BYTES: u64 = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Marker {
    pub state: State,
    /// The registry of the mount whose backup this is: with the size, the volume's identity.
    pub registry: PathBuf,
    pub volume_bytes: u64,
    /// The origin device, for people (a volume may be mounted from another path).
    pub origin: PathBuf,
    /// Complete: the snapshot the image equals. Incomplete: the snapshot the image equalled
    /// before this run's copies began, if the run copies only its changes; `None` for a full
    /// copy.
    pub base: Option<SnapRef>,
    /// Incomplete: the snapshot the run copies from.
    pub attempt: Option<SnapRef>,
    /// Complete: the base before this one, still to be dropped if a run died before.
    pub previous: Option<SnapRef>,
    /// Complete: the image right after the run.
    pub stamp: Option<Stamp>,
}

const FIRST_LINE: &str = "# snapfs backup marker: which snapshot IMAGE holds (docs/backup.md)";

impl Marker {
    pub fn render(&self) -> String {
        let mut t = format!("{FIRST_LINE}\nversion 1\n");
        let state = match self.state {
            State::Incomplete => "incomplete",
            State::Complete => "complete",
        };
        t.push_str(&format!("state {state}\n"));
        t.push_str(&format!("registry {}\n", escape_path(&self.registry)));
        t.push_str(&format!("volume_bytes {}\n", self.volume_bytes));
        t.push_str(&format!("origin {}\n", escape_path(&self.origin)));
        for (key, r) in [
            ("base", &self.base),
            ("attempt", &self.attempt),
            ("previous", &self.previous),
        ] {
            if let Some(r) = r {
                t.push_str(&format!("{key} {} {}\n", r.name, r.id));
            }
        }
        if let Some(s) = &self.stamp {
            if let Some(ns) = s.mtime_ns {
                let secs = ns.div_euclid(1_000_000_000);
                let frac = ns.rem_euclid(1_000_000_000);
                t.push_str(&format!("image_mtime {secs}.{frac:09}\n"));
            }
            t.push_str(&format!("image_head {:016x}\n", s.head));
        }
        t
    }

    /// Parses a marker; anything unexpected is an error (a marker that cannot be trusted is
    /// no marker).
    pub fn parse(text: &str) -> Result<Marker, String> {
        let mut lines = text.lines();
        if lines.next() != Some(FIRST_LINE) {
            return Err("not a snapfs backup marker (first line)".to_string());
        }
        let mut fields = std::collections::HashMap::new();
        for line in lines {
            let (key, value) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            if fields.insert(key, value).is_some() {
                return Err(format!("{key} given twice"));
            }
        }
        let get = |key: &str| {
            fields
                .get(key)
                .copied()
                .ok_or_else(|| format!("no {key} line"))
        };
        if get("version")? != "1" {
            return Err(format!("version {} (this snapfs knows 1)", get("version")?));
        }
        let state = match get("state")? {
            "incomplete" => State::Incomplete,
            "complete" => State::Complete,
            other => return Err(format!("state {other:?}")),
        };
        let snap = |key: &str| -> Result<Option<SnapRef>, String> {
            let Some(v) = fields.get(key) else {
                return Ok(None);
            };
            let (name, id) = v.split_once(' ').ok_or_else(|| format!("bad {key} line"))?;
            crate::names::check_snapshot_name(name)?;
            Ok(Some(SnapRef {
                name: name.to_string(),
                id: BackupId::parse(id)?,
            }))
        };
        let mtime_ns = match fields.get("image_mtime") {
            None => None,
            Some(v) => Some(parse_mtime(v).ok_or_else(|| format!("bad image_mtime {v:?}"))?),
        };
        let stamp = match fields.get("image_head") {
            None => None,
            Some(v) => Some(Stamp {
                mtime_ns,
                head: u64::from_str_radix(v, 16).map_err(|_| format!("bad image_head {v:?}"))?,
            }),
        };
        let marker = Marker {
            state,
            registry: unescape_path(get("registry")?)?,
            volume_bytes: get("volume_bytes")?
                .parse()
                .map_err(|_| "bad volume_bytes".to_string())?,
            origin: unescape_path(get("origin")?)?,
            base: snap("base")?,
            attempt: snap("attempt")?,
            previous: snap("previous")?,
            stamp,
        };
        if state == State::Complete && (marker.base.is_none() || marker.stamp.is_none()) {
            return Err("complete, but without base or image stamp".to_string());
        }
        Ok(marker)
    }

    /// Whether a file that exists at `path` may be replaced by a marker: only a marker (one
    /// whose first line is the marker's, even if the rest does not parse) may. Anything else
    /// there (a mistyped `--marker`, the image itself, someone's file) is never overwritten.
    pub fn may_replace(path: &Path) -> Result<(), String> {
        use std::io::Read;
        let mut head = vec![0u8; FIRST_LINE.len()];
        let refuse = || {
            Err(format!(
                "{} exists and is not a snapfs backup marker: refusing to overwrite it (remove \
                 it, or choose another --marker)",
                path.display()
            ))
        };
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(m) if !m.is_file() => return refuse(),
            Ok(_) => {}
        }
        let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        match file.read_exact(&mut head) {
            Ok(()) if head == FIRST_LINE.as_bytes() => Ok(()),
            _ => refuse(),
        }
    }

    /// Reads the marker at `path`: `Ok(None)` if there is none.
    pub fn load(path: &Path) -> Result<Option<Marker>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Marker::parse(&text)
                .map(Some)
                .map_err(|why| format!("backup marker {}: {why}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("backup marker {}: {e}", path.display())),
        }
    }

    /// Replaces the marker at `path` atomically and durably.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::host::replace::replace_file(path, self.render().as_bytes(), "marker path")
    }
}

fn parse_mtime(v: &str) -> Option<i128> {
    let (secs, frac) = v.split_once('.')?;
    if frac.len() != 9 {
        return None;
    }
    Some(secs.parse::<i128>().ok()? * 1_000_000_000 + frac.parse::<i128>().ok()?)
}

/// FNV-1a of `data`.
pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Marker {
        Marker {
            state: State::Complete,
            registry: PathBuf::from("/var/lib/snap fs/data.reg"),
            volume_bytes: 1 << 30,
            origin: PathBuf::from("/v/data.img"),
            base: Some(SnapRef {
                name: "backup-20261206T020000Z".into(),
                id: BackupId(7),
            }),
            attempt: None,
            previous: Some(SnapRef {
                name: "backup-20261205T020000Z".into(),
                id: BackupId(u128::MAX),
            }),
            stamp: Some(Stamp {
                mtime_ns: Some(1_765_072_800_000_000_123),
                head: 0xdead_beef,
            }),
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let text = m.render();
        assert!(
            text.contains("\nimage_mtime 1765072800.000000123\n"),
            "{text}"
        );
        assert!(
            text.contains("registry /var/lib/snap\\040fs/data.reg\n"),
            "{text}"
        );
        assert_eq!(Marker::parse(&text).unwrap(), m);
        let inc = Marker {
            state: State::Incomplete,
            base: None,
            previous: None,
            attempt: m.base.clone(),
            stamp: None,
            ..m
        };
        assert_eq!(Marker::parse(&inc.render()).unwrap(), inc);
    }

    #[test]
    fn anything_odd_is_refused() {
        let good = sample().render();
        let mut bads = vec![
            String::new(),
            good.replacen("version 1", "version 2", 1),
            good.replacen("state complete", "state done", 1),
            good.replacen("image_head ", "image_head x", 1),
            good.replacen("base backup-20261206T020000Z", "base bad/name", 1),
            good.replacen(" 00000000000000000000000000000007", " 7", 1),
            good.replacen(".000000123", ".123", 1),
            format!("{good}base a 00000000000000000000000000000007\n"),
            format!("{good}junk\n"),
        ];
        bads.push(good.replace("image_head 00000000deadbeef\n", ""));
        for bad in bads {
            assert!(Marker::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn saved_durably_and_read_back() {
        let dir = std::env::temp_dir().join(format!("snapfs-marker-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img.snapfs-backup");
        assert_eq!(Marker::load(&path).unwrap(), None);
        sample().save(&path).unwrap();
        assert_eq!(Marker::load(&path).unwrap(), Some(sample()));
        std::fs::write(&path, "garbage").unwrap();
        assert!(
            Marker::load(&path)
                .unwrap_err()
                .contains("not a snapfs backup marker")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
