//! `snapfs status [MNT] [--json]`: the origin and its snapshots as a table (like `lvs`), or as
//! JSON for scripts. Everything comes from `MNT/status` (target and detail lines). Without MNT,
//! every snapfs mount of `/proc/self/mountinfo`, each read on a thread with a time bound so that
//! a stopped daemon is reported rather than hanging the command.

use super::client::Mount;
use super::sizes::{chunk, human};
use serde_json::{Value, json};
use snapfs::host::mountinfo;
use snapfs::status::{Report, SnapshotReport, SnapshotState};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long `snapfs status` (every mount) waits for one mount's status file.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);

pub const ABOUT: &str = "\
Show the origin and every snapshot of a mounted snapfs, one row per snapshot:
  NAME      the snapshot's file name in the mount
  STORE     P (persistent), PO (persistent, overflow on snapshot writes) or N (transient)
  CHUNK     the copy-on-write unit
  SIZE      the snapshot's size (the origin's)
  COW USED  COW space in use, header and metadata included (the kernel's figure)
  COW SIZE  the COW device's size; USE% is USED/SIZE: at 100% the snapshot becomes Invalid
  STATE     active, merging, invalid, overflow or merge-failed
  MERGE     while merging: percent done and chunks left; paused when paused
  ATTACHED  how it came: options (-o snapshot=), registry, or live (snapfs snapshot)
  COW       the COW device
Warnings (a live snapshot that the next mount would forget, a registry that cannot be written)
follow the table. --json prints the same as one JSON object (format: docs/cli.md).
Without a mountpoint: every snapfs mount, one section each (--json: an array of the objects);
a mount whose daemon does not answer within 3 s is listed as not answering.";

pub const EXAMPLES: &str = "\
Examples:
  snapfs status /srv/data-vol
  snapfs status
  snapfs status /srv/data-vol --json | jq '.snapshots[] | select(.cow_used_percent > 80)'";

#[derive(clap::Args)]
pub struct Args {
    /// The snapfs mountpoint (default: every snapfs mount)
    mountpoint: Option<PathBuf>,
    /// Print JSON (stable; see docs/cli.md) instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), String> {
    let Some(mountpoint) = args.mountpoint else {
        return run_all(args.json);
    };
    // Read with the same bound as the listing: a stopped daemon must not hang the command.
    let reading = read_all(std::slice::from_ref(&mountpoint), ANSWER_WITHIN).remove(0);
    let (dir, report) = reading.map_err(|why| format!("{}: {why}", mountpoint.display()))?;
    if args.json {
        let value = to_json(&report, &dir);
        println!("{}", serde_json::to_string_pretty(&value).expect("JSON"));
    } else {
        print!("{}", table(&report, &dir));
    }
    Ok(())
}

/// One mount's answer: its mount point as the mount reports it and its report, or why there
/// is none.
type Reading = Result<(String, Report), String>;

/// Every snapfs mount on top of its mount point, in table order, each read with a bound.
fn run_all(json: bool) -> Result<(), String> {
    let entries = mountinfo::read();
    let mut mounts: Vec<PathBuf> = Vec::new();
    for m in entries.iter().filter(|m| m.is_snapfs()) {
        // A mount covered by another one cannot be reached by its path.
        let on_top = mountinfo::top_at(&entries, &m.mountpoint).is_some_and(|t| t == m);
        if on_top && !mounts.contains(&m.mountpoint) {
            mounts.push(m.mountpoint.clone());
        }
    }
    let readings = read_all(&mounts, ANSWER_WITHIN);
    if json {
        let list: Vec<Value> = mounts
            .iter()
            .zip(&readings)
            .map(|(dir, reading)| {
                let dir = dir.display().to_string();
                match reading {
                    Ok((_, report)) => to_json(report, &dir),
                    Err(why) => json!({"version": 1, "mountpoint": dir, "error": why}),
                }
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Array(list)).expect("JSON")
        );
        return Ok(());
    }
    if mounts.is_empty() {
        println!("no snapfs mounts");
    }
    let sections: Vec<String> = mounts
        .iter()
        .zip(&readings)
        .map(|(dir, reading)| match reading {
            Ok((_, report)) => table(report, &dir.display().to_string()),
            Err(why) => format!("snapfs on {}: {why}\n", dir.display()),
        })
        .collect();
    print!("{}", sections.join("\n"));
    Ok(())
}

/// Reads each mount's status on its own thread; a mount that has not answered by `bound` (from
/// the start) is "not answering". Its thread stays blocked in the read and ends with the process.
fn read_all(mounts: &[PathBuf], bound: Duration) -> Vec<Reading> {
    let (tx, rx) = mpsc::channel();
    for (i, dir) in mounts.iter().enumerate() {
        let (sender, dir) = (tx.clone(), dir.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("status-{i}"))
            .spawn(move || {
                let reading = Mount::open(&dir)
                    .and_then(|m| Ok((m.dir().display().to_string(), m.status()?)));
                let _ = sender.send((i, reading));
            });
        if let Err(e) = spawned {
            let _ = tx.send((i, Err(format!("cannot start a thread to read it: {e}"))));
        }
    }
    drop(tx);
    let mut readings: Vec<Option<Reading>> = vec![None; mounts.len()];
    let deadline = Instant::now() + bound;
    while readings.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, reading)) => readings[i] = Some(reading),
            Err(_) => break,
        }
    }
    readings
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| {
                Err(format!(
                    "not answering (no status within {} s: a stopped or hung daemon?)",
                    bound.as_secs()
                ))
            })
        })
        .collect()
}

