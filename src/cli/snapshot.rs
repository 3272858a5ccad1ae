//! `snapfs snapshot MNT NAME --cow PATH [--size SIZE] [--store P|PO|N] [--chunk CHUNK]
//! [--autoextend THRESHOLD:PERCENT[:MAX]]`: a
//! snapshot of the live origin, taken through `MNT/control` without remounting.

use super::client::{Mount, shout};
use super::sizes::parse_size;
use snapfs::features::FeatureWords;
use snapfs::options::check_snapshot_name;
use snapfs::units::parse_chunk_sectors;
use std::path::{Path, PathBuf};

pub const ABOUT: &str = "\
Take a snapshot of the origin now, while it is mounted and in use (LVM's lvcreate -s). Every
origin write acknowledged before the snapshot is in it, and none after: snapfs holds origin
writes back for the instant it attaches the snapshot, as dm suspends the origin.

A file system on the origin (mounted from a loop device over MNT/origin, or a partition of
one) still has dirty data in its cache. As LVM's suspend does, snapfs freezes it (FIFREEZE)
for the instant of the attach and thaws it (FITHAW), so the snapshot needs no journal
recovery. It is thawed whatever happens: on every error, and after at most 10 s even if the
attach is still running (then a warning says the snapshot may need recovery). A file system
frozen already (fsfreeze -f) is left frozen. --no-freeze leaves them all unfrozen.

--size creates the COW as a sparse file of that size (it must not exist yet); without it, the
COW (a file or a block device) must exist. A new COW is formatted; an existing store is
attached as it is (its chunk size wins). A COW that holds anything else (a file system, a
partition table, an LVM label, swap, any data in its first 128 KiB) is refused unless --force
is given, as mkfs refuses. The same as:
  echo \"snapshot NAME COW STORE CHUNK\" > MNT/control

The snapshot must be attached again at the next mount, or the origin would be written without
copy-out and the snapshot would silently go stale. Mounted with -o registry=PATH, snapfs records
it; without a registry this command prints (and status shows) the option to add to fstab.";

pub const EXAMPLES: &str = "\
Examples:
  snapfs snapshot /srv/data-vol nightly --cow /var/lib/vols/nightly.cow --size 10G
  snapfs snapshot /srv/data-vol before-upgrade --cow /dev/vg/upgrade-cow --store PO --chunk 8k
  snapfs snapshot /srv/data-vol big --cow /var/lib/vols/big.cow --size 1G --autoextend 70:20:10G
  echo \"snapshot nightly /var/lib/vols/nightly.cow P 16\" > /srv/data-vol/control";

#[derive(clap::Args)]
pub struct Args {
    /// The snapfs mountpoint
    mountpoint: PathBuf,
    /// The snapshot's name (its file name in the mount)
    name: String,
    /// The COW device or file
    #[arg(long, value_name = "PATH")]
    cow: PathBuf,
    /// Create the COW as a sparse file of this size (e.g. 256M, 10G)
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    size: Option<u64>,
    /// Exception store: P (persistent), PO (persistent, overflow) or N (transient)
    #[arg(long, default_value = "P", ignore_case = true,
          value_parser = clap::builder::PossibleValuesParser::new(["P", "PO", "N"]))]
    store: String,
    /// Chunk size: sectors, or KiB with a k suffix (default: on-disk size, or 32 sectors)
    #[arg(long, value_name = "CHUNK", value_parser = chunk_word)]
    chunk: Option<String>,
    /// Format the COW even if it holds a file system, a partition table or other data
    #[arg(long)]
    force: bool,
    /// Do not freeze the file systems on the origin while attaching (control word nofreeze)
    #[arg(long)]
    no_freeze: bool,
    /// The kernel's discard_zeroes_cow feature (see docs/discard.md)
    #[arg(long)]
    discard_zeroes_cow: bool,
    /// The kernel's discard_passdown_origin feature (needs --discard-zeroes-cow)
    #[arg(long, requires = "discard_zeroes_cow")]
    discard_passdown_origin: bool,
    /// This snapshot's own autoextension, instead of the mount's -o autoextend= (recorded
    /// with the snapshot; control word autoextend=THRESHOLD:PERCENT[:MAX])
    #[arg(long, value_name = "THRESHOLD:PERCENT[:MAX]", value_parser = autoextend_word)]
    autoextend: Option<String>,
}

/// `--autoextend V` is the control word `autoextend=V`, checked here by the daemon's parser.
fn autoextend_word(value: &str) -> Result<String, String> {
    let word = format!("autoextend={value}");
    FeatureWords::parse([word.as_str()])?;
    Ok(word)
}

fn chunk_word(word: &str) -> Result<String, String> {
    parse_chunk_sectors(word).map_err(|e| e.to_string())?;
    Ok(word.to_string())
}

/// `path` as a word of a control command: the same path for the daemon, or why it cannot be
/// (blanks separate words; the command is text, so a path that is not UTF-8 would reach the
/// daemon as another path). `instead` says what to do.
pub fn control_path(path: &Path, instead: &str) -> Result<String, String> {
    match path.to_str() {
        Some(s) if !s.chars().any(char::is_whitespace) => Ok(s.to_string()),
        Some(s) => Err(format!(
            "COW path {s:?} contains a blank, which a control command cannot carry: {instead}"
        )),
        None => Err(format!(
            "COW path {:?} is not UTF-8, which a control command cannot carry: {instead}",
            path.display()
        )),
    }
}

pub fn run(args: Args) -> Result<(), String> {
    check_snapshot_name(&args.name)?;
    let cow = std::path::absolute(&args.cow).map_err(|e| format!("{}: {e}", args.cow.display()))?;
    let shown = control_path(&cow, "use a symlink without one")?;
    let mount = Mount::open(&args.mountpoint)?;
    let created = match args.size {
        Some(bytes) => {
            create_sparse(&cow, bytes)?;
            true
        }
        None => false,
    };
    let store = args.store.to_ascii_uppercase();
    let mut command = format!("snapshot {} {shown} {store}", args.name);
    if let Some(chunk) = &args.chunk {
        command.push_str(&format!(" {chunk}"));
    }
    for (given, word) in [
        (args.discard_zeroes_cow, "discard_zeroes_cow"),
        (args.discard_passdown_origin, "discard_passdown_origin"),
        (args.force, "force"),
        (args.no_freeze, "nofreeze"),
    ] {
        if given {
            command.push_str(&format!(" {word}"));
        }
    }
    if let Some(word) = &args.autoextend {
        command.push_str(&format!(" {word}"));
    }
    match mount.command(&command) {
        Ok(answer) => {
            println!("{}", answer.ok);
            for note in &answer.notes {
                println!("{note}");
            }
            shout(&answer.warnings);
            Ok(())
        }
        Err(why) => {
            if created {
                let _ = std::fs::remove_file(&cow);
            }
            // The daemon's reasons often name the snapshot already.
            let prefix = format!("snapshot {}", args.name);
            if why.starts_with(&prefix) {
                Err(why)
            } else {
                Err(format!("{prefix}: {why}"))
            }
        }
    }
}

/// A new sparse file of `bytes`: nothing is allocated until snapfs writes to it.
fn create_sparse(path: &Path, bytes: u64) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists: leave out --size to use it as it is, or remove it",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    file.set_len(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot size {}: {e}", path.display()))
}
