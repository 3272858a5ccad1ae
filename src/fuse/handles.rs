//! Open handles of the data files, each with its view of the volume's error sequence.
//!
//! With write-back (`writeback=`), an origin write can fail after it was answered. As the
//! kernel's page cache does (errseq), such an error is reported once to every handle open at
//! the time, at its next fsync or flush (close); a handle opened after it reports it too until
//! an fsync has (a close's result is commonly ignored: a later `sync FILE` must see it).

use super::SnapFs;
use super::data::Data;
use fuser::Errno;
use std::sync::atomic::Ordering;

/// A data file handle: whether it writes, and the error sequence it has seen.
pub(super) struct DataHandle {
    writable: bool,
    seen: u64,
}

impl SnapFs {
    /// A new handle of a data file.
    pub(super) fn open_data(&self, writable: bool) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let seen = self.volume.origin_error_seq();
        self.data_handles
            .lock()
            .insert(fh, DataHandle { writable, seen });
        fh
    }

    pub(super) fn release_data(&self, fh: u64) {
        self.data_handles.lock().remove(&fh);
    }

    /// Whether `fh` was opened for writing (a close of it makes its writes durable).
    pub(super) fn is_writable(&self, fh: u64) -> bool {
        self.data_handles
            .lock()
            .get(&fh)
            .is_some_and(|h| h.writable)
    }

    /// fsync, fdatasync and O_SYNC writes through `fh`: every write acknowledged before it
    /// durable, and for the origin any acknowledged write that failed since this handle last
    /// looked reported (once).
    pub(super) fn sync_data(&self, file: &Data, fh: u64) -> Result<(), Errno> {
        self.sync_data_as(file, fh, true)
    }

    /// A writer's close through `fh`: as [`SnapFs::sync_data`], but an error it reports stays
    /// pending for handles opened later.
    pub(super) fn close_data(&self, file: &Data, fh: u64) -> Result<(), Errno> {
        self.sync_data_as(file, fh, false)
    }

    fn sync_data_as(&self, file: &Data, fh: u64, fsync: bool) -> Result<(), Errno> {
        let Data::Origin = file else {
            return self.flush_data(file);
        };
        let seen = self.data_handles.lock().get(&fh).map(|h| h.seen);
        // An unknown handle (the kernel may sync without one) reports what is new from now.
        let mut now = seen.unwrap_or_else(|| self.volume.origin_error_seq());
        let result = if fsync {
            self.volume.sync_origin(&mut now)
        } else {
            self.volume.sync_origin_keeping(&mut now)
        };
        if let Some(h) = self.data_handles.lock().get_mut(&fh) {
            h.seen = h.seen.max(now);
        }
        self.check(file, "flush", 0, 0, result)?;
        super::lograte::log_flushed(|| file.describe());
        Ok(())
    }
}
