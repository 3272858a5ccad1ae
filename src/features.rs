//! Per-snapshot feature words: the kernel snapshot target's optional arguments, and snapfs's
//! `force`.
//!
//! The kernel's table line ends in `<#features> <feature>...`, with `discard_zeroes_cow` and
//! `discard_passdown_origin` (the second requires the first: "discard_passdown_origin feature
//! depends on discard_zeroes_cow"). What they do on snapfs's files is in docs/discard.md.
//! They belong to the snapshot: the registry records them and status shows them.
//!
//! `autoextend=THRESHOLD:PERCENT[:MAX]` is snapfs's, not the kernel's: the snapshot's own
//! autoextension (as LVM records it per LV), which the monitor uses instead of the mount-wide
//! `-o autoextend=` (see [`crate::lifecycle`]). Its value is parsed by
//! [`Autoextend::parse_value`], the mount option's parser. It is recorded like the kernel's
//! features. A `-o snapshot=` spec splits at `:`, so there (and only there is it needed) the
//! value's fields may be separated by `/` instead: `autoextend=70/20/10G`.
//!
//! `backup=ID` is snapfs's too: the snapshot is a base (or an attempt) of `snapfs backup`, and
//! ID (32 hex digits, random per snapshot) is the identity an image's backup marker names, so
//! that another snapshot of the same name, of another volume or on another COW can never pass
//! for it (see `crate::backup`). It is recorded and shown like the other features, and is part
//! of the snapshot's identity (a `-o snapshot=` spec must carry the same one).
//!
//! `force` is not a feature of the snapshot but of the command that attaches it: it lets a COW
//! whose content is neither a snapshot store nor blank be formatted (see
//! [`crate::store::probe`]), as `mkfs -f` does. It is never recorded. Nor is `nofreeze`, which
//! makes a live `snapshot` command leave the file systems on the origin unfrozen (see
//! `crate::host::freeze`); at mount time nothing is frozen anyway.
//!
//! Words are written the same way everywhere: each alone as a word of a control command
//! (`snapshot a /x.cow P 8 discard_zeroes_cow force`), and joined with `+` where one field
//! must carry them all (`-o snapshot=a:/x.cow:P:8:discard_zeroes_cow+force`, the registry's
//! fifth field, status).

use crate::lifecycle::Autoextend;
use std::fmt;

/// The kernel's optional snapshot-target features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotFeatures {
    /// A discard on the snapshot zeroes the COW chunks of its exceptions.
    pub discard_zeroes_cow: bool,
    /// A discard on the snapshot also reaches the origin device (no copy-out).
    pub discard_passdown_origin: bool,
    /// snapfs's own: this snapshot's autoextension (else the mount's `-o autoextend=`).
    pub autoextend: Option<Autoextend>,
    /// snapfs's own: the identity of a `snapfs backup` snapshot (`backup=ID`).
    pub backup: Option<BackupId>,
}

/// A backup snapshot's identity: 128 random bits, written as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackupId(pub u128);

impl BackupId {
    /// A fresh identity from the kernel's random source.
    pub fn random() -> std::io::Result<BackupId> {
        let mut bytes = [0u8; 16];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
        Ok(BackupId(u128::from_le_bytes(bytes)))
    }

    /// Exactly 32 hex digits (any case).
    pub fn parse(text: &str) -> Result<BackupId, String> {
        if text.len() != 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "backup identity {:?} is not 32 hex digits",
                text.escape_debug().to_string()
            ));
        }
        u128::from_str_radix(text, 16)
            .map(BackupId)
            .map_err(|e| e.to_string())
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Feature words a snapshot command or spec may carry: the features, and `force`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FeatureWords {
    pub features: SnapshotFeatures,
    pub force: bool,
    /// Do not freeze the file systems on the origin around a live snapshot.
    pub nofreeze: bool,
}

/// Every word accepted, for messages.
pub const FEATURE_WORDS: &str = "discard_zeroes_cow, discard_passdown_origin, \
     autoextend=THRESHOLD:PERCENT[:MAX], backup=ID, force, nofreeze";

/// The valued word's key, with its `=`.
const AUTOEXTEND: &str = "autoextend=";

/// The value of an `autoextend=` word (any case of the key), if `word` is one.
fn autoextend_value(word: &str) -> Option<&str> {
    word.get(..AUTOEXTEND.len())
        .filter(|key| key.eq_ignore_ascii_case(AUTOEXTEND))
        .map(|_| &word[AUTOEXTEND.len()..])
}

/// The valued word naming a backup snapshot's identity.
const BACKUP: &str = "backup=";

/// The value of a `backup=` word (any case of the key), if `word` is one.
fn backup_value(word: &str) -> Option<&str> {
    word.get(..BACKUP.len())
        .filter(|key| key.eq_ignore_ascii_case(BACKUP))
        .map(|_| &word[BACKUP.len()..])
}

/// Whether some `+`-joined word of `field` is an `autoextend=` word (whatever its value).
pub fn names_autoextend(field: &str) -> bool {
    field.split('+').any(|w| autoextend_value(w).is_some())
}

