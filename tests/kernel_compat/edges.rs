//! Case `edge`: COWs that end at a metadata-area boundary (issue 13, item 11), run by the
//! kernel and by snapfs from the same start, one write at a time.
//!
//! The kernel only checks that a chunk fits when it allocates it. On a COW that ends right
//! after the last data chunk of an area, that chunk is allocated; its commit fills the area,
//! zeroing the next area (past the end) fails, and the store is invalid: `Invalid`, `valid = 0`,
//! with `P`, with `PO`, and for origin writes. A COW one chunk longer has room for the next area:
//! all its data chunks are used, then `PO` overflows. Snapshots (one origin of 4 MiB):
//!
//! | name | store | COW | written by |
//! |---|---|---|---|
//! | s0 | PO, 1 sector | 34 sectors: header, area 0, 32 data chunks | 32 snapshot writes |
//! | s1 | P, 1 sector | 34 sectors | 32 snapshot writes |
//! | s2 | PO, 1 sector | 34 sectors | 32 origin writes (copies) |
//! | s3 | P, 8 sectors | roomy | the same origin writes: a healthy bystander |
//! | s4 | PO, 2 sectors | 133 sectors: area 1 (sectors 132..134) is cut by the end | 64 snapshot writes |
//! | s5 | PO, 1 sector | 35 sectors: area 1 fits | 33 snapshot writes (the 33rd overflows) |
//!
//! The origin writes go to the 32 sectors s5 holds, so s5 takes no copy and stays `Overflow`.
//! Compared: every status line at every checkpoint (after the last write that succeeds and after
//! the one that fails, and at the end), the writes that failed, every device byte for byte
//! (header, areas, data), what the kernel reads from s3, s5 and the origin, which snapshots it
//! can no longer read, and every status after the kernel and snapfs reload the COWs.

use super::*;

/// One step of the sequence: a write, or the status lines of some snapshots at a checkpoint
/// (labelled `<case>/<name>@<at>`).
pub enum Step {
    Write(KWrite),
    Status {
        names: Vec<&'static str>,
        at: String,
    },
}

pub struct Edge {
    pub case: Case,
    pub steps: Vec<Step>,
}

const NAMES: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];
/// The snapshots the sequence invalidates.
const INVALIDATED: [&str; 4] = ["s0", "s1", "s2", "s4"];
/// The snapshots that stay readable: compared view by view.
const READABLE: [&str; 2] = ["s3", "s5"];

/// `n` distinct chunks of `chunk_bytes` of the origin, not in `taken`.
fn distinct(rng: &mut Rng, n: usize, chunk_bytes: u64, taken: &mut Vec<u64>) -> Vec<u64> {
    let mut out = Vec::new();
    while out.len() < n {
        let c = rng.below(SMALL_ORIGIN_BYTES / chunk_bytes);
        // Distinct by the sectors they cover, across all the sequences.
        let sectors: Vec<u64> =
            (c * chunk_bytes / SECTOR..(c + 1) * chunk_bytes / SECTOR).collect();
        if sectors.iter().any(|s| taken.contains(s)) {
            continue;
        }
        taken.extend(sectors);
        out.push(c);
    }
    out
}

