//! `fuse_floor IMAGE MOUNTPOINT`: serves IMAGE as `MOUNTPOINT/data` over FUSE with the kernel
//! settings, request threads and device code of snapfs, and nothing else: no snapshots, no
//! range locks, no read-ahead. `scripts/bench.sh` runs the raw-image workloads on it to show
//! what the FUSE round trip alone costs on the machine, so that the gap between snapfs and the
//! raw image splits into "FUSE" and "snapfs". Runs in the foreground until unmounted.
//! Build: `cargo build --release --example fuse_floor`.

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, WriteFlags,
};
use snapfs::device::{BlockDevice, FileDevice, IoBuf, OpenMode};
use snapfs::fuse;
use std::ffi::OsStr;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

const ROOT: u64 = 1;
const DATA: u64 = 2;

struct Floor {
    image: FileDevice,
}

impl Floor {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, size, perm) = match ino {
            ROOT => (FileType::Directory, 0, 0o755),
            _ => (FileType::RegularFile, self.image.size_bytes(), 0o600),
        };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size / 512,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind,
            perm,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

fn errno(e: std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

impl Filesystem for Floor {
    /// The same INIT answer as snapfs.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        fuse::negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == "data" {
            reply.entry(&Duration::ZERO, &self.attr(DATA), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | DATA => reply.attr(&Duration::ZERO, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), fuse::DATA_OPEN_FLAGS);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = self
            .image
            .size_bytes()
            .saturating_sub(offset)
            .min(size as u64);
        let mut buf = IoBuf::new(len as usize);
        match self.image.read_at(&mut buf, offset) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.image.write_at(data, offset) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        match self.image.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if offset == 0 {
            let _ = reply.add(INodeNo(DATA), 1, FileType::RegularFile, "data");
        }
        reply.ok();
    }
}

/// As in the `snapfs` binary: a write's data arrives aligned for direct I/O.
#[global_allocator]
static ALLOCATOR: fuse::request_buffers::RequestBufferAlloc =
    fuse::request_buffers::RequestBufferAlloc;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, image, mountpoint] = args.as_slice() else {
        eprintln!("usage: fuse_floor IMAGE MOUNTPOINT");
        std::process::exit(2);
    };
    let image = FileDevice::open(Path::new(image), OpenMode::ReadWrite).unwrap_or_else(|e| {
        eprintln!("fuse_floor: {e}");
        std::process::exit(1);
    });
    let mut config = Config::default();
    config.mount_options = vec![MountOption::FSName("fuse_floor".into())];
    config.acl = SessionACL::Owner;
    fuse::set_request_threads(&mut config);
    if let Err(e) = fuser::mount(Floor { image }, mountpoint, &config) {
        eprintln!("fuse_floor: {e}");
        std::process::exit(1);
    }
}
