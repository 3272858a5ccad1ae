//! File attributes and filesystem figures (`stat`, `statfs`).

use super::SnapFs;
use super::inodes::{CONTROL_INO, Node, ORIGIN_INO, ROOT_INO, STATUS_INO};
use crate::units::SECTOR_BYTES;
use fuser::{FileAttr, FileType, INodeNo};

/// Block size reported by `stat` and `statfs`. The loop driver derives its discard granularity
/// from the filesystem's block size: 4096 matches the pages ext4 and XFS work in.
pub(super) const BLOCK_BYTES: u64 = 4096;

/// `statfs` figures, in [`BLOCK_BYTES`] blocks.
pub(super) struct FsFigures {
    pub(super) blocks: u64,
    pub(super) free: u64,
    pub(super) files: u64,
}

impl SnapFs {
    /// Attributes of `node` (inode `ino`). Modes, enforced by the kernel
    /// (`default_permissions`): origin and snapshots 0600 (0400 read-only), status 0444,
    /// control 0600 (it answers the last command when read; absent on a read-only mount).
    pub(super) fn attr(&self, ino: u64, node: &Node) -> FileAttr {
        let size_bytes = self.volume.size_bytes();
        let data_perm = if self.settings.read_only {
            0o400
        } else {
            0o600
        };
        let (kind, perm, size, allocated) = match node {
            Node::Root => (FileType::Directory, 0o755, 0, 0),
            Node::Origin => {
                let allocated = self.volume.origin_allocated_bytes().unwrap_or(size_bytes);
                (FileType::RegularFile, data_perm, size_bytes, allocated)
            }
            Node::Snapshot(snap) => (
                FileType::RegularFile,
                data_perm,
                size_bytes,
                snap.data_bytes(),
            ),
            Node::Status => {
                let len = crate::status::dm_lines_as_held(&self.volume).len() as u64;
                (FileType::RegularFile, 0o444, len, 0)
            }
            Node::Control => {
                let len = self.control.lock().len() as u64 + 1;
                (FileType::RegularFile, 0o600, len, 0)
            }
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: allocated.div_ceil(SECTOR_BYTES),
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.settings.uid,
            gid: self.settings.gid,
            rdev: 0,
            blksize: BLOCK_BYTES as u32,
            flags: 0,
        }
    }

    /// Space: the origin plus every COW device; free is what the COWs have not allocated yet.
    pub(super) fn figures(&self) -> FsFigures {
        let snapshots = self.inodes.read().snapshots();
        let mut total_bytes = self.volume.size_bytes();
        let mut free_bytes = 0u64;
        for snap in &snapshots {
            let usage = snap.usage();
            total_bytes += usage.total_sectors * SECTOR_BYTES;
            free_bytes +=
                usage.total_sectors.saturating_sub(usage.allocated_sectors) * SECTOR_BYTES;
        }
        let fixed_files = if self.settings.read_only { 3 } else { 4 };
        FsFigures {
            blocks: total_bytes / BLOCK_BYTES,
            free: free_bytes / BLOCK_BYTES,
            files: fixed_files + snapshots.len() as u64,
        }
    }

    /// The root directory's entries, `(inode, name, type)`, in listing order.
    pub(super) fn entries(&self) -> Vec<(u64, String, FileType)> {
        let mut list = vec![
            (ROOT_INO, ".".to_string(), FileType::Directory),
            (ROOT_INO, "..".to_string(), FileType::Directory),
            (ORIGIN_INO, "origin".to_string(), FileType::RegularFile),
            (STATUS_INO, "status".to_string(), FileType::RegularFile),
        ];
        if !self.settings.read_only {
            list.push((CONTROL_INO, "control".to_string(), FileType::RegularFile));
        }
        for (ino, name) in self.inodes.read().list() {
            list.push((ino, name, FileType::RegularFile));
        }
        list
    }

    /// The node a name in the root directory stands for.
    pub(super) fn lookup_name(&self, name: &str) -> Option<(u64, Node)> {
        match name {
            "origin" => Some((ORIGIN_INO, Node::Origin)),
            "status" => Some((STATUS_INO, Node::Status)),
            "control" if !self.settings.read_only => Some((CONTROL_INO, Node::Control)),
            _ => {
                self.sync_inodes();
                let (ino, snap) = self.inodes.read().by_name(name)?;
                Some((ino, Node::Snapshot(snap)))
            }
        }
    }
}
