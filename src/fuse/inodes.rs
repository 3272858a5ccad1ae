//! Inode numbers of the mount. Fixed numbers for the fixed files; snapshots get numbers from a
//! counter that only goes up, so a number is never reused within a mount: a snapshot dropped
//! and attached again under the same name is a new file to the kernel (its old handles fail
//! instead of reaching the new snapshot).

use crate::volume::Snapshot;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub(super) const ROOT_INO: u64 = 1;
pub(crate) const ORIGIN_INO: u64 = 2;
pub(super) const STATUS_INO: u64 = 3;
pub(super) const CONTROL_INO: u64 = 4;
/// First snapshot inode number; numbers below it are kept for fixed files.
const FIRST_SNAPSHOT_INO: u64 = 16;

/// What an inode number stands for.
#[derive(Clone)]
pub(super) enum Node {
    Root,
    Origin,
    Status,
    Control,
    Snapshot(Arc<Snapshot>),
}

/// The snapshots the mount shows, by name and by inode number. Invariant: `by_name` and
/// `by_ino` hold the same entries, and every snapshot in them was attached when last synced.
pub(super) struct Inodes {
    by_name: BTreeMap<String, (u64, Arc<Snapshot>)>,
    by_ino: HashMap<u64, Arc<Snapshot>>,
    next_ino: u64,
}

impl Inodes {
    pub(super) fn new() -> Inodes {
        Inodes {
            by_name: BTreeMap::new(),
            by_ino: HashMap::new(),
            next_ino: FIRST_SNAPSHOT_INO,
        }
    }

    /// Brings the table in line with the volume's snapshot list. A snapshot keeps its number
    /// while it is the same object; a new object under an old name gets a new number.
    pub(super) fn sync(&mut self, current: &[Arc<Snapshot>]) {
        // The volume only lists attached snapshots, but a snapshot can be detached between
        // listing and here; it is then simply gone at the next sync. A merging snapshot has
        // no file: the origin reads as it did.
        let shown: Vec<&Arc<Snapshot>> = current
            .iter()
            .filter(|s| s.is_attached() && !s.is_merging())
            .collect();
        self.by_name.retain(|name, (ino, snap)| {
            let keep = shown
                .iter()
                .any(|s| s.name() == name && Arc::ptr_eq(s, snap));
            if !keep {
                self.by_ino.remove(ino);
            }
            keep
        });
        for snap in shown {
            if !self.by_name.contains_key(snap.name()) {
                let ino = self.next_ino;
                self.next_ino += 1;
                self.by_name
                    .insert(snap.name().to_string(), (ino, snap.clone()));
                self.by_ino.insert(ino, snap.clone());
            }
        }
        debug_assert_eq!(self.by_name.len(), self.by_ino.len());
    }

    pub(super) fn by_name(&self, name: &str) -> Option<(u64, Arc<Snapshot>)> {
        self.by_name.get(name).cloned()
    }

    pub(super) fn snapshot(&self, ino: u64) -> Option<Arc<Snapshot>> {
        self.by_ino.get(&ino).cloned()
    }

    /// `(inode, name)` of every snapshot, in name order.
    pub(super) fn list(&self) -> Vec<(u64, String)> {
        self.by_name
            .iter()
            .map(|(name, (ino, _))| (*ino, name.clone()))
            .collect()
    }

    pub(super) fn snapshots(&self) -> Vec<Arc<Snapshot>> {
        self.by_ino.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use crate::store::StoreKind;
    use crate::volume::{SnapshotConfig, Volume, VolumeOptions};

    fn transient(name: &str) -> SnapshotConfig {
        SnapshotConfig {
            name: name.to_string(),
            cow: Arc::new(MemDevice::new(name, 1 << 20)),
            kind: StoreKind::Transient,
            chunk_sectors: 8,
            features: Default::default(),
        }
    }

    #[test]
    fn numbers_are_stable_and_never_reused() {
        let origin = Arc::new(MemDevice::new("origin", 1 << 20));
        let volume = Volume::open(
            origin,
            vec![transient("a"), transient("b")],
            VolumeOptions::default(),
        )
        .unwrap();
        let mut inodes = Inodes::new();
        inodes.sync(&volume.snapshots());
        let (a, _) = inodes.by_name("a").unwrap();
        let (b, _) = inodes.by_name("b").unwrap();
        assert!(a >= FIRST_SNAPSHOT_INO && b >= FIRST_SNAPSHOT_INO && a != b);
        inodes.sync(&volume.snapshots());
        assert_eq!(
            inodes.by_name("a").unwrap().0,
            a,
            "same object, same number"
        );

        volume.detach_snapshot("a").unwrap();
        inodes.sync(&volume.snapshots());
        assert!(inodes.by_name("a").is_none() && inodes.snapshot(a).is_none());
        assert_eq!(inodes.list().len(), 1);

        volume.attach_snapshot(transient("a")).unwrap();
        inodes.sync(&volume.snapshots());
        let (a2, _) = inodes.by_name("a").unwrap();
        assert!(
            a2 > b && a2 != a,
            "a new snapshot never takes an old number"
        );
        assert_eq!(
            inodes.list(),
            vec![(a2, "a".to_string()), (b, "b".to_string())]
        );
    }
}