/// Builds the case and its sequence and adds them to `boot`: the kernel runs the sequence,
/// prints every checkpoint, dumps the readable views and reloads every COW.
pub fn plan(boot: &mut Boot, dir: &Path, seed: u64) -> Edge {
    if boot.pattern.is_empty() {
        boot.pattern = boot_pattern(seed);
    }
    let case = Case::new(
        dir,
        seed,
        "edge",
        SMALL_ORIGIN_BYTES,
        vec![
            snap("s0", PO, 1, 34 * SECTOR),
            snap("s1", P, 1, 34 * SECTOR),
            snap("s2", PO, 1, 34 * SECTOR),
            snap("s3", P, 8, roomy_cow(SMALL_ORIGIN_BYTES, 8)),
            snap("s4", PO, 2, 133 * SECTOR),
            snap("s5", PO, 1, 35 * SECTOR),
        ],
    );
    let mut rng = Rng::for_stream(seed, "edge");
    let mut taken = Vec::new();
    let mut steps = Vec::new();
    let write = |steps: &mut Vec<Step>, rng: &mut Rng, target: &str, dst: u64, len: u64| {
        steps.push(Step::Write(KWrite {
            target: target.to_string(),
            src: rng.below((PATTERN_BYTES - len) / SECTOR + 1) * SECTOR,
            dst,
            len,
        }))
    };
    let status = |steps: &mut Vec<Step>, names: &[&'static str], at: &str| {
        steps.push(Step::Status {
            names: names.to_vec(),
            at: at.to_string(),
        })
    };
    // Whole-chunk snapshot writes: the last one that fits, then the one that does not.
    for (name, cs, n) in [("s0", 1, 32), ("s1", 1, 32), ("s4", 2, 64), ("s5", 1, 33)] {
        let b = cs * SECTOR;
        let chunks = distinct(&mut rng, n, b, &mut taken);
        for (i, &c) in chunks.iter().enumerate() {
            write(&mut steps, &mut rng, name, c * b, b);
            if i + 2 >= n {
                status(&mut steps, &[name], &(i + 1).to_string());
            }
        }
        if name == "s5" {
            // The origin writes go where s5 has its exceptions (the 32 writes that fit).
            let mut order = chunks[..32].to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
            for (i, &c) in order.iter().enumerate() {
                write(&mut steps, &mut rng, "origin", c * SECTOR, SECTOR);
                if i >= 30 {
                    status(&mut steps, &["s2", "s5"], &format!("o{}", i + 1));
                }
            }
        }
    }
    let mut all = NAMES.to_vec();
    all.push("origin");
    status(&mut steps, &all, "end");

    let devs = case.attach_drives(boot);
    for n in NAMES {
        let cs = case.snaps[case.index(n)].chunk_sectors;
        case.k_snapshot(boot, &devs, n, cs);
    }
    case.k_origin(boot, &devs);
    let mut pending: Vec<KWrite> = Vec::new();
    for step in &steps {
        match step {
            Step::Write(w) => pending.push(w.clone()),
            Step::Status { names, at } => {
                if !pending.is_empty() {
                    boot.writes(&case, &std::mem::take(&mut pending));
                }
                for n in names {
                    boot.status(&case.dm(n), &case.label(&format!("{n}@{at}")));
                }
            }
        }
    }
    for n in INVALIDATED {
        boot.readable(&case.dm(n), &case.label(n));
    }
    for n in READABLE.iter().chain(["origin"].iter()) {
        boot.dump_dm(
            &case.dm(n),
            &case.label(&format!("{n}@end")),
            case.origin_bytes,
        );
    }
    case.k_remove(boot, &NAMES);
    // Reloaded: Invalid is on disk (valid = 0), Overflow is not.
    for n in NAMES {
        let cs = case.snaps[case.index(n)].chunk_sectors;
        case.k_snapshot(boot, &devs, n, cs);
    }
    for n in NAMES {
        boot.status(&case.dm(n), &case.label(&format!("{n}@reload")));
    }
    for n in NAMES {
        boot.remove(&case.dm(n));
    }
    Edge { case, steps }
}

/// What snapfs did with the same sequence on fresh copies of the devices.
struct Twin {
    case: Case,
    /// `<name>@<at>` -> status line.
    status: BTreeMap<String, String>,
    /// `<target> <dst> <len>` of every write that failed.
    failed: Vec<String>,
    /// Views of the readable snapshots and the origin at the end.
    views: BTreeMap<String, View>,
    /// Snapshots whose reads failed at the end.
    unreadable: Vec<String>,
    /// Status lines after reopening.
    reloaded: BTreeMap<String, String>,
}

