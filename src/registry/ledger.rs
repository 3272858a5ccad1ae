//! The daemon's record of the snapshots it serves and where each came from, kept in step with
//! the registry file.
//!
//! When the file is written:
//! - at mount, once the volume is open (chunk sizes resolved);
//! - `snapshot`: after the volume attached it (a crash in between loses a snapshot that was
//!   never acknowledged); a failed save detaches it again and fails the command;
//! - `drop`: before the volume detaches it (a crash in between leaves it unrecorded, which is
//!   what was asked);
//! - a merge completing: the volume detaches the merged snapshot by itself, so [`Ledger::sync`]
//!   runs before and after every control command, at every status read and once a second. Until
//!   it runs the file still names the merged snapshot, whose COW is then an empty, valid store:
//!   attaching it again would only start a fresh snapshot, never expose stale data.
//!
//! Without a registry nothing is written and [`Ledger::warnings`] says what the mount options
//! must say instead.

use super::{RegistryError, option_text, save};
use crate::options::SnapshotSpec;
use crate::volume::Volume;
use parking_lot::Mutex;
use std::fmt;
use std::path::{Path, PathBuf};

/// How a snapshot came to be attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A `-o snapshot=` option of this mount.
    Options,
    /// The registry, at mount.
    Registry,
    /// A `snapshot` command while mounted.
    Live,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Options => "options",
            Source::Registry => "registry",
            Source::Live => "live",
        })
    }
}

struct Entry {
    spec: SnapshotSpec,
    source: Source,
}

#[derive(Default)]
struct State {
    entries: Vec<Entry>,
    /// Dropped snapshots that this mount's options still name: the next mount with the same
    /// options would attach their stale COW.
    dropped_options: Vec<SnapshotSpec>,
    /// The text last written, so that unchanged sets are not written again.
    saved: Option<String>,
    /// The last failure to write the registry, until a write succeeds.
    save_error: Option<String>,
}

/// What the daemon serves, and the registry file that records it (if any).
pub struct Ledger {
    path: Option<PathBuf>,
    /// A read-only mount writes nothing, the registry included.
    read_only: bool,
    state: Mutex<State>,
    /// The daemon's log file (`-o log=`), shown in status so that tools writing files (a
    /// backup image) can tell it from theirs.
    log: std::sync::OnceLock<PathBuf>,
}

impl Ledger {
    /// A ledger for the snapshots a mount attached, in the order of `planned`.
    pub fn new(
        path: Option<PathBuf>,
        read_only: bool,
        planned: Vec<(SnapshotSpec, Source)>,
    ) -> Ledger {
        let entries = planned
            .into_iter()
            .map(|(spec, source)| Entry { spec, source })
            .collect();
        Ledger {
            path,
            read_only,
            state: Mutex::new(State {
                entries,
                ..State::default()
            }),
            log: std::sync::OnceLock::new(),
        }
    }

    /// Records the daemon's log file, once.
    pub fn set_log(&self, path: PathBuf) {
        let _ = self.log.set(path);
    }

    /// The daemon's log file, if it has one.
    pub fn log(&self) -> Option<&Path> {
        self.log.get().map(PathBuf::as_path)
    }

