//! The `fuser::Filesystem` implementation: decode, dispatch to the node's handler, reply.
//! Operations the mount does not offer (creating, removing, renaming, links, xattrs) answer
//! quietly instead of with fuser's logged `ENOSYS` defaults.

use super::attr::BLOCK_BYTES;
use super::data::Data;
use super::inodes::{Node, ROOT_INO};
use super::special::Caller;
use super::{DATA_OPEN_FLAGS, SnapFs};
use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Entry and attribute cache time: none (see the module documentation of `fuse`).
const TTL: Duration = Duration::ZERO;

impl Filesystem for SnapFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        self.configure_kernel(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = match (parent.0, name.to_str()) {
            (ROOT_INO, Some(name)) => self.lookup_name(name),
            _ => None,
        };
        match found {
            Some((ino, node)) => reply.entry(&TTL, &self.attr(ino, &node), Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(node) => reply.attr(&TTL, &self.attr(ino.0, &node)),
            None => reply.error(Errno::ENOENT),
        }
    }

    /// Sizes are fixed: a size change fails `EINVAL` (`control` ignores it, so that
    /// `echo cmd > control` works). Owner and mode cannot change (`EPERM`); times are ignored.
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let attr = self.attr(ino.0, &node);
        if mode.is_some_and(|m| m & 0o7777 != attr.perm as u32)
            || uid.is_some_and(|u| u != attr.uid)
            || gid.is_some_and(|g| g != attr.gid)
        {
            return reply.error(Errno::EPERM);
        }
        match (size, &node) {
            (Some(_), Node::Control) => {}
            (Some(s), Node::Origin | Node::Snapshot(_)) if s != attr.size => {
                return reply.error(Errno::EINVAL);
            }
            (Some(_), Node::Status | Node::Root) => return reply.error(Errno::EPERM),
            _ => {}
        }
        reply.attr(&TTL, &attr);
    }

    /// `O_TRUNC` (passed here, see `negotiate`) is ignored: the files have the volume's fixed
    /// size, and a block device ignores it the same way.
    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let writes = flags.acc_mode() != OpenAccMode::O_RDONLY;
        let direct = FopenFlags::FOPEN_DIRECT_IO;
        match node {
            Node::Root => reply.error(Errno::EISDIR),
            Node::Status if writes => reply.error(Errno::EACCES),
            Node::Status => reply.opened(FileHandle(self.open_status()), direct),
            Node::Control => reply.opened(FileHandle(self.open_control()), direct),
            Node::Origin | Node::Snapshot(_) => {
                if writes && self.settings.read_only {
                    return reply.error(Errno::EROFS);
                }
                let fh = self.open_data(writes);
                self.count_open(ino.0);
                reply.opened(FileHandle(fh), DATA_OPEN_FLAGS)
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENODEV);
        };
        let result = match (&node, Data::of(&node)) {
            (_, Some(data)) => {
                return match self.read_data(&data, offset, size) {
                    Ok(buf) => reply.data(&buf),
                    Err(e) => reply.error(e),
                };
            }
            (Node::Status, _) => Ok(self.read_status(fh.0, offset, size)),
            (Node::Control, _) => Ok(self.read_control(fh.0, offset, size)),
            _ => Err(Errno::EISDIR),
        };
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENODEV);
        };
        let result = match (&node, Data::of(&node)) {
            (_, Some(file)) => self.write_data(&file, offset, data).and_then(|n| {
                // O_SYNC and O_DSYNC writes are durable when answered.
                if flags.0 & (libc::O_SYNC | libc::O_DSYNC) != 0 {
                    self.sync_data(&file, fh.0)?;
                }
                Ok(n)
            }),
            (Node::Control, _) => {
                let caller = Caller {
                    uid: req.uid(),
                    pid: req.pid(),
                };
                self.write_control(fh.0, data, caller)
            }
            (Node::Status, _) => Err(Errno::EPERM),
            _ => Err(Errno::EISDIR),
        };
        match result {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e),
        }
    }

    /// Called on every close: a writer's close makes its writes durable (and reports a
    /// write-back error, see `handles.rs`).
    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let node = self.node(ino.0);
        match node.as_ref().and_then(Data::of) {
            Some(data) if self.is_writable(fh.0) => match self.close_data(&data, fh.0) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        match self.node(ino.0) {
            Some(Node::Status | Node::Control) => self.release_status(fh.0),
            node => {
                self.release_data(fh.0);
                let data = node.as_ref().and_then(Data::of);
                if self.count_release(ino.0) == 0
                    && let Some(data) = data
                {
                    self.forget_reads(&data);
                }
            }
        }
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _ds: bool, reply: ReplyEmpty) {
        let node = self.node(ino.0);
        match node.as_ref().and_then(Data::of) {
            Some(data) => match self.sync_data(&data, fh.0) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            },
            None if node.is_some() => reply.ok(),
            None => reply.error(Errno::ENODEV),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != ROOT_INO {
            return reply.error(Errno::ENOTDIR);
        }
        if offset == 0 {
            self.sync_inodes();
        }
        // An entry's offset is the index of the next one.
        for (i, (ino, name, kind)) in self.entries().into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ds: bool,
        reply: ReplyEmpty,
    ) {
        // The directory holds the volume: its sync makes every acknowledged write durable, and
        // reports an origin write lost after its answer that no file fsync has reported yet.
        let mut seen = self.volume.origin_error_seq();
        let result = self
            .volume
            .sync_origin_keeping(&mut seen)
            .and_then(|()| self.volume.flush_all());
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(super::errno::errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let f = self.figures();
        let bsize = BLOCK_BYTES as u32;
        reply.statfs(f.blocks, f.free, f.free, f.files, 0, bsize, 255, bsize);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let result = match self.node(ino.0) {
            Some(node) => match Data::of(&node) {
                Some(data) => self.fallocate_data(&data, offset, length, mode),
                None => Err(Errno::EOPNOTSUPP),
            },
            None => Err(Errno::ENODEV),
        };
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    // No extended attributes: ENOSYS once, and the kernel stops asking.
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    // The directory's content is fixed by the volume: files come and go through `control`.
    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }
}
