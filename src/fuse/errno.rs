//! The one place where volume errors become errnos.

use crate::volume::VolumeError;
use fuser::Errno;

/// The errno the kernel (and the program doing I/O) sees for a volume error.
///
/// - `OutOfRange`: `ENOSPC`. Reads are clipped to the end of the file before they reach the
///   volume, so only writes (data, zeroes, discards) can get here: a file that cannot grow is
///   full.
/// - `Invalid`, `Overflow`: `EIO`, as the kernel fails the bio of an invalid or overflowed
///   snapshot.
/// - `ReadOnly`: `EROFS`.
/// - `NoSpace`: `ENOSPC`: a punch on a snapshot needed more COW space than is left (nothing
///   was done; the snapshot stays valid).
/// - `Detached`: `ENODEV`: the snapshot behind an open file was dropped.
/// - `Io`: `EIO` (details are logged by whoever saw them).
pub(super) fn errno(err: &VolumeError) -> Errno {
    // Exhaustive on purpose (the enum is this crate's): a new variant must be mapped here.
    match err {
        VolumeError::OutOfRange { .. } | VolumeError::NoSpace => Errno::ENOSPC,
        VolumeError::Invalid | VolumeError::Overflow => Errno::EIO,
        VolumeError::ReadOnly => Errno::EROFS,
        VolumeError::Detached => Errno::ENODEV,
        VolumeError::Io(_) => Errno::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping() {
        let oor = VolumeError::OutOfRange {
            offset: 1,
            len: 2,
            size: 2,
        };
        assert_eq!(errno(&oor), Errno::ENOSPC);
        assert_eq!(errno(&VolumeError::Invalid), Errno::EIO);
        assert_eq!(errno(&VolumeError::Overflow), Errno::EIO);
        assert_eq!(errno(&VolumeError::ReadOnly), Errno::EROFS);
        assert_eq!(errno(&VolumeError::NoSpace), Errno::ENOSPC);
        assert_eq!(errno(&VolumeError::Detached), Errno::ENODEV);
        let io = VolumeError::Io(std::io::Error::other("boom"));
        assert_eq!(errno(&io), Errno::EIO);
    }
}