    /// The registry file, if the mount has one.
    pub fn registry(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Once the volume is open: records the chunk size each snapshot really uses (an option
    /// may have said "on-disk") and writes the registry. An error refuses the mount.
    pub fn opened(&self, volume: &Volume) -> Result<(), RegistryError> {
        let mut st = self.state.lock();
        for e in st.entries.iter_mut() {
            if let Some(snap) = volume.snapshot(&e.spec.name) {
                e.spec.chunk_sectors = snap.chunk_size().sectors();
            }
        }
        self.write(&mut st)
    }

    /// Records a snapshot attached live and writes the registry. On an error nothing is
    /// recorded (the caller detaches the snapshot again).
    pub fn attached(&self, spec: SnapshotSpec) -> Result<(), RegistryError> {
        let mut st = self.state.lock();
        let name = spec.name.clone();
        st.entries.retain(|e| e.spec.name != name);
        st.entries.push(Entry {
            spec,
            source: Source::Live,
        });
        if let Err(e) = self.write(&mut st) {
            st.entries.pop();
            return Err(e);
        }
        st.dropped_options.retain(|d| d.name != name);
        Ok(())
    }

    /// Forgets `name` and writes the registry; called before the volume detaches it. On an
    /// error nothing is forgotten.
    pub fn forget(&self, name: &str) -> Result<(), RegistryError> {
        let mut st = self.state.lock();
        let Some(at) = st.entries.iter().position(|e| e.spec.name == name) else {
            return Ok(());
        };
        let entry = st.entries.remove(at);
        if let Err(e) = self.write(&mut st) {
            st.entries.insert(at, entry);
            return Err(e);
        }
        if entry.source == Source::Options {
            st.dropped_options.push(entry.spec);
        }
        Ok(())
    }

    /// Forgets what the volume detached by itself (a completed merge) and writes the registry
    /// if that changed anything. Errors are logged and shown as a warning.
    pub fn sync(&self, volume: &Volume) {
        let attached: Vec<String> = volume
            .snapshots()
            .iter()
            .map(|s| s.name().to_string())
            .collect();
        let mut st = self.state.lock();
        let before = st.entries.len();
        st.entries.retain(|e| attached.contains(&e.spec.name));
        if st.entries.len() != before || st.save_error.is_some() {
            let _ = self.write(&mut st);
        }
    }

    /// How `name` was attached, if the ledger knows it.
    pub fn source(&self, name: &str) -> Option<Source> {
        let st = self.state.lock();
        st.entries
            .iter()
            .find(|e| e.spec.name == name)
            .map(|e| e.source)
    }

    /// What the next mount would get wrong, for people: one sentence each.
    pub fn warnings(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut out = Vec::new();
        for e in st.entries.iter().filter(|e| e.source == Source::Live) {
            if !e.spec.kind.is_persistent() {
                out.push(format!(
                    "snapshot {} is transient (N): it ends with this mount (or its drop), is \
                     not recorded anywhere, and its COW is blanked when it ends",
                    e.spec.name
                ));
            } else if self.path.is_none() {
                out.push(unrecorded_warning(&e.spec));
            }
        }
        for spec in &st.dropped_options {
            out.push(format!(
                "snapshot {} was dropped but this mount's options still name it: remove {} \
                 from them (fstab), or the next mount attaches its stale COW",
                spec.name,
                option_text(spec)
            ));
        }
        if let Some(e) = &st.save_error {
            out.push(e.clone());
        }
        out
    }

    /// The warning about `name` alone, if there is one (for a command's answer).
    pub fn warning_for(&self, name: &str) -> Option<String> {
        let needle = format!("snapshot {name} ");
        self.warnings().into_iter().find(|w| w.starts_with(&needle))
    }

    /// Writes the registry if there is one and the text changed.
    fn write(&self, st: &mut State) -> Result<(), RegistryError> {
        let Some(path) = self.path.as_deref().filter(|_| !self.read_only) else {
            return Ok(());
        };
        // A transient snapshot ends with its mount: recording it would bring its name back
        // at the next mount with new content.
        let specs: Vec<SnapshotSpec> = st
            .entries
            .iter()
            .filter(|e| e.spec.kind.is_persistent())
            .map(|e| e.spec.clone())
            .collect();
        let text = super::render(&specs);
        if st.saved.as_deref() == Some(text.as_str()) {
            return Ok(());
        }
        match save(path, &specs) {
            Ok(()) => {
                log::debug!("registry {}: {} snapshot(s)", path.display(), specs.len());
                st.saved = Some(text);
                st.save_error = None;
                Ok(())
            }
            Err(error) => {
                let error = RegistryError::Write {
                    path: path.to_path_buf(),
                    error,
                };
                let why = error.to_string();
                if st.save_error.as_deref() != Some(why.as_str()) {
                    log::error!("{why}");
                }
                st.save_error = Some(why);
                Err(error)
            }
        }
    }
}

fn unrecorded_warning(spec: &SnapshotSpec) -> String {
    format!(
        "snapshot {} is recorded nowhere: the next mount will not attach it and it will go \
         stale. Add {} to this mount's options (fstab), or mount with -o registry=PATH",
        spec.name,
        option_text(spec)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::store::StoreKind;
    use crate::volume::{SnapshotConfig, VolumeOptions};
    use std::sync::Arc;

    const P: StoreKind = StoreKind::Persistent { overflow: false };

    fn spec(name: &str, chunk: u64) -> SnapshotSpec {
        SnapshotSpec::new(name, PathBuf::from(format!("/cow/{name}.cow")), P, chunk)
    }

    fn volume(names: &[&str]) -> Arc<Volume> {
        let origin = Arc::new(MemDevice::new("origin", 1 << 20));
        let configs = names
            .iter()
            .map(|n| SnapshotConfig {
                name: n.to_string(),
                cow: Arc::new(MemDevice::new(n, 1 << 20)),
                kind: P,
                chunk_sectors: 8,
                features: Default::default(),
            })
            .collect();
        Arc::new(Volume::open(origin, configs, VolumeOptions::default()).unwrap())
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("snapfs-ledger-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_file_follows_every_change() {
        let dir = scratch("follow");
        let path = dir.join("vol.reg");
        let vol = volume(&["a"]);
        let ledger = Ledger::new(
            Some(path.clone()),
            false,
            vec![(spec("a", 0), Source::Options)],
        );
        ledger.opened(&vol).unwrap();
        assert_eq!(
            super::super::load(&path).unwrap(),
            vec![spec("a", 8)],
            "chunk resolved"
        );
        ledger.attached(spec("b", 16)).unwrap();
        assert_eq!(ledger.source("b"), Some(Source::Live));
        assert_eq!(super::super::load(&path).unwrap().len(), 2);
        ledger.forget("b").unwrap();
        assert_eq!(super::super::load(&path).unwrap(), vec![spec("a", 8)]);
        assert!(ledger.warnings().is_empty(), "{:?}", ledger.warnings());
        // The volume detached "a" by itself (as a completed merge does).
        vol.detach_snapshot("a").unwrap();
        ledger.sync(&vol);
        assert_eq!(super::super::load(&path).unwrap(), vec![]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_registry_the_warnings_say_what_to_add() {
        let vol = volume(&["a"]);
        let ledger = Ledger::new(None, false, vec![(spec("a", 8), Source::Options)]);
        ledger.opened(&vol).unwrap();
        ledger.attached(spec("live", 8)).unwrap();
        let w = ledger
            .warning_for("live")
            .expect("a warning for a live snapshot");
        assert!(
            w.contains("snapshot=live:/cow/live.cow:P:8") && w.contains("registry="),
            "{w}"
        );
        ledger.forget("a").unwrap();
        let w = ledger
            .warning_for("a")
            .expect("a warning for a dropped option");
        assert!(w.contains("remove snapshot=a:/cow/a.cow:P:8"), "{w}");
        assert_eq!(ledger.warnings().len(), 2);
    }

    #[test]
    fn a_failed_write_keeps_the_entry_and_warns() {
        let dir = scratch("fail");
        let path = dir.join("missing-dir").join("vol.reg");
        let ledger = Ledger::new(Some(path), false, vec![(spec("a", 8), Source::Options)]);
        let e = ledger.forget("a").unwrap_err();
        assert!(matches!(e, RegistryError::Write { .. }), "{e:?}");
        assert!(e.to_string().contains("could not be written"), "{e}");
        assert_eq!(
            ledger.source("a"),
            Some(Source::Options),
            "nothing forgotten"
        );
        assert!(
            ledger
                .warnings()
                .iter()
                .any(|w| w.contains("could not be written"))
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn read_only_writes_nothing() {
        let dir = scratch("ro");
        let path = dir.join("vol.reg");
        let ledger = Ledger::new(
            Some(path.clone()),
            true,
            vec![(spec("a", 8), Source::Registry)],
        );
        ledger.opened(&volume(&["a"])).unwrap();
        assert!(!path.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
