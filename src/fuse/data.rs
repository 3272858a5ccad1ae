//! I/O on the data files: `origin` and the snapshots. Each request is one volume call on the
//! request's thread; the buffer of a read is bounded by the kernel's request size.

use super::SnapFs;
use super::errno::errno;
use super::inodes::Node;
use crate::device::IoBuf;
use crate::volume::{Snapshot, VolumeError};
use fuser::Errno;
use std::sync::Arc;

/// A data file.
pub(super) enum Data<'a> {
    Origin,
    Snapshot(&'a Arc<Snapshot>),
}

impl Data<'_> {
    /// The data file a node is, if it is one.
    pub(super) fn of(node: &Node) -> Option<Data<'_>> {
        match node {
            Node::Origin => Some(Data::Origin),
            Node::Snapshot(snap) => Some(Data::Snapshot(snap)),
            _ => None,
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Data::Origin => "origin".to_string(),
            Data::Snapshot(s) => format!("snapshot {}", s.name()),
        }
    }
}

impl SnapFs {
    /// Reads up to `size` bytes at `offset`: the bytes up to the end of the file, none at or
    /// past it. The buffer is page-aligned (direct I/O reads straight into it) and filled
    /// completely whenever this succeeds.
    pub(super) fn read_data(&self, file: &Data, offset: u64, size: u32) -> Result<IoBuf, Errno> {
        let end = self.volume.size_bytes();
        if offset >= end {
            return Ok(IoBuf::new(0));
        }
        let len = (end - offset).min(size as u64) as usize;
        let mut buf = IoBuf::new(len);
        let result = match file {
            Data::Origin => self.volume.read_origin_buf(offset, &mut buf),
            Data::Snapshot(snap) => self.volume.read_snapshot_buf(snap, offset, &mut buf),
        };
        self.check(file, "read", offset, len as u64, result)?;
        Ok(buf)
    }

    /// Writes all of `data` at `offset`, or nothing: a write reaching past the end fails with
    /// `ENOSPC` (the file cannot grow), with nothing written.
    pub(super) fn write_data(&self, file: &Data, offset: u64, data: &[u8]) -> Result<u32, Errno> {
        let len = data.len() as u64;
        if offset
            .checked_add(len)
            .is_none_or(|end| end > self.volume.size_bytes())
        {
            return Err(Errno::ENOSPC);
        }
        super::request_buffers::check_write_data(data);
        let result = match file {
            Data::Origin => self.volume.write_origin(offset, data),
            Data::Snapshot(snap) => self.volume.write_snapshot(snap, offset, data),
        };
        self.check(file, "write", offset, len, result)?;
        Ok(data.len() as u32)
    }

    /// Drops what was read ahead for the file: its last open handle was closed.
    pub(super) fn forget_reads(&self, file: &Data) {
        match file {
            Data::Origin => self.volume.forget_origin_reads(),
            Data::Snapshot(snap) => self.volume.forget_snapshot_reads(snap),
        }
    }

    /// Makes every acknowledged write to the file durable (fsync, fdatasync, close).
    pub(super) fn flush_data(&self, file: &Data) -> Result<(), Errno> {
        let result = match file {
            Data::Origin => self.volume.flush_origin(),
            Data::Snapshot(snap) => self.volume.flush_snapshot(snap),
        };
        self.check(file, "flush", 0, 0, result)?;
        super::lograte::log_flushed(|| file.describe());
        Ok(())
    }

    /// `fallocate`, keeping each mode's promise for a file that cannot grow (docs/discard.md):
    /// - `PUNCH_HOLE|KEEP_SIZE` (a loop device's discard, and its write-zeroes without
    ///   `NOUNMAP`): the range reads zeroes afterwards, on the origin (copied out first) and on
    ///   a snapshot (every chunk), whatever the options and features;
    /// - `ZERO_RANGE`, with or without `KEEP_SIZE` (write-zeroes with `NOUNMAP`): zeroes, as
    ///   written zeroes;
    /// - mode 0 or `KEEP_SIZE` alone: later writes must not fail for lack of space. Every
    ///   origin byte is backed already; a snapshot gets exceptions for the chunks without one.
    ///
    /// With `KEEP_SIZE` the part of the range past the end is ignored, as for any file; without
    /// it a range past the end would grow the file: `EOPNOTSUPP`, and so do the other modes
    /// (collapse, insert, unshare). A range that cannot be done fails; nothing is answered 0
    /// that was not done.
    pub(super) fn fallocate_data(
        &self,
        file: &Data,
        offset: u64,
        length: u64,
        mode: i32,
    ) -> Result<(), Errno> {
        if self.settings.read_only {
            return Err(Errno::EROFS);
        }
        enum Op {
            Reserve,
            Punch,
            Zero,
        }
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let op = match (mode & !libc::FALLOC_FL_KEEP_SIZE, keep_size) {
            (0, _) => Op::Reserve,
            (libc::FALLOC_FL_PUNCH_HOLE, true) => Op::Punch,
            (libc::FALLOC_FL_ZERO_RANGE, _) => Op::Zero,
            _ => return Err(Errno::EOPNOTSUPP),
        };
        let size = self.volume.size_bytes();
        let end = offset.checked_add(length).ok_or(Errno::EINVAL)?;
        if end > size && !keep_size {
            return Err(Errno::EOPNOTSUPP);
        }
        let end = end.min(size);
        if offset >= end {
            return Ok(());
        }
        let len = end - offset;
        let v = &self.volume;
        let result = match (op, file) {
            (Op::Reserve, Data::Origin) => Ok(()),
            (Op::Reserve, Data::Snapshot(snap)) => v.reserve_snapshot(snap, offset, len),
            (Op::Punch, Data::Origin) => v.discard_origin(offset, len),
            (Op::Punch, Data::Snapshot(snap)) => v.discard_snapshot(snap, offset, len),
            (Op::Zero, Data::Origin) => v.zero_origin(offset, len),
            (Op::Zero, Data::Snapshot(snap)) => v.zero_snapshot(snap, offset, len),
        };
        self.check(file, "fallocate", offset, len, result)
    }

    /// Logs device failures (the errno alone would lose the cause) and maps the error.
    pub(super) fn check(
        &self,
        file: &Data,
        what: &str,
        offset: u64,
        len: u64,
        result: Result<(), VolumeError>,
    ) -> Result<(), Errno> {
        result.map_err(|e| {
            match &e {
                VolumeError::Io(_) => {
                    log::error!("{} {what} {offset}+{len}: {e}", file.describe())
                }
                _ => log::debug!("{} {what} {offset}+{len}: {e}", file.describe()),
            }
            errno(&e)
        })
    }
}
