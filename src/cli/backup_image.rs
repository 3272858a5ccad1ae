//! The backup image of `snapfs backup`: a file (created if missing) or a block device, opened
//! for writing, locked against a second run, and checked not to be one of the mount's own
//! devices.

use super::client::Mount;
use snapfs::backup::marker::{HEAD_BYTES, Stamp, fnv1a};
use snapfs::status::Report;
use std::fs::File;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub struct Image {
    pub path: PathBuf,
    pub file: File,
    pub is_file: bool,
    /// Created by this run, or an empty file: nothing in it to lose.
    pub new: bool,
    /// Created by this run (else, if `new`, an empty file it sized).
    pub created: bool,
    /// A file of the volume's size with no data in it (holes only).
    pub unwritten: bool,
    pub size: u64,
}

impl Image {
    pub fn open(
        path: &Path,
        volume_bytes: u64,
        mount: &Mount,
        report: &Report,
    ) -> Result<Image, String> {
        let path = std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let shown = path.display().to_string();
        let created = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A mistyped device name: a file created there would live in RAM (devtmpfs)
                // and be gone at the next boot, with the backup in it.
                let parent = path.parent().and_then(|p| p.canonicalize().ok());
                if parent.is_some_and(|p| p.starts_with("/dev")) {
                    return Err(format!(
                        "{shown}: no such device (a new image file is never created under /dev)"
                    ));
                }
                true
            }
            Err(e) => return Err(format!("{shown}: {e}")),
            Ok(meta) if meta.is_file() || meta.file_type().is_block_device() => false,
            Ok(_) => return Err(format!("{shown} is neither a file nor a block device")),
        };
        // create_new: a file that appeared since the look above is not taken over.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(created)
            .open(&path)
            .map_err(|e| match created {
                true => format!("cannot create {shown}: {e}"),
                false => format!("{shown}: {e}"),
            })?;
        let meta = file.metadata().map_err(|e| format!("{shown}: {e}"))?;
        let refuse = |why: String| {
            if created {
                let _ = std::fs::remove_file(&path);
            }
            Err(why)
        };
        if let Some(why) = own_device(&path, &meta, mount, report) {
            return refuse(format!(
                "{shown} is {why}: a backup cannot be written into the volume it copies or \
                 the files that describe it"
            ));
        }
        // Under any other name: a loop device over MNT/origin, a file on a file system on one,
        // a file of another snapfs mount that leads back here.
        if let Err(why) = leads_back(&path, mount) {
            return refuse(why);
        }
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return refuse(format!(
                "{shown} is locked by another process (another snapfs backup, or a snapfs mount \
                 using it as its origin or a COW)"
            ));
        }
        let is_file = meta.is_file();
        let size = if is_file {
            meta.len()
        } else {
            device_size(&file).map_err(|e| format!("{shown}: {e}"))?
        };
        // Never fits, whatever --full says: refused before a snapshot is taken or a byte
        // of the device is written.
        if !is_file && size < volume_bytes {
            return Err(format!(
                "{shown} is {size} bytes, smaller than the volume ({volume_bytes} bytes): a \
                 block device image must be at least as large"
            ));
        }
        let new = is_file && size == 0;
        // The volume's size and holes only: what a first run killed before its marker leaves
        // (SEEK_DATA finds no data). Without a marker there is nothing in it to lose.
        let unwritten = is_file && size == volume_bytes && holes_only(&file);
        if new {
            file.set_len(volume_bytes)
                .map_err(|e| format!("cannot size {shown}: {e}"))?;
        }
        Ok(Image {
            path,
            file,
            is_file,
            new,
            created,
            unwritten,
            size: if new { volume_bytes } else { size },
        })
    }

    /// Undoes what opening did to a new image (created, or an empty file sized), when a run
    /// fails before it copies anything: the next run finds what was there.
    pub fn undo_new(&self) {
        if self.created {
            let _ = std::fs::remove_file(&self.path);
        } else if self.new {
            let _ = self.file.set_len(0);
        }
    }

    /// `IMAGE.snapfs-backup` beside a file; for a block device, a file in `registry_dir`
    /// named after the device's path (`/dev/vg/b` -> `_dev_vg_b.snapfs-backup`).
    pub fn default_marker(&self, registry_dir: &Path) -> PathBuf {
        if self.is_file {
            let mut name = self.path.file_name().unwrap_or_default().to_os_string();
            name.push(".snapfs-backup");
            self.path.with_file_name(name)
        } else {
            let flat = self.path.display().to_string().replace('/', "_");
            registry_dir.join(format!("{flat}.snapfs-backup"))
        }
    }

    /// Why the image cannot hold the volume as it is, if it cannot: a file must be exactly the
    /// volume's size (it is the image); a block device at least.
    pub fn size_problem(&self, volume_bytes: u64) -> Option<String> {
        let fits = if self.is_file {
            self.size == volume_bytes
        } else {
            self.size >= volume_bytes
        };
        (!fits).then(|| {
            format!(
                "the image is {} bytes and the volume {volume_bytes}{}",
                self.size,
                if self.is_file {
                    ""
                } else {
                    " (a block device must be at least as large)"
                }
            )
        })
    }
}

