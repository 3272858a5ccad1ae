//! `snapfs inspect COW [--json]`: what a COW device holds, read offline and read-only, with the
//! same checks a mount makes (except those that need the origin).

use super::sizes::{chunk, human};
use serde_json::{Value, json};
use snapfs::device::{BlockDevice, FileDevice, OpenMode};
use snapfs::store::{
    self, HEADER_MAGIC, HEADER_READ_BYTES, Header, Loaded, OriginGeometry, StoreKind, Usage,
};
use std::path::PathBuf;
use std::sync::Arc;

pub const ABOUT: &str = "\
Describe a COW device without mounting anything: its header (magic, version, valid flag, chunk
size), its exceptions (chunks saved from the origin), its usage in the kernel's figures
(allocated/total metadata, in sectors, as dmsetup status prints them) and whether a snapfs merge
is in progress on it. It reads the kernel's persistent format, so COWs made by the kernel, by
LVM (the -cow device of a snapshot LV) or by snapfs all work. Nothing is written; a COW that a
mount is using is refused (use snapfs status for that).

Every record is checked as a mount checks it, except against the origin's size, which inspect
does not know. Exit status 1 if the COW is corrupt or unreadable.

--changes lists the origin byte ranges the COW's exceptions cover instead (the changed-chunk
map, as snapfs changes MNT NAME prints it for a mounted snapshot: the same table, or the same
JSON with \"snapshot\": null and the COW's path as \"cow\"). For a COW whose merge was
interrupted, the chunks not merged back yet. Ranges are whole chunks (the origin's size is not
known here).";

pub const EXAMPLES: &str = "\
Examples:
  snapfs inspect /var/lib/vols/nightly.cow
  snapfs inspect /dev/mapper/vg-nightly-cow --json
  snapfs inspect --changes /var/lib/vols/nightly.cow --json";

#[derive(clap::Args)]
pub struct Args {
    /// The COW device or file
    cow: PathBuf,
    /// Print JSON (fields as in the text, documented in docs/cli.md)
    #[arg(long)]
    json: bool,
    /// List the origin byte ranges the COW's exceptions cover (its changed chunks)
    #[arg(long)]
    changes: bool,
}

/// What inspect found.
enum Finding {
    /// The first four bytes are zero: a new COW, formatted when a snapshot first uses it.
    New,
    /// A store whose header says it was invalidated.
    Invalid(Header),
    /// A usable store.
    Valid {
        header: Header,
        exceptions: u64,
        usage: Usage,
    },
    /// A header, but a store snapfs (and a careful kernel) would refuse.
    Corrupt(Option<Header>, String),
}

pub fn run(args: Args) -> Result<(), String> {
    let device = FileDevice::open(&args.cow, OpenMode::ReadOnly).map_err(|e| {
        if e.to_string().contains("in use") {
            format!("{e}; inspect works offline: for a mounted snapshot use snapfs status")
        } else {
            e.to_string()
        }
    })?;
    let size = device.size_bytes();
    if args.changes {
        let map =
            changes_of(Arc::new(device)).map_err(|why| format!("{}: {why}", args.cow.display()))?;
        let text = if args.json {
            let cow = args.cow.display().to_string();
            format!("{}\n", map.to_json(None, Some(("cow", &cow))))
        } else {
            super::changes::table(&map)
        };
        return super::changes::emit(&text);
    }
    let finding = examine(Arc::new(device));
    let path = args.cow.display().to_string();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&path, size, &finding)).expect("JSON")
        );
    } else {
        print!("{}", text(&path, size, &finding));
    }
    match finding {
        Finding::Corrupt(_, why) => Err(format!("{path}: {why}")),
        _ => Ok(()),
    }
}

fn examine(device: Arc<FileDevice>) -> Finding {
    let mut head = [0u8; HEADER_READ_BYTES];
    let len = snapfs::store::header_read_len(device.size_bytes());
    if let Err(e) = device.read_at(&mut head[..len], 0) {
        return Finding::Corrupt(None, format!("cannot read the header: {e}"));
    }
    let header = Header::decode(&head);
    if header.magic == 0 {
        return Finding::New;
    }
    if header.magic != HEADER_MAGIC {
        return Finding::Corrupt(
            None,
            format!("no snapshot header (magic {:#010x})", header.magic),
        );
    }
    // No origin is known: let every origin chunk number pass.
    let geometry = OriginGeometry {
        size_bytes: u64::MAX / 4,
        block_bytes: 512,
    };
    let persistent = StoreKind::Persistent { overflow: false };
    let mut store = match store::open(persistent, device, 0, geometry, true) {
        Ok(store) => store,
        Err(e) => return Finding::Corrupt(Some(header), e.to_string()),
    };
    match store.read_metadata() {
        Ok(Loaded::Valid(pairs)) => Finding::Valid {
            header: header.with_merging(store.merge_marker()),
            exceptions: pairs.len() as u64,
            usage: store.usage(),
        },
        Ok(Loaded::Invalid) => Finding::Invalid(header),
        Err(e) => Finding::Corrupt(Some(header), e.to_string()),
    }
}

