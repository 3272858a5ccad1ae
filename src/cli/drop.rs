//! `snapfs drop MNT NAME`: detach a snapshot; its COW stays on disk as it is.

use super::client::{Mount, shout};
use snapfs::options::check_snapshot_name;
use std::path::PathBuf;

pub const ABOUT: &str = "\
Detach a snapshot from the mount: its file goes away and origin writes stop copying into it.
Its COW is left as it is (consistent up to this moment, but no longer kept up to date: attaching
it again later would show a stale mix). With -o registry=PATH the snapshot is removed from the
registry; if it came from a -o snapshot= option, remove that option from fstab too (snapfs
says so). A merging snapshot cannot be dropped. The same as: echo \"drop NAME\" > MNT/control.";

pub const EXAMPLES: &str = "\
Examples:
  snapfs drop /srv/data-vol nightly
  echo \"drop nightly\" > /srv/data-vol/control";

#[derive(clap::Args)]
pub struct Args {
    /// The snapfs mountpoint
    mountpoint: PathBuf,
    /// The snapshot to detach
    name: String,
}

pub fn run(args: Args) -> Result<(), String> {
    check_snapshot_name(&args.name)?;
    let mount = Mount::open(&args.mountpoint)?;
    let answer = mount
        .command(&format!("drop {}", args.name))
        .map_err(|why| format!("drop {}: {why}", args.name))?;
    println!("{}", answer.ok);
    shout(&answer.warnings);
    Ok(())
}
