//! `snapfs changes MNT NAME [--json]`: the origin byte ranges that may differ from snapshot
//! NAME (its exceptions, coalesced), from the daemon's in-memory table.

use super::client::Mount;
use super::sizes::human;
use snapfs::changes::ChangeMap;
use snapfs::options::check_snapshot_name;
use std::path::PathBuf;

pub const ABOUT: &str = "\
List the byte ranges of the origin that may differ from snapshot NAME: the chunks the origin
(or the snapshot's own file) has written since the snapshot was taken, that is its exceptions,
coalesced into runs. Each range is whole chunks; every other byte of the origin still holds
what the snapshot holds. This is what an incremental backup needs to copy (snapfs backup uses
it; lvmsync reads a dm-snapshot COW for the same purpose).

It is read from the daemon's table, so it works for persistent and transient snapshots and is
right while writes continue: a range only ever grows, so a list read now covers every write
acknowledged before it. During a merge it lists the chunks not merged back yet (the merged
view reads them from the COW; the origin device still holds other data there). An invalid
snapshot has no list (any chunk may differ). A COW can also be read offline:
snapfs inspect --changes COW.

Only root may run it, as the other commands sent through MNT/control: it tells which blocks of
the volume were written. The same as: echo \"changes NAME [FROM]\" > MNT/control (in pages of
at most 65536 runs, in chunks).";

pub const EXAMPLES: &str = "\
Examples:
  snapfs changes /srv/data-vol nightly
  snapfs changes /srv/data-vol nightly --json | jq '.total_bytes'";

#[derive(clap::Args)]
pub struct Args {
    /// The snapfs mountpoint
    mountpoint: PathBuf,
    /// The snapshot
    name: String,
    /// Print {"snapshot", "chunk_bytes", "ranges": [{"offset", "length"}], "total_bytes"}
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), String> {
    check_snapshot_name(&args.name)?;
    let mount = Mount::open(&args.mountpoint)?;
    let map = mount
        .changes(&args.name)
        .map_err(|why| format!("changes {}: {why}", args.name))?;
    let text = if args.json {
        format!("{}\n", map.to_json(Some(&args.name), None))
    } else {
        table(&map)
    };
    emit(&text)
}

/// Writes a listing to stdout; a closed stdout (a reader that went away) is an error with a
/// reason, not a panic.
pub fn emit(text: &str) -> Result<(), String> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| format!("writing the list to stdout: {e}"))
}

/// The human listing of `map`; shared with `snapfs inspect --changes`.
pub fn table(map: &ChangeMap) -> String {
    let ranges = map.byte_ranges(None);
    let mut text = format!("{:>16}  {:>16}\n", "OFFSET", "LENGTH");
    for (offset, length) in &ranges {
        text.push_str(&format!("{offset:>16}  {length:>16}\n"));
    }
    text.push_str(&format!(
        "total: {} bytes ({}) in {} range{}, {} chunk{} of {}\n",
        map.total_bytes(),
        human(map.total_bytes()),
        ranges.len(),
        if ranges.len() == 1 { "" } else { "s" },
        map.chunks(),
        if map.chunks() == 1 { "" } else { "s" },
        human(map.chunk_bytes),
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_ends_in_a_total() {
        let map = ChangeMap::from_runs(4096, vec![(0, 1), (2, 2)]);
        let t = table(&map);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        assert!(lines[1].trim_start().starts_with("0 "), "{t}");
        assert!(
            lines[2].ends_with(" 8192") && lines[2].contains(" 8192 "),
            "{t}"
        );
        assert_eq!(
            lines[3],
            "total: 12288 bytes (12.00 KiB) in 2 ranges, 3 chunks of 4.00 KiB"
        );
        let empty = table(&ChangeMap::from_runs(512, vec![]));
        assert!(empty.ends_with("total: 0 bytes (0 B) in 0 ranges, 0 chunks of 512 B\n"));
    }
}
