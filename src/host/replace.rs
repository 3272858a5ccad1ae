//! Replacing a small file atomically and durably: a temporary file beside it, written and
//! fsynced, renamed over it, the directory fsynced. A crash leaves the old file or the new one,
//! never a mix. The registry and the backup marker are written this way.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// Replaces `path` with `contents`. `what` names the file in errors ("registry path").
///
/// The temporary file `.NAME.tmp` is never written through what is there already (a dead
/// run's leftover, or a symlink someone planted in a shared directory): that is removed and
/// the file created anew with O_EXCL, which follows no symlink; if someone plants another in
/// between, the replace fails and changes nothing.
pub fn replace_file(path: &Path, contents: &[u8], what: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} has no file name"),
        )
    })?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    // The rename is durable only once the directory is.
    File::open(dir)?.sync_all()
}