impl FeatureWords {
    /// Whether `word` is one of the feature words (any case, as the kernel compares them).
    pub fn is_word(word: &str) -> bool {
        autoextend_value(word).is_some()
            || backup_value(word).is_some()
            || [
                "discard_zeroes_cow",
                "discard_passdown_origin",
                "force",
                "nofreeze",
            ]
            .iter()
            .any(|w| w.eq_ignore_ascii_case(word))
    }

    /// Whether `field` is one or more feature words joined by `+`.
    pub fn is_field(field: &str) -> bool {
        !field.is_empty() && field.split('+').all(Self::is_word)
    }

    /// Parses words, each one feature; checks the kernel's rule between them.
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<FeatureWords, String> {
        let mut out = FeatureWords::default();
        for word in words {
            if let Some(value) = autoextend_value(word) {
                if out.features.autoextend.is_some() {
                    return Err("snapshot feature autoextend= is given twice".to_string());
                }
                let ax = Autoextend::parse_value(value).map_err(|why| {
                    format!(
                        "snapshot feature \"{}\": {why} (expected \
                         autoextend=THRESHOLD:PERCENT[:MAX], like autoextend=70:20:10G; in a -o \
                         snapshot= spec autoextend=70/20/10G)",
                        word.escape_debug()
                    )
                })?;
                out.features.autoextend = Some(ax);
                continue;
            }
            if let Some(value) = backup_value(word) {
                if out.features.backup.is_some() {
                    return Err("snapshot feature backup= is given twice".to_string());
                }
                let id = BackupId::parse(value)
                    .map_err(|why| format!("snapshot feature backup=: {why}"))?;
                out.features.backup = Some(id);
                continue;
            }
            let flag = match word.to_ascii_lowercase().as_str() {
                "discard_zeroes_cow" => &mut out.features.discard_zeroes_cow,
                "discard_passdown_origin" => &mut out.features.discard_passdown_origin,
                "force" => &mut out.force,
                "nofreeze" => &mut out.nofreeze,
                _ => {
                    return Err(format!(
                        "unknown snapshot feature {:?} (known: {FEATURE_WORDS})",
                        word.escape_debug().to_string()
                    ));
                }
            };
            if *flag {
                return Err(format!("snapshot feature {word} is given twice"));
            }
            *flag = true;
        }
        out.features.check()?;
        Ok(out)
    }

    /// Parses one `+`-joined field.
    pub fn parse_field(field: &str) -> Result<FeatureWords, String> {
        FeatureWords::parse(field.split('+'))
    }
}

