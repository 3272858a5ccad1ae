//! Regular files and block devices. This is the only place that opens a backing device.
//!
//! Direct I/O: besides its ordinary descriptor, a device is opened a second time with
//! `O_DIRECT`, and every read or write of at least [`DIRECT_MIN_BYTES`] whose offset and length
//! are aligned to what the kernel accepts for direct I/O (`statx` `STATX_DIOALIGN`; the logical
//! block size of a block device) goes through it, from page-aligned memory (an [`IoBuf`] as the
//! hot paths pass, or a bounce copy). Like the kernel's dm-snapshot, snapfs then keeps no page
//! cache of its own under the large transfers it serves: no double caching below a loop device,
//! no copy into and out of the page cache, and a flush has little left to write back (measured
//! in docs/performance.md). Small transfers stay buffered: the page cache absorbs small writes
//! and the next flush writes them back together, and small reads get the kernel's read-around;
//! both measured better than one synchronous device request each (4 KiB random first writes:
//! about 1.3x). Unaligned requests (a 3-byte `echo` into the origin) also use the ordinary
//! descriptor. The kernel keeps the two coherent (a direct write
//! invalidates the cached pages it covers, a direct read first writes back dirty ones), and
//! `flush` (`fdatasync`) covers both. A filesystem without direct I/O, or `SNAPFS_DIRECT_IO=0`
//! in the environment, leaves only the ordinary descriptor.
//!
//! Exclusivity: a block device is opened with `O_EXCL` (the kernel's exclusive claim: it fails
//! while the device is mounted or claimed elsewhere); a regular file is locked with
//! `flock(LOCK_EX | LOCK_NB)`. Both conflict with a second open in this same process, so one
//! mount cannot use one file twice (origin as COW, one COW for two snapshots). A claim refused
//! because the daemon of a mount that is gone still holds the device (it flushes and exits
//! after `umount` returns) is tried again until that daemon lets go, up to a bound; any other
//! holder fails the open at once, named (see `busy`).

mod busy;

use super::iobuf::{IO_ALIGN, IoBuf, is_aligned};
use super::{BlockDevice, check_range, write_zero_pieces};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Reads and writes smaller than this go through the page cache (see the module
/// documentation).
pub const DIRECT_MIN_BYTES: usize = 64 << 10;

nix::ioctl_read!(blk_get_size64, 0x12, 114, u64);
nix::ioctl_read_bad!(blk_get_logical_block_size, 0x1268, libc::c_int);
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
    /// The same device opened with `O_DIRECT`, when direct I/O works on it.
    direct: Option<Direct>,
    is_block: bool,
    block_bytes: u32,
}

struct Direct {
    file: File,
    /// Offsets and lengths must be multiples of this (a power of two).
    offset_align: u64,
    /// Buffers must start at a multiple of this (a power of two, at most `IO_ALIGN`); others
    /// go through an aligned bounce buffer.
    mem_align: usize,
    /// Set once a direct request succeeded; a filesystem that accepts `O_DIRECT` at open but
    /// refuses every request (EINVAL before any success) has direct I/O turned off.
    proven: AtomicBool,
    refused: AtomicBool,
}

impl Direct {
    /// Notes the outcome of a direct request; true when the caller should retry it through
    /// the ordinary descriptor (EINVAL: the kernel refused this request).
    fn retry_buffered(&self, result: &io::Result<()>, path: &Path) -> bool {
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                if !self.proven.load(Ordering::Relaxed)
                    && !self.refused.swap(true, Ordering::Relaxed)
                {
                    log::warn!(
                        "{}: direct I/O refused ({e}); using buffered I/O",
                        path.display()
                    );
                }
                true
            }
            Ok(()) => {
                self.proven.store(true, Ordering::Relaxed);
                false
            }
            Err(_) => false,
        }
    }
}

impl FileDevice {
    /// Opens `path` and claims it exclusively. Errors name the path and the reason. A device
    /// held by a snapfs daemon that serves no mount any more is waited for (at most
    /// [`busy::WAIT_MAX`], logged); see the module documentation.
    pub fn open(path: &Path, mode: OpenMode) -> io::Result<FileDevice> {
        let mut waiter = busy::Waiter::new(path);
        loop {
            match Self::try_open(path, mode)? {
                Ok(device) => {
                    waiter.claimed();
                    return Ok(device);
                }
                Err((target, refused)) => waiter.refused(target, refused)?,
            }
        }
    }

