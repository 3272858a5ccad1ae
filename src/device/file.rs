//! Regular files and block devices. This is the only place that opens a backing device.
//!
//! Exclusivity: a block device is opened with `O_EXCL` (the kernel's exclusive claim: it fails
//! while the device is mounted or claimed elsewhere); a regular file is locked with
//! `flock(LOCK_EX | LOCK_NB)`. Both conflict with a second open in this same process, so one
//! mount cannot use one file twice (origin as COW, one COW for two snapshots).

use super::{BlockDevice, check_range, write_zero_pieces};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);
nix::ioctl_read_bad!(blk_get_logical_block_size, 0x1268, libc::c_int);
nix::ioctl_write_ptr_bad!(blk_discard, 0x1277, [u64; 2]);
nix::ioctl_write_ptr_bad!(blk_zero_out, 0x127f, [u64; 2]);

/// How to open a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    ReadWrite,
    ReadOnly,
}

pub struct FileDevice {
    path: PathBuf,
    file: File,
    is_block: bool,
    block_bytes: u32,
}

impl FileDevice {
    /// Opens `path` and claims it exclusively. Errors name the path and the reason.
    pub fn open(path: &Path, mode: OpenMode) -> io::Result<FileDevice> {
        let describe = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("{}: {what}: {e}", path.display()))
        };
        let meta = std::fs::metadata(path).map_err(|e| describe(e, "cannot open"))?;
        let is_block = meta.file_type().is_block_device();
        if !is_block && !meta.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file or block device", path.display()),
            ));
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(mode == OpenMode::ReadWrite);
        if is_block {
            opts.custom_flags(libc::O_EXCL | libc::O_CLOEXEC);
        } else {
            opts.custom_flags(libc::O_CLOEXEC);
        }
        let file = opts.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                describe(
                    e,
                    "device is in use (mounted or claimed by another program)",
                )
            } else {
                describe(e, "cannot open")
            }
        })?;
        if !is_block {
            // SAFETY: flock on a valid descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                return Err(describe(
                    e,
                    "file is already in use (locked by another snapfs mount or by this one)",
                ));
            }
        }
        let block_bytes = if is_block {
            let mut v: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int.
            unsafe { blk_get_logical_block_size(file.as_raw_fd(), &mut v) }
                .map_err(|e| describe(e.into(), "BLKSSZGET"))?;
            v as u32
        } else {
            512
        };
        Ok(FileDevice {
            path: path.to_path_buf(),
            file,
            is_block,
            block_bytes,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn punch(&self, offset: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        // SAFETY: fallocate on a valid descriptor.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn block_range_ioctl(
        &self,
        offset: u64,
        len: u64,
        op: unsafe fn(i32, *const [u64; 2]) -> nix::Result<i32>,
    ) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: the ioctl reads two u64 from `range`.
        unsafe { op(self.file.as_raw_fd(), &range) }
            .map(|_| ())
            .map_err(io::Error::from)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
    )
}

impl BlockDevice for FileDevice {
    fn size_bytes(&self) -> u64 {
        if self.is_block {
            let mut size = 0u64;
            // SAFETY: BLKGETSIZE64 writes one u64.
            match unsafe { blk_get_size64(self.file.as_raw_fd(), &mut size) } {
                Ok(_) => size,
                Err(_) => 0,
            }
        } else {
            self.file.metadata().map(|m| m.len()).unwrap_or(0)
        }
    }

    fn logical_block_size(&self) -> u32 {
        self.block_bytes
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // A regular file would silently grow: the device never does.
        check_range(offset, buf.len() as u64, self.size_bytes())?;
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = if self.is_block {
            self.block_range_ioctl(offset, len, blk_discard)
        } else {
            self.punch(offset, len)
        };
        match r {
            // Discard is advisory: a device that cannot discard keeps its data.
            Err(e) if unsupported(&e) => Ok(()),
            other => other,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let r = if self.is_block {
            self.block_range_ioctl(offset, len, blk_zero_out)
        } else {
            self.punch(offset, len)
        };
        match r {
            Err(e) if unsupported(&e) => write_zero_pieces(self, offset, len),
            other => other,
        }
    }

    fn allocated_bytes(&self) -> Option<u64> {
        use std::os::unix::fs::MetadataExt;
        if self.is_block {
            None
        } else {
            self.file.metadata().ok().map(|m| m.blocks() * 512)
        }
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_roundtrip_lock_and_zeroes() {
        let dir = std::env::temp_dir().join(format!("snapfs-filedev-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![7u8; 65536]).unwrap();
        let dev = FileDevice::open(&path, OpenMode::ReadWrite).unwrap();
        assert_eq!(dev.size_bytes(), 65536);
        dev.write_at(&[1, 2, 3], 100).unwrap();
        let mut buf = [0u8; 4];
        dev.read_at(&mut buf, 99).unwrap();
        assert_eq!(buf, [7, 1, 2, 3]);
        let second = FileDevice::open(&path, OpenMode::ReadOnly);
        assert!(
            second.is_err(),
            "a second claim of the same file is refused"
        );
        dev.write_zeroes(4096, 8192).unwrap();
        let mut z = vec![1u8; 8192];
        dev.read_at(&mut z, 4096).unwrap();
        assert!(z.iter().all(|&b| b == 0));
        assert!(
            dev.read_at(&mut [0; 2], 65535).is_err(),
            "read past the end"
        );
        drop(dev);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
