//! The mount table as the kernel shows it (`/proc/self/mountinfo`): what is mounted where, by
//! which device number. Reading it never touches a mounted filesystem, so it cannot hang on a
//! FUSE daemon that does not answer.

use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, in table order (later lines sit on top of earlier
/// ones at the same mount point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// `st_dev` of every file of this filesystem.
    pub dev: libc::dev_t,
    /// The directory of the filesystem mounted here (`/` unless a bind mount of a part).
    pub root: String,
    pub mountpoint: PathBuf,
    /// `fuse.snapfs` for a snapfs mount.
    pub fstype: String,
    /// The mount's source: for snapfs the origin as given.
    pub source: String,
}

/// The file system type of a snapfs mount.
pub const SNAPFS_TYPE: &str = "fuse.snapfs";

impl MountEntry {
    pub fn is_snapfs(&self) -> bool {
        self.fstype == SNAPFS_TYPE
    }
}

/// `MAJOR:MINOR` of a device number.
pub fn dev_text(dev: libc::dev_t) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// The current table; empty (with a warning) if it cannot be read.
pub fn read() -> Vec<MountEntry> {
    match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(text) => parse(&text),
        Err(e) => {
            log::warn!("cannot read /proc/self/mountinfo: {e}");
            Vec::new()
        }
    }
}

/// Parses a mountinfo table. Fields: `id parent major:minor root mountpoint options
/// [optional...] - fstype source superoptions`; lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    let (head, tail) = line.split_once(" - ")?;
    let head: Vec<&str> = head.split(' ').collect();
    let (major, minor) = head.get(2)?.split_once(':')?;
    let dev = libc::makedev(major.parse().ok()?, minor.parse().ok()?);
    let mut tail = tail.split(' ');
    Some(MountEntry {
        dev,
        root: unescape(head.get(3)?),
        mountpoint: PathBuf::from(unescape(head.get(4)?)),
        fstype: unescape(tail.next()?),
        source: unescape(tail.next()?),
    })
}

/// The kernel's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> String {
    crate::escape::unescape_lenient(field)
}

/// The topmost mount on `mountpoint`, if any: the one a path lookup sees.
pub fn top_at<'a>(table: &'a [MountEntry], mountpoint: &Path) -> Option<&'a MountEntry> {
    table.iter().rev().find(|m| m.mountpoint == mountpoint)
}

/// The mounts a path (absolute, without symlinks, as the kernel prints paths) lies on: those
/// at its longest mounted prefix, topmost first. Several when mounts are stacked there: which
/// one a file opened earlier belongs to cannot be told from its path.
pub fn containing<'a>(table: &'a [MountEntry], path: &Path) -> Vec<&'a MountEntry> {
    let best = table
        .iter()
        .filter(|m| path.starts_with(&m.mountpoint))
        .map(|m| m.mountpoint.components().count())
        .max();
    let Some(best) = best else {
        return Vec::new();
    };
    table
        .iter()
        .rev()
        .filter(|m| path.starts_with(&m.mountpoint) && m.mountpoint.components().count() == best)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/my\\040vol rw,nosuid,nodev,relatime shared:20 - fuse.snapfs /img/origin.img rw,user_id=0
41 22 0:51 / /mnt/other rw - fuse.snapfs /img/o2 rw
42 40 0:52 / /mnt/my\\040vol rw - tmpfs tmpfs rw
43 22 7:3 / /mnt/other/deep rw - ext4 /dev/loop3 rw
garbage line
";

    #[test]
    fn parses_and_unescapes() {
        let t = parse(TABLE);
        assert_eq!(t.len(), 5, "the garbage line is skipped");
        assert_eq!(t[1].mountpoint, Path::new("/mnt/my vol"));
        assert_eq!(dev_text(t[1].dev), "0:50");
        assert!(t[1].is_snapfs());
        assert_eq!(t[1].source, "/img/origin.img");
        assert_eq!(t[4].dev, libc::makedev(7, 3));
        assert_eq!(unescape("a\\134b\\011c\\9"), "a\\b\tc\\9");
    }

    #[test]
    fn top_and_containing() {
        let t = parse(TABLE);
        let top = top_at(&t, Path::new("/mnt/my vol")).unwrap();
        assert_eq!(top.fstype, "tmpfs", "the later line sits on top");
        assert!(top_at(&t, Path::new("/mnt/none")).is_none());
        let c = containing(&t, Path::new("/mnt/my vol/origin"));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].fstype, "tmpfs");
        let c = containing(&t, Path::new("/mnt/other/deep/x.cow"));
        assert_eq!(c[0].source, "/dev/loop3");
        let c = containing(&t, Path::new("/mnt/otherwise"));
        assert_eq!(
            c[0].mountpoint,
            Path::new("/"),
            "prefixes are whole components"
        );
    }
}