fn run_twin(edge: &Edge, pattern: &[u8]) -> Result<Twin, String> {
    let case = edge.case.twin();
    let mut status = BTreeMap::new();
    let mut failed = Vec::new();
    let (views, unreadable) = {
        let vol = case.open(&NAMES, false)?;
        for step in &edge.steps {
            match step {
                Step::Write(w) => {
                    let data = &pattern[w.src as usize..(w.src + w.len) as usize];
                    let res = match w.target.as_str() {
                        "origin" => vol.write_origin(w.dst, data),
                        n => vol.write_snapshot(&vol.snapshot(n).unwrap(), w.dst, data),
                    };
                    if res.is_err() {
                        failed.push(format!("{} {} {}", w.target, w.dst, w.len));
                    }
                }
                Step::Status { names, at } => {
                    let lines = parse_status(&dm_lines(&vol));
                    for n in names {
                        let line = lines.get(*n).cloned().unwrap_or_default();
                        status.insert(format!("{n}@{at}"), line);
                    }
                }
            }
        }
        let mut unreadable = Vec::new();
        for n in NAMES {
            let mut buf = [0u8; 512];
            if vol
                .read_snapshot(&vol.snapshot(n).unwrap(), 0, &mut buf)
                .is_err()
            {
                unreadable.push(n.to_string());
            }
        }
        let state = snapfs_state(&vol, case.chunk_bytes())?;
        vol.flush_all().map_err(|e| e.to_string())?;
        (state.views, unreadable)
    };
    let reloaded = parse_status(&dm_lines(&case.open(&NAMES, true)?));
    Ok(Twin {
        case,
        status,
        failed,
        views,
        unreadable,
        reloaded,
    })
}

/// After the boot: snapfs runs the same sequence and must agree with the kernel on everything.
pub fn check(r: &mut Report, edge: &Edge, console: &Console, pattern: &[u8]) {
    let case = &edge.case;
    case.check_errors(r, console, true);
    // The kernel's own behaviour, as issue 13 describes it: if this changes, say so first.
    let expected = [
        ("s0@31", "33/34 2"),
        ("s0@32", "Invalid"),
        ("s1@32", "Invalid"),
        ("s4@63", "130/133 4"),
        ("s4@64", "Invalid"),
        ("s5@32", "35/35 3"),
        ("s5@33", "Overflow"),
        ("s2@o31", "33/34 2"),
        ("s2@o32", "Invalid"),
        ("s5@o32", "Overflow"),
    ];
    for (label, word) in expected {
        let got = console.status(&case.label(label));
        if got.as_deref().map(status_word).as_deref() != Some(word) {
            r.fail(format!(
                "{}: the kernel printed {got:?}, the case expects {word:?}",
                case.what(label)
            ));
        }
    }
    let twin = match run_twin(edge, pattern) {
        Ok(t) => t,
        Err(e) => return r.fail(format!("{}: snapfs failed: {e}", case.what("twin"))),
    };
    for (label, line) in &twin.status {
        compare_status(
            r,
            &case.what(&format!("status of {label}")),
            Some(line),
            console.status(&case.label(label)),
            false,
        );
    }
    let kernel_failed = console.failed_writes(&case.name);
    if twin.failed != kernel_failed || twin.failed.len() != 4 {
        r.fail(format!(
            "{}: failed writes: snapfs {:?}, kernel {kernel_failed:?} (4 expected)",
            case.what("writes"),
            twin.failed
        ));
    }
    for n in INVALIDATED {
        if console.one("READ", &case.label(n)).as_deref() != Some("fail") {
            r.fail(format!("{}: the kernel could read it", case.what(n)));
        }
        if !twin.unreadable.iter().any(|u| u == n) {
            r.fail(format!("{}: snapfs could read it", case.what(n)));
        }
    }
    for n in READABLE.iter().chain(["origin"].iter()) {
        case.check_view(r, console, n, "@end", "snapfs", twin.views.get(*n));
    }
    compare_devices(r, "twin ", case, &twin.case, |_| Scope::Whole);
    for n in NAMES {
        case.compare_kernel_status(r, console, &twin.reloaded, (n, "@reload"), false);
    }
}