/// The changed-chunk map of a valid persistent store: one chunk per exception, coalesced.
fn changes_of(device: Arc<FileDevice>) -> Result<snapfs::changes::ChangeMap, String> {
    let mut head = [0u8; HEADER_READ_BYTES];
    let len = snapfs::store::header_read_len(device.size_bytes());
    device
        .read_at(&mut head[..len], 0)
        .map_err(|e| format!("cannot read the header: {e}"))?;
    let header = Header::decode(&head);
    if header.magic != HEADER_MAGIC {
        return Err(
            "holds no snapshot store (a new COW, or a transient one: its exceptions \
                    were in memory only)"
                .to_string(),
        );
    }
    let geometry = OriginGeometry {
        size_bytes: u64::MAX / 4,
        block_bytes: 512,
    };
    let persistent = StoreKind::Persistent { overflow: false };
    let mut store =
        store::open(persistent, device, 0, geometry, true).map_err(|e| format!("corrupt: {e}"))?;
    match store.read_metadata().map_err(|e| format!("corrupt: {e}"))? {
        Loaded::Valid(pairs) => Ok(snapfs::changes::ChangeMap::from_runs(
            header.chunk_sectors as u64 * 512,
            pairs.iter().map(|&(old, _)| (old, 1)).collect(),
        )),
        Loaded::Invalid => Err(
            "the store is invalid: which chunks changed is no longer known \
                                (any may differ)"
                .to_string(),
        ),
    }
}

/// The text form: one `key: value` line per fact, keys padded to one column.
fn text(path: &str, size: u64, finding: &Finding) -> String {
    let mut lines = vec![
        ("cow", path.to_string()),
        (
            "size",
            format!("{size} bytes ({}, {} sectors)", human(size), size / 512),
        ),
    ];
    match finding {
        Finding::New => {
            lines.push(("header", "none (first 4 bytes are zero)".to_string()));
            lines.push((
                "state",
                "new: formatted when a snapshot first uses it".to_string(),
            ));
        }
        Finding::Invalid(h) => {
            lines.extend(header_lines(h));
            let state = "invalid (valid = 0: the snapshot is lost; status says Invalid)";
            lines.push(("state", state.to_string()));
            lines.push(("exceptions", "- (an invalid store is not read)".to_string()));
            lines.push(("merge", merge_word(h).to_string()));
        }
        Finding::Valid {
            header,
            exceptions,
            usage,
        } => {
            lines.extend(header_lines(header));
            lines.push(("state", "valid".to_string()));
            lines.push(("exceptions", exceptions.to_string()));
            let figures = "(allocated/total metadata, sectors, as dmsetup status)";
            lines.push(("usage", format!("{usage}  {figures}")));
            lines.push(("used", format!("{:.2}%", used_percent(usage))));
            lines.push(("merge", merge_word(header).to_string()));
        }
        Finding::Corrupt(h, why) => {
            lines.extend(h.iter().flat_map(header_lines));
            lines.push(("state", format!("corrupt: {why}")));
        }
    }
    lines
        .iter()
        .map(|(key, value)| format!("{:<13}{value}\n", format!("{key}:")))
        .collect()
}

fn header_lines(h: &Header) -> [(&'static str, String); 2] {
    [
        (
            "header",
            format!("magic SnAp, version {}, valid {}", h.version, h.valid),
        ),
        (
            "chunk size",
            format!(
                "{} sectors ({})",
                h.chunk_sectors,
                chunk(h.chunk_sectors as u64)
            ),
        ),
    ]
}

fn merge_word(h: &Header) -> &'static str {
    if h.merging && h.merge_paused {
        "paused (snapfs marker): the merged view holds at the next mount; resume NAME continues it"
    } else if h.merging {
        "in progress (snapfs marker): the merge resumes when this snapshot is mounted"
    } else {
        "none"
    }
}

fn used_percent(u: &Usage) -> f64 {
    if u.total_sectors == 0 {
        0.0
    } else {
        u.allocated_sectors as f64 * 100.0 / u.total_sectors as f64
    }
}