    /// One attempt: the device, or the claim that was refused (`EBUSY` from `O_EXCL`,
    /// `EWOULDBLOCK` from `flock`) for [`FileDevice::open`] to look into.
    fn try_open(
        path: &Path,
        mode: OpenMode,
    ) -> io::Result<Result<FileDevice, (busy::Target, io::Error)>> {
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
        let target = busy::Target::of(&meta);
        let file = match opts.open(path) {
            Ok(file) => file,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(Err((target, e))),
            Err(e) => return Err(describe(e, "cannot open")),
        };
        if !is_block {
            // SAFETY: flock on a valid descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Ok(Err((target, e)));
                }
                return Err(describe(e, "cannot lock"));
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
        let direct = if direct_io_wanted() {
            open_direct(path, &file, mode, is_block, block_bytes)
        } else {
            None
        };
        match &direct {
            Some(d) => log::debug!(
                "{}: direct I/O, alignment {} bytes",
                path.display(),
                d.offset_align
            ),
            None => log::debug!("{}: buffered I/O only", path.display()),
        }
        Ok(Ok(FileDevice {
            path: path.to_path_buf(),
            file,
            direct,
            is_block,
            block_bytes,
        }))
    }

    /// The direct descriptor, if a request at `offset` of `len` bytes should use it.
    fn direct_for(&self, offset: u64, len: usize) -> Option<&Direct> {
        let d = self.direct.as_ref()?;
        let mask = d.offset_align - 1;
        let usable = !d.refused.load(Ordering::Relaxed) || d.proven.load(Ordering::Relaxed);
        let aligned = offset & mask == 0 && len as u64 & mask == 0;
        (usable && len >= DIRECT_MIN_BYTES && aligned).then_some(d)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `fallocate(2)` on the device with `mode` (always with `KEEP_SIZE`: a device never
    /// grows). On a regular file `PUNCH_HOLE` frees the blocks and `ZERO_RANGE` keeps them
    /// allocated; on a block device (Linux 4.9+) `PUNCH_HOLE` is a write-zeroes request that
    /// may unmap, without the fallback of writing zero pages (`EOPNOTSUPP` where the device
    /// cannot), and `ZERO_RANGE` one that must not unmap. Both read back as zeroes.
    fn fallocate(&self, mode: i32, offset: u64, len: u64) -> io::Result<()> {
        let mode = mode | libc::FALLOC_FL_KEEP_SIZE;
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

/// `SNAPFS_DIRECT_IO=0` turns direct I/O off (for comparisons, or a filesystem that misbehaves
/// with it); anything else, or nothing, leaves it on.
fn direct_io_wanted() -> bool {
    std::env::var_os("SNAPFS_DIRECT_IO").is_none_or(|v| v != "0")
}

/// Opens `path` again with `O_DIRECT` and finds the alignment direct I/O needs. `None` when the
/// filesystem does not support it, or the path no longer names the device `file` is open on.
fn open_direct(
    path: &Path,
    file: &File,
    mode: OpenMode,
    is_block: bool,
    block_bytes: u32,
) -> Option<Direct> {
    use std::os::unix::fs::MetadataExt;
    let mut opts = OpenOptions::new();
    opts.read(true).write(mode == OpenMode::ReadWrite);
    // No O_EXCL on a block device: `file` holds the exclusive claim already.
    opts.custom_flags(libc::O_DIRECT | libc::O_CLOEXEC);
    let direct = opts.open(path).ok()?;
    let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
    let same = if is_block {
        a.rdev() == b.rdev()
    } else {
        a.dev() == b.dev() && a.ino() == b.ino()
    };
    if !same {
        return None;
    }
    let (offset_align, mem_align) = match dio_alignment(&direct) {
        Some((0, _)) => return None, // the filesystem says: no direct I/O here
        Some((offset, mem)) => (offset, mem),
        // Kernels before 6.1 do not tell: a block device's logical block size, or a page.
        // (Before 6.0 the kernel wanted memory aligned like the offsets.)
        None if is_block => (block_bytes.max(512) as u64, block_bytes.max(512)),
        None => (IO_ALIGN as u64, IO_ALIGN as u32),
    };
    let mem_align = mem_align.max(1) as usize;
    if !offset_align.is_power_of_two() || !mem_align.is_power_of_two() || mem_align > IO_ALIGN {
        return None;
    }
    Some(Direct {
        file: direct,
        offset_align,
        mem_align,
        proven: AtomicBool::new(false),
        refused: AtomicBool::new(false),
    })
}

/// `(offset alignment, memory alignment)` for direct I/O on `file`, if the kernel reports it.
fn dio_alignment(file: &File) -> Option<(u64, u32)> {
    // SAFETY: statx fills the struct it is given; an all-zero statx is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return None;
    }
    Some((stx.stx_dio_offset_align as u64, stx.stx_dio_mem_align))
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

    fn can_grow(&self) -> bool {
        !self.is_block
    }

    /// A regular file grows with `fallocate` (the space is reserved, so the COW cannot meet
    /// ENOSPC later), or with `ftruncate` where the file system has no `fallocate`. The new
    /// size is used at once: `size_bytes` reads it live.
    fn grow(&self, bytes: u64) -> io::Result<()> {
        if self.is_block {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a block device cannot be grown by snapfs",
            ));
        }
        let now = self.size_bytes();
        if bytes <= now {
            return Ok(());
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: fallocate on an open descriptor with integer arguments.
        let rc =
            unsafe { libc::fallocate(fd, 0, now as libc::off_t, (bytes - now) as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if unsupported(&e) {
            self.file.set_len(bytes)
        } else {
            Err(e)
        }
    }

    fn host_space(&self) -> Option<(u64, u64)> {
        if self.is_block {
            return None;
        }
        // SAFETY: fstatvfs fills the struct it is given; an all-zero statvfs is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstatvfs(self.file.as_raw_fd(), &mut st) } != 0 {
            return None;
        }
        let unit = st.f_frsize as u64;
        Some((st.f_bavail as u64 * unit, st.f_blocks as u64 * unit))
    }

    fn logical_block_size(&self) -> u32 {
        self.block_bytes
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if let Some(direct) = self.direct_for(offset, buf.len()) {
            let result = if is_aligned(buf, direct.mem_align) {
                direct.file.read_exact_at(buf, offset)
            } else {
                let mut bounce = IoBuf::new(buf.len());
                direct
                    .file
                    .read_exact_at(&mut bounce, offset)
                    .map(|()| buf.copy_from_slice(&bounce))
            };
            // EINVAL: the kernel refused this one (a short read at the end of a file whose
            // size is not aligned, say); the ordinary descriptor takes it.
            if !direct.retry_buffered(&result, &self.path) {
                return result;
            }
        }
        self.file.read_exact_at(buf, offset)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        // A regular file would silently grow: the device never does.
        check_range(offset, buf.len() as u64, self.size_bytes())?;
        if let Some(direct) = self.direct_for(offset, buf.len()) {
            let result = if is_aligned(buf, direct.mem_align) {
                direct.file.write_all_at(buf, offset)
            } else {
                let mut bounce = IoBuf::new(buf.len());
                bounce.copy_from_slice(buf);
                direct.file.write_all_at(&bounce, offset)
            };
            // Rewriting the whole range through the ordinary descriptor is idempotent.
            if !direct.retry_buffered(&result, &self.path) {
                return result;
            }
        }
        self.file.write_all_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Zeroes, freeing the space where the device can: a hole in a regular file; on a block
    /// device an unmapping write-zeroes (`fallocate(PUNCH_HOLE)`, never `BLKDISCARD`, whose
    /// range may read back as anything), else `write_zeroes`.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size_bytes())?;
        if len == 0 {
            return Ok(());
        }
        match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE, offset, len) {
            Err(e) if unsupported(&e) => self.write_zeroes(offset, len),
            other => other,
        }
    }

    /// Zeroes, keeping the space allocated: `ZERO_RANGE` on a regular file (the blocks stay
    /// reserved, as its man page promises), `BLKZEROOUT` on a block device (which writes zero
    /// pages where the device has no write-zeroes); zero pages where neither works.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        check_range(offset, len, self.size_bytes())?;
        if len == 0 {
            return Ok(());
        }
        let r = if self.is_block {
            self.block_range_ioctl(offset, len, blk_zero_out)
        } else {
            self.fallocate(libc::FALLOC_FL_ZERO_RANGE, offset, len)
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

    /// A file COW grows in place (autoextend): the new size is used at once, the old bytes
    /// stay, the new ones read zeroes, and a smaller size never shrinks it.
    #[test]
    fn a_file_grows_and_reports_its_host_space() {
        let dir = std::env::temp_dir().join(format!("snapfs-grow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        std::fs::write(&path, vec![7u8; 65536]).unwrap();
        let dev = FileDevice::open(&path, OpenMode::ReadWrite).unwrap();
        assert!(dev.can_grow());
        dev.grow(3 << 20).unwrap();
        assert_eq!(dev.size_bytes(), 3 << 20);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3 << 20);
        dev.write_at(&[9; 512], (3 << 20) - 512).unwrap();
        let mut buf = vec![1u8; 4096];
        dev.read_at(&mut buf, 65536 - 2048).unwrap();
        assert!(buf[..2048].iter().all(|&b| b == 7) && buf[2048..].iter().all(|&b| b == 0));
        dev.grow(1 << 20).unwrap();
        assert_eq!(dev.size_bytes(), 3 << 20, "never shrinks");
        let (available, total) = dev.host_space().expect("a file has a host file system");
        assert!(total > 0 && available <= total);
        drop(dev);
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

    /// Both zeroings read zeroes; `discard` frees a file's blocks (a hole), `write_zeroes` keeps
    /// them allocated (ZERO_RANGE), so a preallocated file stays preallocated. Neither reaches
    /// past the end of the device.
    #[test]
    fn zeroings_read_zeroes_and_only_discard_frees() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("snapfs-filezero-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let len = 1u64 << 20;
        std::fs::write(&path, vec![0x5au8; len as usize]).unwrap();
        let dev = FileDevice::open(&path, OpenMode::ReadWrite).unwrap();
        let blocks = || std::fs::metadata(&path).unwrap().blocks() * 512;
        let full = blocks();
        let zeroes = |off: u64, n: u64| {
            let mut buf = vec![1u8; n as usize];
            dev.read_at(&mut buf, off).unwrap();
            buf.iter().all(|&b| b == 0)
        };
        dev.write_zeroes(4096, 256 << 10).unwrap();
        assert!(zeroes(4096, 256 << 10));
        assert!(blocks() >= full, "write_zeroes keeps the blocks");
        dev.discard(512 << 10, 256 << 10).unwrap();
        assert!(zeroes(512 << 10, 256 << 10));
        assert!(blocks() + (256 << 10) <= full, "discard frees the blocks");
        // Unaligned ends are zeroed too, and the bytes around them kept.
        dev.discard(100, 3000).unwrap();
        dev.write_zeroes(5000 + (800 << 10), 7).unwrap();
        let mut buf = vec![0u8; 3200];
        dev.read_at(&mut buf, 0).unwrap();
        assert!(buf[..100].iter().all(|&b| b == 0x5a) && buf[100..3100].iter().all(|&b| b == 0));
        assert!(buf[3100..].iter().all(|&b| b == 0x5a));
        assert!(zeroes(5000 + (800 << 10), 7));
        assert!(dev.discard(len - 512, 1024).is_err(), "past the end");
        assert!(dev.write_zeroes(len, 1).is_err(), "past the end");
        assert_eq!(dev.size_bytes(), len, "the file did not grow");
        drop(dev);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Aligned requests go direct (from aligned memory or through a bounce copy), unaligned
    /// ones through the ordinary descriptor, and each sees what the other wrote.
    #[test]
    fn direct_and_buffered_paths_agree() {
        let dir = std::env::temp_dir().join(format!("snapfs-filedio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("img");
        let len = 1 << 20;
        std::fs::write(&path, vec![0u8; len]).unwrap();
        let dev = FileDevice::open(&path, OpenMode::ReadWrite).unwrap();
        let mut model = vec![0u8; len];
        let mut rng = crate::rng::Rng(7);
        for round in 0..200 {
            let r = rng.next();
            let aligned = round % 3 != 0;
            let (offset, n) = if aligned {
                let blocks = len / 4096;
                let at = (r >> 20) as usize % blocks;
                let count = 1 + (r >> 40) as usize % (blocks - at).min(48);
                (at * 4096, count * 4096)
            } else {
                let at = (r >> 20) as usize % (len - 1);
                (at, 1 + (r >> 40) as usize % (len - at).min(9000))
            };
            if round % 2 == 0 {
                // Writes from aligned memory and from a plain Vec (bounce copy).
                let data: Vec<u8> = (0..n).map(|i| (i as u64 ^ rng.0) as u8).collect();
                if round % 4 == 0 {
                    let mut buf = IoBuf::new(n);
                    buf.copy_from_slice(&data);
                    dev.write_at(&buf, offset as u64).unwrap();
                } else {
                    dev.write_at(&data, offset as u64).unwrap();
                }
                model[offset..offset + n].copy_from_slice(&data);
            } else {
                let mut buf = IoBuf::new(n);
                dev.read_at(&mut buf, offset as u64).unwrap();
                assert!(buf[..] == model[offset..offset + n], "round {round}");
                let mut plain = vec![0u8; n];
                dev.read_at(&mut plain, offset as u64).unwrap();
                assert!(plain[..] == model[offset..offset + n], "round {round}");
            }
        }
        dev.flush().unwrap();
        drop(dev);
        assert!(std::fs::read(&path).unwrap() == model);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
