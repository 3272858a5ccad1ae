//! What a backup run does, decided from the image's marker and the mount's snapshots before
//! anything is written.
//!
//! The rule that makes an incremental copy right: if the image equals snapshot B, then copying
//! the chunks B lists as changed (`crate::changes`), read from a newer snapshot N, makes the
//! image equal N, since every other chunk of the origin still holds what B holds. An
//! interrupted run leaves the image as B plus some chunks of that list (marker `incomplete`,
//! `base` B): copying B's whole list again, from a new snapshot, still makes the image equal
//! it, since B's list only grows. So an incomplete image with its base still valid finishes
//! incrementally; without a usable base (a first copy, an invalid base) it gets a full copy.
//! An image that is not this volume's (another registry or size, no marker, a base the mount
//! does not have) is refused unless a full copy is asked for.

use super::marker::{Marker, SnapRef, Stamp, State};
use std::path::Path;

/// A backup snapshot of the mount: its name, its identity (`backup=ID`) and whether its
/// changed-chunk map can be used.
#[derive(Clone, Debug)]
pub struct Attached {
    pub name: String,
    pub id: Option<crate::features::BackupId>,
    /// Valid, not merging and persistent: its map says what changed since it was taken.
    pub usable: bool,
}

/// What the run knows before it decides.
pub struct Facts<'a> {
    pub registry: &'a Path,
    pub volume_bytes: u64,
    /// The image was just created, or is an empty file: it holds nothing to lose.
    pub image_new: bool,
    /// A file image of the volume's size with no data (holes only): what a first run killed
    /// before its marker leaves. Without a marker, nothing in it to lose.
    pub image_unwritten: bool,
    /// `None` if the image's size fits the volume; else why not.
    pub size_problem: Option<String>,
    /// The image now.
    pub stamp: Stamp,
    pub snapshots: &'a [Attached],
    /// `--full`: copy everything, also over an image that is not this volume's.
    pub full: bool,
    /// Where the marker is, for messages.
    pub marker_path: &'a Path,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Copy {
    /// Everything.
    Full,
    /// The chunks this base lists as changed.
    Changes(SnapRef),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub copy: Copy,
    /// Said in the output when the run does something else than the usual.
    pub note: Option<String>,
    /// Backup snapshots an earlier run left attached: dropped before this run writes its
    /// marker.
    pub cleanup: Vec<SnapRef>,
    /// The base this run supersedes: dropped once the image is complete again.
    pub retire: Option<SnapRef>,
}

impl Facts<'_> {
    /// The mount's snapshot with `r`'s name and identity: another snapshot of that name never
    /// passes for it.
    fn find(&self, r: &SnapRef) -> Option<&Attached> {
        self.snapshots
            .iter()
            .find(|s| s.name == r.name && s.id == Some(r.id))
    }

    fn full(&self, note: String, retire: Option<SnapRef>, cleanup: Vec<SnapRef>) -> Plan {
        Plan {
            copy: Copy::Full,
            note: Some(note),
            cleanup,
            retire,
        }
    }

    /// A refusal, unless `--full` was given.
    fn foreign(&self, why: String) -> Result<Plan, String> {
        if self.full {
            Ok(self.full(
                format!("{why}; --full: copying everything"),
                None,
                Vec::new(),
            ))
        } else {
            Err(format!("{why}; --full overwrites it with a full copy"))
        }
    }
}