fn to_json(path: &str, size: u64, finding: &Finding) -> Value {
    let (state, header, exceptions, usage) = match finding {
        Finding::New => ("new", None, None, None),
        Finding::Invalid(h) => ("invalid", Some(h), None, None),
        Finding::Valid {
            header,
            exceptions,
            usage,
        } => ("valid", Some(header), Some(*exceptions), Some(usage)),
        Finding::Corrupt(h, _) => ("corrupt", h.as_ref(), None, None),
    };
    json!({
        "version": 1,
        "cow": path,
        "size_bytes": size,
        "state": state,
        "error": match finding { Finding::Corrupt(_, why) => Some(why.clone()), _ => None },
        "header": header.map(|h| json!({"version": h.version, "valid": h.valid, "chunk_sectors": h.chunk_sectors})),
        "merging": header.map(|h| h.merging),
        "merge_paused": header.map(|h| h.merge_paused),
        "exceptions": exceptions,
        "usage": usage.map(|u| json!({
            "allocated_sectors": u.allocated_sectors,
            "total_sectors": u.total_sectors,
            "metadata_sectors": u.metadata_sectors,
            "used_percent": used_percent(u),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::Path;

    /// A COW written byte by byte as docs/format.md says (the kernel's layout), 1 MiB, 4 KiB
    /// chunks: `header` then area 0 with `records`, then the terminator.
    fn kernel_cow(tag: &str, valid: u32, records: &[(u64, u64)], marker: bool) -> PathBuf {
        let mut image = vec![0u8; 1 << 20];
        for (i, word) in [0x7041_6E53u32, valid, 1, 8].iter().enumerate() {
            image[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        if marker {
            image[16..24].copy_from_slice(b"snapfsMG");
            image[24..28].copy_from_slice(&1u32.to_le_bytes());
        }
        for (i, (old, new)) in records.iter().enumerate() {
            let at = 4096 + i * 16;
            image[at..at + 8].copy_from_slice(&old.to_le_bytes());
            image[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
        }
        let path =
            std::env::temp_dir().join(format!("snapfs-inspect-{}-{tag}", std::process::id()));
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&image)
            .unwrap();
        path
    }

    fn inspect(path: &Path) -> (String, Value) {
        let device = FileDevice::open(path, OpenMode::ReadOnly).unwrap();
        let size = device.size_bytes();
        let finding = examine(Arc::new(device));
        let shown = path.display().to_string();
        let out = (
            text(&shown, size, &finding),
            to_json(&shown, size, &finding),
        );
        std::fs::remove_file(path).unwrap();
        out
    }

    #[test]
    fn a_kernel_format_cow() {
        let (text, json) = inspect(&kernel_cow("valid", 1, &[(5, 2), (9, 3)], false));
        assert!(
            text.contains("\nheader:      magic SnAp, version 1, valid 1\n"),
            "{text}"
        );
        assert!(
            text.contains("\nchunk size:  8 sectors (4 KiB)\n"),
            "{text}"
        );
        assert!(text.contains("\nexceptions:  2\n"), "{text}");
        // next_free = 4 chunks of 8 sectors; area 0 only: metadata = 2 chunks.
        assert!(text.contains("\nusage:       32/2048 16  ("), "{text}");
        assert!(text.contains("\nmerge:       none\n"), "{text}");
        assert_eq!(json["state"], "valid");
        assert_eq!(json["usage"]["allocated_sectors"], 32);
    }

    #[test]
    fn invalid_merging_new_and_corrupt_cows() {
        let (text, json) = inspect(&kernel_cow("invalid", 0, &[(5, 2)], false));
        assert!(text.contains("\nstate:       invalid"), "{text}");
        assert_eq!(
            (json["state"].as_str(), json["exceptions"].as_u64()),
            (Some("invalid"), None)
        );
        let (text, json) = inspect(&kernel_cow("merging", 1, &[(5, 2)], true));
        assert!(text.contains("\nmerge:       in progress"), "{text}");
        assert_eq!(json["merging"], true);
        let (text, _) = inspect(&kernel_cow("area", 1, &[(5, 1)], false));
        assert!(
            text.contains("state:       corrupt: ") && text.contains("metadata chunk"),
            "{text}"
        );
        let fresh = kernel_cow("new", 1, &[], false);
        std::fs::write(&fresh, vec![0u8; 65536]).unwrap();
        let (text, json) = inspect(&fresh);
        assert!(
            text.ends_with("state:       new: formatted when a snapshot first uses it\n"),
            "{text}"
        );
        assert_eq!(json["header"], Value::Null);
    }
}