/// The table, with a heading line about the origin and the warnings after it.
pub fn table(report: &Report, mountpoint: &str) -> String {
    let size = human(report.origin_sectors * 512);
    let mode = if report.read_only {
        "read-only"
    } else {
        "read-write"
    };
    let registry = report.registry.as_deref().unwrap_or("none");
    let device = report.origin_device.as_deref().unwrap_or("?");
    let mut out =
        format!("origin {device} on {mountpoint}: {size}, {mode}; registry: {registry}\n");
    if report.snapshots.is_empty() {
        out.push_str("no snapshots\n");
    } else {
        let header = [
            "NAME", "STORE", "CHUNK", "SIZE", "COW USED", "COW SIZE", "USE%", "STATE", "MERGE",
            "ATTACHED", "COW",
        ];
        let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
        rows.extend(report.snapshots.iter().map(|s| row(s, &size)));
        out.push_str(&align(&rows));
    }
    for w in &report.warnings {
        out.push_str(&format!("WARNING: {w}\n"));
    }
    out
}

fn row(s: &SnapshotReport, size: &str) -> Vec<String> {
    let dash = || "-".to_string();
    let (used, total) = match s.usage {
        Some(u) => (
            human(u.allocated_sectors * 512),
            human(u.total_sectors * 512),
        ),
        None => (dash(), dash()),
    };
    let percent = match used_percent(s) {
        Some(p) => format!("{p:.2}%"),
        None => dash(),
    };
    let merge = match s.merge {
        Some((left, total)) if s.merge_paused => {
            format!("paused {:.1}% ({left} left)", merge_done(left, total))
        }
        Some((left, total)) => format!("{:.1}% ({left} left)", merge_done(left, total)),
        None => dash(),
    };
    vec![
        s.name.clone(),
        s.store.clone().unwrap_or_else(dash),
        s.chunk_sectors.map(chunk).unwrap_or_else(dash),
        size.to_string(),
        used,
        total,
        percent,
        s.state.as_str().to_string(),
        merge,
        s.attached.clone().unwrap_or_else(dash),
        s.cow.clone().unwrap_or_else(dash),
    ]
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn align(rows: &[Vec<String>]) -> String {
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if c + 1 == columns {
                    cell.clone()
                } else {
                    format!("{cell:<width$}", width = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The COW's use in percent; an Invalid snapshot is full, as `lvs` shows it (100 %).
fn used_percent(s: &SnapshotReport) -> Option<f64> {
    if s.state == SnapshotState::Invalid {
        return Some(100.0);
    }
    s.usage
        .map(|u| percent(u.allocated_sectors, u.total_sectors))
}

/// Percent of a merge done.
pub fn merge_done(left: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        100.0 - percent(left, total)
    }
}

/// The `--json` object; its fields are documented in docs/cli.md and only ever added to.
pub fn to_json(report: &Report, mountpoint: &str) -> Value {
    let snapshots: Vec<Value> = report.snapshots.iter().map(snapshot_json).collect();
    json!({
        "version": 1,
        "mountpoint": mountpoint,
        "origin": {
            "device": report.origin_device,
            "sectors": report.origin_sectors,
            "bytes": report.origin_sectors * 512,
            "read_only": report.read_only,
        },
        "registry": report.registry,
        "snapshots": snapshots,
        "warnings": report.warnings,
    })
}

fn snapshot_json(s: &SnapshotReport) -> Value {
    let usage = s.usage.map(|u| {
        json!({
            "cow_used_sectors": u.allocated_sectors,
            "cow_total_sectors": u.total_sectors,
            "metadata_sectors": u.metadata_sectors,
            "cow_used_percent": used_percent(s),
        })
    });
    let merge = s.merge.map(|(left, total)| {
        json!({
            "chunks_left": left,
            "chunks_total": total,
            "percent_done": merge_done(left, total),
            "paused": s.merge_paused,
        })
    });
    let mut value = json!({
        "name": s.name,
        "state": s.state.as_str(),
        "status": s.word,
        "store": s.store,
        "chunk_sectors": s.chunk_sectors,
        "exceptions": s.exceptions,
        "features": s.features.as_deref().map(|f| f.split('+').collect::<Vec<_>>()).unwrap_or_default(),
        // The snapshot's own autoextend (`70:20:10G`), null when it uses the mount's.
        "autoextend": s.features.as_deref().and_then(|f| f.split('+').find_map(|w| w.strip_prefix("autoextend="))),
        "cow": s.cow,
        "attached": s.attached,
        "merge": merge,
        "warning_level": s.warning,
        "paused": s.merge_paused,
        "cow_used_sectors": null,
        "cow_total_sectors": null,
        "metadata_sectors": null,
        "cow_used_percent": used_percent(s),
    });
    if let (Some(Value::Object(u)), Value::Object(v)) = (usage, &mut value) {
        v.extend(u);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "origin: 0 2097152 snapshot-origin\n\
        nightly: 0 2097152 snapshot 40/524288 16\n\
        old: 0 2097152 snapshot-merge 2072/524288 24\n\
        bad: 0 2097152 snapshot Invalid\n\
        full: 0 2097152 snapshot 440/512 16\n\
        # old merging: 50.0% done, 128 of 256 chunks left\n\
        #: origin mode=rw device=/var/lib/vols/data.img\n\
        #: snapshot nightly store=P chunk=8 exceptions=3 used=40 total=524288 metadata=16 attached=live cow=/var/lib/vols/nightly.cow\n\
        #: snapshot old store=PO chunk=8 exceptions=128 used=2072 total=524288 metadata=24 attached=options merge=128/256 cow=/o.cow\n\
        #: snapshot full store=P chunk=8 exceptions=5 used=440 total=512 metadata=16 attached=live warning=85 features=discard_zeroes_cow+autoextend=70:20:10G cow=/f.cow\n\
        #: registry none\n\
        #: warning snapshot nightly is recorded nowhere\n";

    #[test]
    fn the_table_reads_like_lvs() {
        let report = Report::parse(TEXT).unwrap();
        let out = table(&report, "/srv/data-vol");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "origin /var/lib/vols/data.img on /srv/data-vol: 1.00 GiB, read-write; registry: none"
        );
        assert!(
            lines[1].starts_with("NAME     STORE  CHUNK  SIZE      COW USED"),
            "{out}"
        );
        let nightly: Vec<&str> = lines[2].split("  ").filter(|c| !c.is_empty()).collect();
        assert_eq!(
            nightly.iter().map(|c| c.trim()).collect::<Vec<_>>(),
            [
                "nightly",
                "P",
                "4 KiB",
                "1.00 GiB",
                "20.00 KiB",
                "256.00 MiB",
                "0.01%",
                "active",
                "-",
                "live",
                "/var/lib/vols/nightly.cow"
            ]
        );
        assert!(
            lines[3].contains("merging") && lines[3].contains("50.0% (128 left)"),
            "{out}"
        );
        assert!(
            lines[4].starts_with("bad ") && lines[4].contains("invalid"),
            "{out}"
        );
        assert!(
            lines[4].contains("100.00%"),
            "Invalid shows 100%, as lvs: {out}"
        );
        assert!(
            lines[5].starts_with("full ")
                && lines[5].contains("85.94% ")
                && lines[5].contains(" almost full "),
            "{out}"
        );
        assert_eq!(lines[6], "WARNING: snapshot nightly is recorded nowhere");
    }

    #[test]
    fn json_fields() {
        let report = Report::parse(TEXT).unwrap();
        let v = to_json(&report, "/srv/data-vol");
        assert_eq!(v["version"], 1);
        assert_eq!(v["origin"]["bytes"], 1u64 << 30);
        assert_eq!(v["registry"], Value::Null);
        let s = &v["snapshots"][0];
        assert_eq!(s["name"], "nightly");
        assert_eq!(s["cow_used_sectors"], 40);
        assert_eq!(s["status"], "40/524288 16");
        assert_eq!(v["snapshots"][1]["merge"]["chunks_left"], 128);
        assert_eq!(v["snapshots"][1]["merge"]["percent_done"], 50.0);
        assert_eq!(v["snapshots"][2]["state"], "invalid");
        assert_eq!(
            v["snapshots"][2]["cow_used_percent"], 100.0,
            "Invalid is full, as lvs"
        );
        assert_eq!(v["snapshots"][3]["state"], "almost full");
        assert_eq!(v["snapshots"][3]["warning_level"], 85);
        assert_eq!(v["snapshots"][0]["warning_level"], Value::Null);
        assert_eq!(v["snapshots"][0]["autoextend"], Value::Null);
        assert_eq!(v["snapshots"][3]["autoextend"], "70:20:10G");
        assert_eq!(
            v["snapshots"][3]["features"],
            serde_json::json!(["discard_zeroes_cow", "autoextend=70:20:10G"])
        );
        assert_eq!(v["snapshots"][1]["paused"], false);
        assert_eq!(v["snapshots"][1]["merge"]["paused"], false);
        let paused = Report::parse(&TEXT.replace("merge=128/256", "merge=128/256 paused")).unwrap();
        let v = to_json(&paused, "/srv/data-vol");
        assert_eq!(v["snapshots"][1]["paused"], true);
        assert_eq!(v["snapshots"][1]["merge"]["paused"], true);
        let out = table(&paused, "/srv/data-vol");
        assert!(out.contains("paused 50.0% (128 left)"), "{out}");
        assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    }
}
