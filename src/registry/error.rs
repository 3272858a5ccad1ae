//! Why a registry could not be read, written or reconciled with the mount options. Each
//! message is one line, naming the file and, for a bad line, its number.

use std::fmt;
use std::io;
use std::path::PathBuf;

#[derive(Debug)]
#[non_exhaustive]
pub enum RegistryError {
    /// Line `line` (counted from 1) is not a snapshot: `why`.
    BadLine { line: usize, why: String },
    /// Line `line` names a snapshot that an earlier line named.
    SecondName { line: usize, name: String },
    /// The file at `path` holds a bad line (`BadLine` or `SecondName`).
    Content {
        path: PathBuf,
        error: Box<RegistryError>,
    },
    /// The file at `path` exists but could not be read.
    Read { path: PathBuf, error: io::Error },
    /// The file at `path` could not be replaced.
    Write { path: PathBuf, error: io::Error },
    /// The mount options (`option`) and the registry (`recorded`) describe snapshot `name`
    /// differently: one of the two COWs would be left without copy-outs.
    Disagree {
        name: String,
        option: String,
        path: PathBuf,
        recorded: String,
    },
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegistryError::BadLine { line, why } => write!(f, "line {line}: {why}"),
            RegistryError::SecondName { line, name } => {
                write!(f, "line {line}: a second snapshot named {name}")
            }
            RegistryError::Content { path, error } => {
                write!(f, "registry {}: {error}", path.display())
            }
            RegistryError::Read { path, error } => {
                write!(f, "registry {}: {error}", path.display())
            }
            RegistryError::Write { path, error } => {
                write!(
                    f,
                    "registry {} could not be written: {error}",
                    path.display()
                )
            }
            RegistryError::Disagree {
                name,
                option,
                path,
                recorded,
            } => write!(
                f,
                "snapshot {name}: the mount options say {option} but registry {} says \
                 {recorded}; make them agree (or snapfs drop it and take it again)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for RegistryError {}
