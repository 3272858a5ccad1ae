//! Where a path's bytes are stored, below its name: the chain of extents from the path down
//! through partitions (to their disk, at their start) and loop devices (to their backing file,
//! at their offset). Two paths whose chains share bytes of one file or device write into each
//! other, whatever their names: a loop device over the origin file, the disk of an origin
//! partition, a file on a file system on either. `snapfs backup` refuses such an image.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Partitions and loop devices stacked deeper than this are not followed further.
const DEPTH_MAX: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Id {
    File(u64, u64),
    Block(u64),
}

/// Bytes `[start, start + len)` of one file or block device.
#[derive(Clone, Copy, Debug)]
struct Extent {
    id: Id,
    start: u64,
    len: u64,
    /// The file system that holds a file, not the file: two files of one file system share
    /// it without sharing bytes.
    container: bool,
}

/// The extents that store `path`: itself, what it is stacked on, and, for a file, the block
/// device of its file system (and what that is stacked on), marked as a container.
fn storage(path: &Path) -> Vec<Extent> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if meta.file_type().is_block_device() {
        block(meta.rdev(), 0, u64::MAX, false, 0, &mut out);
    } else {
        out.push(Extent {
            id: Id::File(meta.dev(), meta.ino()),
            start: 0,
            len: u64::MAX,
            container: false,
        });
        block(meta.dev(), 0, u64::MAX, true, 0, &mut out);
    }
    out
}

/// Block device `rdev`, bytes `[start, start + len)` of it, and below.
fn block(rdev: u64, start: u64, len: u64, container: bool, depth: usize, out: &mut Vec<Extent>) {
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev as libc::dev_t),
        libc::minor(rdev as libc::dev_t)
    ));
    if depth > DEPTH_MAX || !sys.exists() {
        return;
    }
    out.push(Extent {
        id: Id::Block(rdev),
        start,
        len,
        container,
    });
    let number =
        |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
    if let Some(first) = number(sys.join("start")) {
        // A partition: its disk is the parent directory.
        let size = number(sys.join("size")).unwrap_or(u64::MAX / 512) * 512;
        let disk = std::fs::read_to_string(sys.join("../dev")).ok();
        let numbers = disk.as_deref().and_then(|d| d.trim().split_once(':'));
        if let Some((Ok(major), Ok(minor))) = numbers.map(|(a, b)| (a.parse(), b.parse())) {
            let disk = libc::makedev(major, minor) as u64;
            let at = first * 512 + start;
            block(disk, at, len.min(size), container, depth + 1, out);
        }
    }
    let backing = std::fs::read_to_string(sys.join("loop/backing_file")).ok();
    if let Some(file) = backing.as_deref().map(str::trim_end) {
        let offset = number(sys.join("loop/offset")).unwrap_or(0);
        if let Ok(meta) = std::fs::metadata(file) {
            let at = offset.saturating_add(start);
            if meta.file_type().is_block_device() {
                block(meta.rdev(), at, len, container, depth + 1, out);
            } else {
                out.push(Extent {
                    id: Id::File(meta.dev(), meta.ino()),
                    start: at,
                    len,
                    container,
                });
                block(meta.dev(), 0, u64::MAX, true, depth + 1, out);
            }
        }
    }
}

/// Whether `a` and `b` share stored bytes (two files that merely share a file system do not).
pub fn overlap(a: &Path, b: &Path) -> bool {
    let (a, b) = (storage(a), storage(b));
    a.iter().any(|x| {
        b.iter().any(|y| {
            x.id == y.id
                && !(x.container && y.container)
                && x.start < y.start.saturating_add(y.len)
                && y.start < x.start.saturating_add(x.len)
        })
    })
}
