//! Teardown: the signal thread, and unmounting only what is ours.

use crate::volume::Volume;
use nix::mount::{MntFlags, umount2};
use nix::sys::signal::{SigSet, Signal};
use std::path::Path;
use std::sync::Arc;

/// The signals that stop a mount: blocked in every thread, taken by the signal thread.
pub(super) fn stop_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    set
}

/// Starts the thread that takes `signals`: each one flushes every device and detaches the
/// mount. The FUSE session then ends when the kernel drops the connection (at once, or when
/// the last user such as a loop device lets go), and the main thread finishes the teardown.
pub(super) fn spawn_signal_thread(
    signals: SigSet,
    volume: Arc<Volume>,
    mountpoint: &Path,
    fsname: &str,
) -> std::io::Result<()> {
    let mountpoint = mountpoint.to_path_buf();
    let fsname = fsname.to_string();
    std::thread::Builder::new()
        .name("snapfs-signals".to_string())
        .spawn(move || {
            loop {
                let sig = match signals.wait() {
                    Ok(sig) => sig,
                    Err(e) => {
                        log::error!("sigwait failed: {e}; stop with umount");
                        return;
                    }
                };
                log::info!("{sig}: flushing and unmounting {}", mountpoint.display());
                if let Err(e) = volume.flush_all() {
                    log::error!("flush failed: {e}");
                }
                stop(&mountpoint, &fsname);
            }
        })?;
    Ok(())
}

/// Detaches the mount if the top mount on `mountpoint` is still ours (after an external
/// umount something else may sit there: leave it alone).
fn stop(mountpoint: &Path, fsname: &str) {
    let ours = match std::fs::read_to_string("/proc/self/mountinfo") {
        Ok(table) => top_mount_is_ours(&table, mountpoint, fsname),
        Err(e) => {
            log::warn!("cannot read /proc/self/mountinfo ({e}); unmounting anyway");
            true
        }
    };
    if !ours {
        log::info!("{} is no longer mounted here", mountpoint.display());
        return;
    }
    match umount2(mountpoint, MntFlags::MNT_DETACH) {
        Ok(()) => log::info!(
            "{} detached; snapfs exits once the last user (e.g. a loop device) is gone",
            mountpoint.display()
        ),
        Err(e) => log::warn!("umount {}: {e}", mountpoint.display()),
    }
}

/// Whether the last (topmost) mount on `mountpoint` in a mountinfo table is a snapfs mount of
/// `fsname`. Fields: `id parent dev root mountpoint opts [optional...] - fstype source opts`,
/// with spaces, tabs, newlines and backslashes octal-escaped.
fn top_mount_is_ours(table: &str, mountpoint: &Path, fsname: &str) -> bool {
    let escape = |s: &str| {
        s.replace('\\', "\\134")
            .replace(' ', "\\040")
            .replace('\t', "\\011")
            .replace('\n', "\\012")
    };
    let want_mp = escape(&mountpoint.display().to_string());
    let want_source = escape(fsname);
    let top = table
        .lines()
        .rev()
        .find(|line| line.split(' ').nth(4) == Some(want_mp.as_str()));
    let Some(line) = top else { return false };
    let Some((_, tail)) = line.split_once(" - ") else {
        return false;
    };
    let mut tail = tail.split(' ');
    tail.next() == Some("fuse.snapfs") && tail.next() == Some(want_source.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_top_mount() {
        let table = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/my\\040vol rw,nosuid,nodev,relatime shared:20 - fuse.snapfs /img/origin.img rw,user_id=0
41 22 0:51 / /mnt/other rw - fuse.snapfs /img/o2 rw
";
        let mp = Path::new("/mnt/my vol");
        assert!(top_mount_is_ours(table, mp, "/img/origin.img"));
        assert!(!top_mount_is_ours(table, mp, "/img/other.img"));
        assert!(!top_mount_is_ours(
            table,
            Path::new("/mnt/none"),
            "/img/origin.img"
        ));
        let covered = format!("{table}42 40 0:52 / /mnt/my\\040vol rw - tmpfs tmpfs rw\n");
        assert!(!top_mount_is_ours(&covered, mp, "/img/origin.img"));
    }
}
