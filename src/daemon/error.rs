//! Why a mount was refused before it served anything. The message is what the user reads
//! (`snapfs: ...` on stderr, or through the pipe of a daemon that failed to start).

use crate::registry::RegistryError;
use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a mount takes root, and how to give it.
const NOT_PRIVILEGED: &str = "snapfs mounts need root: mounting a FUSE filesystem takes \
     CAP_SYS_ADMIN, which this user does not have (and no fusermount helper is installed); run \
     snapfs mount as root (e.g. with sudo), or mount it from /etc/fstab";

#[derive(Debug)]
#[non_exhaustive]
pub enum MountError {
    /// This user may not mount a FUSE file system.
    NotPrivileged,
    /// A path could not be made absolute, or the mount point cannot be used: the reason.
    Path(String),
    /// The mount point is not a directory.
    NotADirectory(PathBuf),
    /// `notify=` names no executable file: the reason.
    Notify(String),
    /// The mount point holds a snapfs mount already: the reason.
    Stacked(String),
    /// A path leads back to a snapfs mount: the reason (see `crate::host::reach`).
    Reach(String),
    /// The registry cannot be read or written, or disagrees with the mount options.
    Registry(RegistryError),
    /// The log file cannot be opened.
    Log { path: PathBuf, error: io::Error },
    /// The origin, a COW or the volume cannot be opened: the reason.
    Open(String),
    /// The kernel refused the FUSE mount; `privilege` when the user lacks the right to mount.
    Fuse {
        mountpoint: PathBuf,
        error: io::Error,
        privilege: bool,
    },
}

impl fmt::Display for MountError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountError::NotPrivileged => f.write_str(NOT_PRIVILEGED),
            MountError::Path(why)
            | MountError::Notify(why)
            | MountError::Stacked(why)
            | MountError::Reach(why)
            | MountError::Open(why) => f.write_str(why),
            MountError::NotADirectory(mp) => {
                write!(f, "mountpoint {} is not a directory", mp.display())
            }
            MountError::Registry(e) => write!(f, "{e}"),
            MountError::Log { path, error } => write!(f, "log file {}: {error}", path.display()),
            MountError::Fuse {
                mountpoint,
                error,
                privilege,
            } => {
                write!(f, "cannot mount on {}: {error}", mountpoint.display())?;
                if *privilege {
                    write!(f, ": {NOT_PRIVILEGED}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for MountError {}

impl From<RegistryError> for MountError {
    fn from(e: RegistryError) -> MountError {
        MountError::Registry(e)
    }
}