impl SnapshotFeatures {
    /// The kernel's rule: passdown needs discard_zeroes_cow.
    pub fn check(&self) -> Result<(), String> {
        if self.discard_passdown_origin && !self.discard_zeroes_cow {
            return Err(
                "discard_passdown_origin feature depends on discard_zeroes_cow".to_string(),
            );
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == SnapshotFeatures::default()
    }

    /// The words: the kernel's, in its order, then `autoextend=T:P[:MAX]`, then `backup=ID`.
    pub fn words(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.discard_zeroes_cow {
            out.push("discard_zeroes_cow".to_string());
        }
        if self.discard_passdown_origin {
            out.push("discard_passdown_origin".to_string());
        }
        if let Some(ax) = self.autoextend {
            out.push(format!("{AUTOEXTEND}{ax}"));
        }
        if let Some(id) = self.backup {
            out.push(format!("{BACKUP}{id}"));
        }
        out
    }

    /// The `+`-joined field of a `-o snapshot=` spec: as [`fmt::Display`], with `/` between
    /// the autoextend value's fields, since `:` would split the spec.
    pub fn spec_field(&self) -> String {
        let words: Vec<String> = self
            .words()
            .into_iter()
            .map(|w| match autoextend_value(&w) {
                Some(v) => format!("{AUTOEXTEND}{}", v.replace(':', "/")),
                None => w,
            })
            .collect();
        words.join("+")
    }

    /// Parses a `+`-joined field of features only (the registry's, status's): `force` and
    /// `nofreeze` are not among them.
    pub fn parse_field(field: &str) -> Result<SnapshotFeatures, String> {
        let words = FeatureWords::parse_field(field)?;
        if words.force {
            return Err("force is not recorded with a snapshot".to_string());
        }
        if words.nofreeze {
            return Err("nofreeze is not recorded with a snapshot".to_string());
        }
        Ok(words.features)
    }
}

/// `+`-joined words; empty when there are none.
impl fmt::Display for SnapshotFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.words().join("+"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_parse_and_print() {
        let w = FeatureWords::parse(["discard_zeroes_cow", "FORCE"]).unwrap();
        assert!(w.force && w.features.discard_zeroes_cow);
        assert!(!w.features.discard_passdown_origin);
        let w = FeatureWords::parse_field("discard_zeroes_cow+discard_passdown_origin").unwrap();
        assert_eq!(
            w.features.to_string(),
            "discard_zeroes_cow+discard_passdown_origin"
        );
        assert_eq!(SnapshotFeatures::default().to_string(), "");
        assert!(FeatureWords::is_field("force+discard_zeroes_cow"));
        let w = FeatureWords::parse(["nofreeze", "force"]).unwrap();
        assert!(w.nofreeze && w.force && w.features.is_empty());
        assert!(!FeatureWords::is_field("force+"));
        assert!(!FeatureWords::is_field("8"));
    }

    #[test]
    fn bad_words() {
        let e = FeatureWords::parse(["discard_passdown_origin"]).unwrap_err();
        assert!(e.contains("depends on discard_zeroes_cow"), "{e}");
        assert!(FeatureWords::parse(["force", "force"]).is_err());
        assert!(FeatureWords::parse(["bogus"]).is_err());
        assert!(SnapshotFeatures::parse_field("force").is_err());
        assert!(SnapshotFeatures::parse_field("nofreeze").is_err());
        assert!(FeatureWords::parse(["nofreeze", "NOFREEZE"]).is_err());
        assert!(SnapshotFeatures::parse_field("").is_err());
        for bad in [
            "autoextend=",
            "autoextend=70",
            "autoextend=100:20",
            "autoextend=70:20:big",
            "autoextend=70:20+autoextend=60:10",
        ] {
            let e = SnapshotFeatures::parse_field(bad).unwrap_err();
            assert!(e.contains("autoextend") && !e.contains('\n'), "{bad}: {e}");
        }
        // Valued words are words of their own: a bare `autoextend` is not one.
        assert!(!FeatureWords::is_word("autoextend"));
    }

    #[test]
    fn autoextend_is_a_recorded_valued_word() {
        let w =
            FeatureWords::parse(["discard_zeroes_cow", "autoextend=70:20:10G", "force"]).unwrap();
        let ax = w.features.autoextend.unwrap();
        assert_eq!(
            (ax.threshold, ax.percent, ax.max_bytes),
            (70, 20, Some(10 << 30))
        );
        assert!(w.force && w.features.discard_zeroes_cow && !w.features.is_empty());
        assert_eq!(
            w.features.to_string(),
            "discard_zeroes_cow+autoextend=70:20:10G"
        );
        assert_eq!(
            w.features.spec_field(),
            "discard_zeroes_cow+autoextend=70/20/10G"
        );
        // Both forms, and the key in any case, read the same; what is shown reads back.
        for text in [
            "discard_zeroes_cow+autoextend=70:20:10G",
            "discard_zeroes_cow+AUTOEXTEND=70/20/10240M",
        ] {
            assert_eq!(SnapshotFeatures::parse_field(text).unwrap(), w.features);
        }
        let alone = SnapshotFeatures::parse_field("autoextend=50:50").unwrap();
        assert_eq!(alone.to_string(), "autoextend=50:50");
        assert_eq!(
            SnapshotFeatures::parse_field(&alone.to_string()).unwrap(),
            alone
        );
        // Odd maxima come back exactly.
        let odd = SnapshotFeatures::parse_field("autoextend=1:1000:1536K").unwrap();
        assert_eq!(odd.to_string(), "autoextend=1:1000:1536K");
        let odd = SnapshotFeatures::parse_field("autoextend=1:1:6320640").unwrap();
        assert_eq!(odd.to_string(), "autoextend=1:1:6320640");
        assert!(FeatureWords::is_field("force+autoextend=70/20"));
        assert!(names_autoextend("force+Autoextend=x"));
    }

    #[test]
    fn backup_identity_is_a_recorded_valued_word() {
        let id = "0123456789abcdef0123456789ABCDEF";
        let f = SnapshotFeatures::parse_field(&format!("autoextend=70:20+backup={id}")).unwrap();
        assert_eq!(f.backup, Some(BackupId(0x0123456789abcdef0123456789abcdef)));
        let shown = f.to_string();
        assert_eq!(
            shown,
            "autoextend=70:20+backup=0123456789abcdef0123456789abcdef"
        );
        assert_eq!(SnapshotFeatures::parse_field(&shown).unwrap(), f);
        assert_eq!(
            f.spec_field(),
            "autoextend=70/20+backup=0123456789abcdef0123456789abcdef"
        );
        for bad in [
            "backup=",
            "backup=123",
            "backup=0123456789abcdef0123456789abcdeg",
            "backup=0123456789abcdef0123456789abcdef0",
            "backup=+0123456789abcdef0123456789abcde",
        ] {
            let e = SnapshotFeatures::parse_field(bad).unwrap_err();
            assert!(e.contains("backup") && !e.contains('\n'), "{bad}: {e}");
        }
        let twice = format!("backup={id}+backup={id}");
        assert!(SnapshotFeatures::parse_field(&twice).is_err());
        assert!(!FeatureWords::is_word("backup"));
        let a = BackupId::random().unwrap();
        assert_ne!(a, BackupId::random().unwrap());
        assert_eq!(BackupId::parse(&a.to_string()).unwrap(), a);
    }
}