/// What the image is to the mount, if it is one of its own devices or files.
fn own_device(
    path: &Path,
    meta: &std::fs::Metadata,
    mount: &Mount,
    report: &Report,
) -> Option<String> {
    // The same file or device under any name, or one that shares bytes with it (a loop
    // device over it, its disk or partition, a file system on either).
    let same = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            (m.dev(), m.ino()) == (meta.dev(), meta.ino())
                || (m.file_type().is_block_device() && m.rdev() == meta.rdev() && meta.rdev() != 0)
        }) || super::backup_storage::overlap(path, p)
    };
    if std::fs::metadata(mount.dir()).is_ok_and(|m| m.dev() == meta.dev()) {
        return Some("a file of the snapfs mount".to_string());
    }
    if report
        .registry
        .as_deref()
        .is_some_and(|r| same(Path::new(r)))
    {
        let r = report.registry.as_deref().unwrap_or_default();
        return Some(format!("the mount's registry {r}"));
    }
    if let Some(log) = report.log.as_deref().filter(|l| same(Path::new(l))) {
        return Some(format!("the mount's log file {log}"));
    }
    let origin = report
        .origin_device
        .as_deref()
        .map(snapfs::escape::unescape_lenient);
    if origin.as_deref().is_some_and(|o| same(Path::new(o))) {
        return Some("the mount's origin".to_string());
    }
    // The status carries paths as UTF-8: an origin whose path is not (shown with U+FFFD) or
    // that is gone cannot be compared with the image, so nothing may pass for not being it.
    if let Some(o) = origin.as_deref().filter(|o| std::fs::metadata(o).is_err()) {
        return Some(format!(
            "perhaps the mount's origin, which cannot be found under the name the mount \
             gives ({o:?}; a path that is not UTF-8?): mount the volume through a symlink \
             whose name is UTF-8"
        ));
    }
    for s in &report.snapshots {
        let cow = s.cow.as_deref().map(snapfs::escape::unescape_lenient);
        if cow.as_deref().is_some_and(|c| same(Path::new(c))) {
            return Some(format!("the COW of snapshot {}", s.name));
        }
    }
    None
}

/// The daemon's own check that a path does not lead back to the mount (`snapfs::host::reach`),
/// asked for the image.
fn leads_back(path: &Path, mount: &Mount) -> Result<(), String> {
    use snapfs::host::reach::{Item, Own, Role, check};
    let dev = std::fs::metadata(mount.dir().join("origin"))
        .map_err(|e| format!("{}: {e}", mount.dir().display()))?
        .dev();
    let item = Item {
        what: format!("backup image {}", path.display()),
        path: path.to_path_buf(),
        role: Role::BackupImage,
    };
    check(Own::live(mount.dir(), dev as libc::dev_t), vec![item], true)
}

/// Whether `file` holds no data, only holes (`SEEK_DATA` from 0 finds none). A file system
/// without SEEK_DATA reports everything as data: never taken for holes.
fn holes_only(file: &File) -> bool {
    // SAFETY: lseek on an open descriptor; the offset is restored below.
    let at = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_DATA) };
    let none = at < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    // SAFETY: as above.
    unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_SET) };
    none
}

fn device_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}

/// The image's stamp now: its mtime (a file) and a hash of its first 64 KiB (of the volume's
/// part).
pub fn stamp_of(file: &File, is_file: bool, image_bytes: u64) -> Result<Stamp, String> {
    let mut head = vec![0u8; HEAD_BYTES.min(image_bytes) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("reading the image's first bytes: {e}"))?;
    let mtime_ns = if is_file {
        let m = file.metadata().map_err(|e| e.to_string())?;
        Some(m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128)
    } else {
        None
    };
    Ok(Stamp {
        mtime_ns,
        head: fnv1a(&head),
    })
}
