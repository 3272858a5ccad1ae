//! The one place where errors become errnos: the volume's (data files) and the control
//! commands' (the `control` file).

use crate::control::CommandError;
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

/// The errno a refused control command's write fails with (the reason is what `control`
/// reads next): `EINVAL` for a malformed command or one this state does not allow, `EBUSY` for
/// one that conflicts with work in progress (a merge running, a file open), `EPERM` for a
/// writer who may not send it.
pub(super) fn command_errno(err: &CommandError) -> Errno {
    match err {
        CommandError::Invalid(_) => Errno::EINVAL,
        CommandError::Busy(_) => Errno::EBUSY,
        CommandError::Denied(_) => Errno::EPERM,
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

    #[test]
    fn command_mapping() {
        let why = || "why".to_string();
        assert_eq!(command_errno(&CommandError::Invalid(why())), Errno::EINVAL);
        assert_eq!(command_errno(&CommandError::Busy(why())), Errno::EBUSY);
        assert_eq!(command_errno(&CommandError::Denied(why())), Errno::EPERM);
    }
}
