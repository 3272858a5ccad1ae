//! Errors of the volume layer. The FUSE layer turns them into errnos in one place.

use crate::store::StoreError;
use std::fmt;
use std::io;

#[derive(Debug)]
#[non_exhaustive]
pub enum VolumeError {
    /// The range starts or ends beyond the volume.
    OutOfRange { offset: u64, len: u64, size: u64 },
    /// The snapshot is invalid (COW full, I/O error, or marked so on disk): all I/O fails.
    Invalid,
    /// A `PO` snapshot ran out of COW space on a snapshot write: writes fail, reads work.
    Overflow,
    /// The volume was opened read-only.
    ReadOnly,
    /// A zeroing that would allocate exceptions (a punch on a snapshot) found too little room
    /// in the COW: nothing was changed, and the snapshot stays valid (ENOSPC).
    NoSpace,
    /// The snapshot is no longer attached (dropped, or merged away).
    Detached,
    /// A device failed.
    Io(io::Error),
}

impl fmt::Display for VolumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VolumeError::OutOfRange { offset, len, size } => write!(
                f,
                "range {offset}+{len} lies beyond the end of the volume ({size} bytes)"
            ),
            VolumeError::Invalid => write!(f, "snapshot is invalid"),
            VolumeError::Overflow => write!(f, "snapshot overflowed: its COW device is full"),
            VolumeError::ReadOnly => write!(f, "volume is read-only"),
            VolumeError::NoSpace => write!(
                f,
                "the snapshot's COW device has no room for the exceptions this zeroing needs; \
                 nothing was changed"
            ),
            VolumeError::Detached => write!(f, "snapshot is no longer attached"),
            VolumeError::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for VolumeError {}

impl From<io::Error> for VolumeError {
    fn from(e: io::Error) -> VolumeError {
        VolumeError::Io(e)
    }
}

/// Why a volume or a snapshot could not be opened or attached. One line, for a person.
#[derive(Debug)]
pub struct OpenError(pub String);

impl fmt::Display for OpenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OpenError {}

impl OpenError {
    pub(crate) fn store(name: &str, cow: &str, e: StoreError) -> OpenError {
        OpenError(format!("snapshot {name} ({cow}): {e}"))
    }
}