pub fn plan(marker: Result<Option<Marker>, String>, facts: &Facts) -> Result<Plan, String> {
    let marker = match marker {
        Err(why) => return facts.foreign(why),
        Ok(None) if facts.image_new || facts.image_unwritten => {
            return Ok(facts.full("first backup: copying everything".into(), None, Vec::new()));
        }
        Ok(None) => {
            return facts.foreign(format!(
                "the image exists but has no backup marker ({} is missing): it is not a snapfs \
                 backup of this volume",
                facts.marker_path.display()
            ));
        }
        Ok(Some(m)) => m,
    };
    if marker.registry != facts.registry || marker.volume_bytes != facts.volume_bytes {
        return facts.foreign(format!(
            "the image is a backup of another volume (registry {}, {} bytes; this one: \
             registry {}, {} bytes)",
            marker.registry.display(),
            marker.volume_bytes,
            facts.registry.display(),
            facts.volume_bytes
        ));
    }
    if let Some(why) = &facts.size_problem {
        return facts.foreign(why.clone());
    }
    // Left attached by a run that died: the attempt it copied from, the base it replaced.
    let cleanup: Vec<SnapRef> = [&marker.attempt, &marker.previous]
        .into_iter()
        .flatten()
        .filter(|r| facts.find(r).is_some())
        .cloned()
        .collect();
    let base = marker.base.clone();
    let found = base.as_ref().and_then(|b| facts.find(b));
    let retire = found.and(base.clone());
    if facts.image_new {
        // The image was removed (or emptied) since: its marker describes nothing any more.
        return Ok(facts.full(
            "the image is new or empty (its old marker is void): copying everything".into(),
            retire,
            cleanup,
        ));
    }
    match (marker.state, &base, found) {
        (State::Complete, Some(b), None) => facts.foreign(format!(
            "the image holds snapshot {b}, which this mount does not have (dropped by hand, or \
             the image is another volume's backup): what changed since is unknown"
        )),
        (State::Complete, Some(b), Some(s)) if !s.usable => Ok(facts.full(
            format!(
                "base {} is invalid, merging or transient: what changed since is unknown; \
                 copying everything",
                b.name
            ),
            retire,
            cleanup,
        )),
        (State::Complete, Some(b), Some(_)) if marker.stamp != Some(facts.stamp) => Ok(facts.full(
            format!(
                "the image was written after its backup of {} (its mtime or first 64 KiB \
                 changed: a read-write mount?): copying everything",
                b.name
            ),
            retire,
            cleanup,
        )),
        (State::Complete, Some(b), Some(_)) if facts.full => {
            Ok(facts.full("--full: copying everything".into(), retire, cleanup))
        }
        (State::Complete, Some(b), Some(_)) => Ok(Plan {
            copy: Copy::Changes(b.clone()),
            note: None,
            cleanup,
            retire,
        }),
        (State::Complete, None, _) => unreachable!("a complete marker names its base"),
        (State::Incomplete, Some(b), Some(s)) if s.usable && !facts.full => Ok(Plan {
            copy: Copy::Changes(b.clone()),
            note: Some(format!(
                "the image was left incomplete by an interrupted run{}: copying every range \
                 {} lists again",
                marker
                    .attempt
                    .as_ref()
                    .map(|a| format!(" (copying {} over {})", a.name, b.name))
                    .unwrap_or_default(),
                b.name
            )),
            cleanup,
            retire,
        }),
        (State::Incomplete, _, _) => Ok(facts.full(
            match (&base, found) {
                (_, _) if facts.full => {
                    "--full: the image was incomplete; copying everything".into()
                }
                (None, _) => "the image was left incomplete by an interrupted full copy: \
                              copying everything"
                    .to_string(),
                (Some(b), _) => format!(
                    "the image was left incomplete by an interrupted run and its base {} is \
                     gone, invalid, merging or transient: copying everything",
                    b.name
                ),
            },
            retire,
            cleanup,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::BackupId;
    use std::path::PathBuf;

    fn r(name: &str, id: u128) -> SnapRef {
        SnapRef {
            name: name.into(),
            id: BackupId(id),
        }
    }

    fn att(name: &str, id: u128, usable: bool) -> Attached {
        Attached {
            name: name.into(),
            id: Some(BackupId(id)),
            usable,
        }
    }

    const STAMP: Stamp = Stamp {
        mtime_ns: Some(5),
        head: 9,
    };

    fn marker(state: State, base: Option<SnapRef>, attempt: Option<SnapRef>) -> Marker {
        Marker {
            state,
            registry: PathBuf::from("/r.reg"),
            volume_bytes: 1 << 20,
            origin: PathBuf::from("/o.img"),
            base,
            attempt,
            previous: None,
            stamp: (state == State::Complete).then_some(STAMP),
        }
    }

    fn run(m: Option<Marker>, snaps: &[Attached], full: bool, new: bool) -> Result<Plan, String> {
        let facts = Facts {
            registry: Path::new("/r.reg"),
            volume_bytes: 1 << 20,
            image_new: new,
            image_unwritten: false,
            size_problem: None,
            stamp: STAMP,
            snapshots: snaps,
            full,
            marker_path: Path::new("/img.snapfs-backup"),
        };
        plan(Ok(m), &facts)
    }

    #[test]
    fn the_usual_cycle_is_incremental_and_retires_the_base() {
        let m = marker(State::Complete, Some(r("b", 1)), None);
        let p = run(Some(m), &[att("b", 1, true)], false, false).unwrap();
        assert_eq!(p.copy, Copy::Changes(r("b", 1)));
        assert_eq!((p.note, p.retire), (None, Some(r("b", 1))));
    }

    #[test]
    fn interrupted_runs_finish_from_their_base_or_copy_everything() {
        let m = marker(State::Incomplete, Some(r("b", 1)), Some(r("n", 2)));
        let snaps = [att("b", 1, true), att("n", 2, true)];
        let p = run(Some(m.clone()), &snaps, false, false).unwrap();
        assert_eq!(p.copy, Copy::Changes(r("b", 1)));
        assert_eq!(p.cleanup, [r("n", 2)]);
        assert!(p.note.unwrap().contains("interrupted"));
        // The base went invalid meanwhile: everything, and it is retired.
        let p = run(Some(m.clone()), &[att("b", 1, false)], false, false).unwrap();
        assert_eq!((p.copy, p.retire), (Copy::Full, Some(r("b", 1))));
        // Interrupted first copy.
        let p = run(
            Some(marker(State::Incomplete, None, Some(r("n", 2)))),
            &snaps,
            false,
            false,
        );
        assert_eq!(p.unwrap().copy, Copy::Full);
    }

    #[test]
    fn a_modified_image_or_an_unusable_base_gets_a_full_copy() {
        let mut m = marker(State::Complete, Some(r("b", 1)), None);
        m.stamp = Some(Stamp { head: 8, ..STAMP });
        let p = run(Some(m), &[att("b", 1, true)], false, false).unwrap();
        assert_eq!(p.copy, Copy::Full);
        assert!(p.note.unwrap().contains("written after"));
        let m = marker(State::Complete, Some(r("b", 1)), None);
        assert_eq!(
            run(Some(m), &[att("b", 1, false)], false, false)
                .unwrap()
                .copy,
            Copy::Full
        );
    }

    #[test]
    fn foreign_images_are_refused_unless_full() {
        // Same name, another identity: another snapshot.
        let m = marker(State::Complete, Some(r("b", 1)), None);
        let e = run(Some(m.clone()), &[att("b", 2, true)], false, false).unwrap_err();
        assert!(e.contains("does not have") && e.contains("--full"), "{e}");
        let p = run(Some(m.clone()), &[att("b", 2, true)], true, false).unwrap();
        assert_eq!(
            (p.copy, p.retire),
            (Copy::Full, None),
            "nothing of it is dropped"
        );
        // No marker on an existing image.
        assert!(
            run(None, &[], false, false)
                .unwrap_err()
                .contains("no backup marker")
        );
        assert_eq!(run(None, &[], false, true).unwrap().copy, Copy::Full);
        let facts = |unwritten| Facts {
            registry: Path::new("/r.reg"),
            volume_bytes: 1 << 20,
            image_new: false,
            image_unwritten: unwritten,
            size_problem: None,
            stamp: STAMP,
            snapshots: &[],
            full: false,
            marker_path: Path::new("/m"),
        };
        assert_eq!(plan(Ok(None), &facts(true)).unwrap().copy, Copy::Full);
        assert!(plan(Ok(None), &facts(false)).is_err());
        // A marker left beside an image that is new again: void, everything is copied.
        let m = marker(State::Complete, Some(r("b", 1)), None);
        let p = run(Some(m.clone()), &[att("b", 1, true)], false, true).unwrap();
        assert_eq!((p.copy, p.retire), (Copy::Full, Some(r("b", 1))));
        // Another volume.
        let mut other = m.clone();
        other.volume_bytes = 2 << 20;
        assert!(
            run(Some(other), &[att("b", 1, true)], false, false)
                .unwrap_err()
                .contains("another volume")
        );
        let mut other = m;
        other.registry = PathBuf::from("/other.reg");
        assert!(run(Some(other), &[att("b", 1, true)], false, false).is_err());
        // An unreadable marker.
        let facts = Facts {
            registry: Path::new("/r.reg"),
            volume_bytes: 1 << 20,
            image_new: false,
            image_unwritten: false,
            size_problem: None,
            stamp: STAMP,
            snapshots: &[],
            full: false,
            marker_path: Path::new("/m"),
        };
        assert!(
            plan(Err("bad".into()), &facts)
                .unwrap_err()
                .contains("--full")
        );
    }

    #[test]
    fn leftovers_of_a_dead_run_are_cleaned_up_by_identity() {
        let mut m = marker(State::Complete, Some(r("b", 1)), None);
        m.previous = Some(r("a", 0));
        let snaps = [att("a", 0, true), att("b", 1, true)];
        let p = run(Some(m.clone()), &snaps, false, false).unwrap();
        assert_eq!(p.cleanup, [r("a", 0)]);
        let snaps = [att("a", 9, true), att("b", 1, true)];
        assert!(
            run(Some(m), &snaps, false, false)
                .unwrap()
                .cleanup
                .is_empty()
        );
    }
}
