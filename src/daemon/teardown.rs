//! Teardown: unmounting only what is ours.
//!
//! A daemon unmounts by path in one case only: SIGTERM or SIGINT (`stop`), and then only if the
//! topmost mount on its mount point is its own, recognised by device number (the FUSE
//! connection's). fuser would also unmount by path when its session ends (with a check of the
//! connection that is always true): after an external `umount` that would take away whatever is
//! mounted there by then, a mount stacked underneath or a new mount made right after `umount`.
//! The daemon therefore never lets fuser unmount (see `run_session` in the parent module).

use crate::host::mountinfo::{self, MountEntry};
use nix::mount::{MntFlags, umount2};
use std::path::Path;

/// How to recognise this mount in the mount table.
#[derive(Clone, Debug)]
pub(super) struct Identity {
    /// The device number of the mount's files (`0:N`, N being the FUSE connection), when known.
    pub dev: Option<libc::dev_t>,
    /// The origin as given: the mount's source in the table.
    pub fsname: String,
}

impl Identity {
    fn matches(&self, entry: &MountEntry) -> bool {
        entry.is_snapfs()
            && match self.dev {
                Some(dev) => entry.dev == dev,
                None => entry.source == self.fsname,
            }
    }
}

/// Detaches the mount if the top mount on `mountpoint` is still ours (after an external
/// umount something else may sit there: leave it alone). The FUSE session then ends when the
/// kernel drops the connection (at once, or when the last user such as a loop device lets go),
/// and the main thread finishes the teardown.
pub(super) fn stop(mountpoint: &Path, ours: &Identity) {
    let table = mountinfo::read();
    let top = mountinfo::top_at(&table, mountpoint);
    if !top.is_some_and(|m| ours.matches(m)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_top_mount_and_only_ours() {
        let table = mountinfo::parse(
            "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 0:50 / /mnt/my\\040vol rw,nosuid,nodev,relatime shared:20 - fuse.snapfs /img/origin.img rw,user_id=0
41 22 0:51 / /mnt/other rw - fuse.snapfs /img/o2 rw
",
        );
        let mp = Path::new("/mnt/my vol");
        let by_dev = |minor| Identity {
            dev: Some(libc::makedev(0, minor)),
            fsname: "/img/origin.img".to_string(),
        };
        let by_name = |name: &str| Identity {
            dev: None,
            fsname: name.to_string(),
        };
        let top = |t: &[MountEntry], p| mountinfo::top_at(t, p).cloned();
        let ours = |t: &[MountEntry], p, id: &Identity| top(t, p).is_some_and(|m| id.matches(&m));
        assert!(ours(&table, mp, &by_dev(50)));
        assert!(!ours(&table, mp, &by_dev(51)), "same origin, another mount");
        assert!(ours(&table, mp, &by_name("/img/origin.img")));
        assert!(!ours(&table, mp, &by_name("/img/other.img")));
        assert!(!ours(&table, Path::new("/mnt/none"), &by_dev(50)));
        // A second snapfs mount of the same origin stacked on top: not ours.
        let mut stacked = table.clone();
        stacked.extend(mountinfo::parse(
            "42 40 0:52 / /mnt/my\\040vol rw - fuse.snapfs /img/origin.img rw\n",
        ));
        assert!(!ours(&stacked, mp, &by_dev(50)));
        assert!(ours(&stacked, mp, &by_dev(52)));
    }
}
