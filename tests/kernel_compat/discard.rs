//! Case `dsc`: the snapshot target's discard features (`discard_zeroes_cow`,
//! `discard_passdown_origin`; docs/discard.md), both ways, in the `kernel-writes-verify` boot.
//!
//! One origin of 8 MiB (random) with three `P` snapshots of 8 sectors (4 KiB chunks):
//!
//! | name | features | table line |
//! |---|---|---|
//! | s | discard_zeroes_cow | `snapshot <origin> <cow> P 8 1 discard_zeroes_cow` |
//! | t | both | `... P 8 2 discard_zeroes_cow discard_passdown_origin` |
//! | u | none | `... P 8` |
//!
//! 1. snapfs writes the origin's chunks 0-3 (copied out to all three), then punches
//!    (`discard_snapshot`, what a loop device's discard becomes) `s` over chunk 2 (it has an
//!    exception) and chunk 20 (it has none: snapfs gives it an exception of zeroes), and `t`
//!    over chunks 30-31 (passed down: the origin is zeroed there without copy-out).
//! 2. The kernel refuses a table with `discard_passdown_origin` alone (its message is checked),
//!    loads the three tables and prints them back (`dmsetup table`) as snapfs words them.
//! 3. The kernel reads: `s` zeroes at chunks 2 and 20, the origin, `t` and `u` zeroes at chunks
//!    30-31, everything else as the model; `dmsetup status` prints what snapfs printed.
//! 4. The guest discards (`blkdiscard`) one whole chunk: `s` chunk 0 (an exception: the kernel
//!    zeroes it in the COW) and chunk 40 (none: the kernel does nothing), `t` chunk 50 (passed
//!    down to the origin's drive, which punches a hole: `discard=unmap`).
//! 5. snapfs opens what the kernel left: it reads what the kernel read (views and status),
//!    `s` chunk 0 as zeroes, `s` chunk 40 as the origin's data, `t` with the same exceptions and
//!    its COW byte for byte as before, and the origin's chunk 50 as zeroes when the guest's
//!    origin drive takes discards (`discard_max_bytes` > 0; otherwise that check is skipped,
//!    and said so).

use super::*;

const ORIGIN: u64 = 8 * MIB;
/// Chunk size of every snapshot, in sectors.
const CS: u64 = 8;
const CHUNK: u64 = CS * SECTOR;
const NAMES: [&str; 3] = ["s", "t", "u"];
/// What the kernel says when it refuses a table with passdown alone.
const REFUSAL: &str = "discard_passdown_origin feature depends on discard_zeroes_cow";
/// The guest's discards, one whole chunk each: (snapshot, chunk).
const GUEST_DISCARDS: [(&str, u64); 3] = [("s", 0), ("s", 40), ("t", 50)];

pub struct Discard {
    case: Case,
    /// The origin as it was created.
    initial: Vec<u8>,
    /// Every view after snapfs's writes and punches (the model), by name.
    expected: BTreeMap<String, Vec<u8>>,
    /// What snapfs served after them.
    state: State,
    /// `t`'s COW as snapfs left it.
    t_cow: Vec<u8>,
}

fn features(zeroes: bool, passdown: bool) -> SnapshotFeatures {
    SnapshotFeatures {
        discard_zeroes_cow: zeroes,
        discard_passdown_origin: passdown,
        autoextend: None,
        backup: None,
    }
}

fn range(first: u64, n: u64) -> std::ops::Range<usize> {
    (first * CHUNK) as usize..((first + n) * CHUNK) as usize
}

fn zero_chunks(v: &mut [u8], first: u64, n: u64) {
    v[range(first, n)].fill(0);
}

/// The status line of a snapshot of the case holding `exceptions` (header and area 0 first).
fn expected_status(case: &Case, name: &str, exceptions: u64) -> String {
    let total = case.snaps[case.index(name)].cow_bytes / SECTOR;
    format!(
        "0 {} snapshot {}/{total} {}",
        case.sectors(),
        (2 + exceptions) * CS,
        2 * CS
    )
}

/// Fails unless `got` (a status line `who` printed) is `want`.
fn expect_status(r: &mut Report, what: &str, who: &str, got: Option<String>, want: &str) {
    if got.as_deref() != Some(want) {
        r.fail(format!("{what}: {who} printed {got:?}, expected {want:?}"));
    }
}

/// Exceptions of each snapshot after snapfs's punches (and after the kernel's discards, which
/// allocate nothing): s holds 0-3 and the zeroes of 20; t and u hold 0-3.
fn exceptions(name: &str) -> u64 {
    if name == "s" { 5 } else { 4 }
}

/// Fails unless what snapfs serves (`state`) is the model (`expected`, every view by name) and
/// every snapshot's status holds [`exceptions`] of it; `when` says after what.
fn check_snapfs(
    r: &mut Report,
    case: &Case,
    expected: &BTreeMap<String, Vec<u8>>,
    state: &State,
    when: &str,
) {
    for (n, v) in expected {
        compare_views(
            r,
            &case.what(&format!("snapfs's {n} after {when}")),
            "model",
            &View::of(v, CHUNK),
            "snapfs",
            &state.views[n],
        );
    }
    for n in NAMES {
        expect_status(
            r,
            &case.what(&format!("status of {n} after {when}")),
            "snapfs",
            state.status.get(n).cloned(),
            &expected_status(case, n, exceptions(n)),
        );
    }
}

/// The old chunks of the records in area 0 of a COW (chunk 1; a record is old, new as
/// little-endian u64; new = 0 ends the list).
fn area0_records(cow: &[u8]) -> Vec<u64> {
    cow[range(1, 1)]
        .chunks(16)
        .map(|e| {
            let w = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().unwrap());
            (w(0), w(8))
        })
        .take_while(|&(_, new)| new != 0)
        .map(|(old, _)| old)
        .collect()
}

/// snapfs's part (step 1), checked against the model, then the guest's script (steps 2-4)
/// added to `boot`.
pub fn plan(r: &mut Report, boot: &mut Boot, dir: &Path, seed: u64) -> Option<Discard> {
    let cow = roomy_cow(ORIGIN, CS);
    let case = Case::new(
        dir,
        seed,
        "dsc",
        ORIGIN,
        vec![
            snap("s", P, CS, cow).with_features(features(true, false)),
            snap("t", P, CS, cow).with_features(features(true, true)),
            snap("u", P, CS, cow),
        ],
    );
    let initial = std::fs::read(&case.origin).unwrap();
    let data = Rng::for_stream(seed, "dsc").bytes(4 * CHUNK);
    let res = (|| -> Result<State, String> {
        let vol = case.open(&NAMES, false)?;
        vol.write_origin(0, &data)
            .map_err(|e| format!("origin write: {e}"))?;
        let punch = |name: &str, first: u64, n: u64| {
            let snap = vol.snapshot(name).unwrap();
            vol.discard_snapshot(&snap, first * CHUNK, n * CHUNK)
                .map_err(|e| format!("punch of {name}, chunks {first}+{n}: {e}"))
        };
        punch("s", 2, 1)?;
        punch("s", 20, 1)?;
        punch("t", 30, 2)?;
        vol.flush_all().map_err(|e| e.to_string())?;
        snapfs_state(&vol, CHUNK)
    })();
    let state = match res {
        Ok(s) => s,
        Err(e) => {
            r.fail(format!("{}: snapfs failed: {e}", case.what("setup")));
            return None;
        }
    };

    // The model (docs/discard.md): s's punches zero its COW (20 gets an exception of zeroes);
    // t's reach the origin device, with no copy-out, so every view reads zeroes there.
    let mut origin = initial.clone();
    origin[..data.len()].copy_from_slice(&data);
    zero_chunks(&mut origin, 30, 2);
    let mut t = initial.clone();
    zero_chunks(&mut t, 30, 2);
    let mut s = t.clone();
    zero_chunks(&mut s, 2, 1);
    zero_chunks(&mut s, 20, 1);
    let expected: BTreeMap<String, Vec<u8>> = [("origin", origin), ("s", s), ("t", t.clone())]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .chain([("u".to_string(), t)])
        .collect();
    // snapfs itself first: a case that does not set up what it means to checks nothing.
    check_snapfs(r, &case, &expected, &state, "snapfs's punches");
    let s_cow = std::fs::read(&case.cows[case.index("s")]).unwrap();
    if !area0_records(&s_cow).contains(&20) {
        r.fail(format!(
            "{}: no record for chunk 20 in area 0 (records for {:?})",
            case.what("snapfs's COW of s"),
            area0_records(&s_cow)
        ));
    }
    let t_cow = std::fs::read(&case.cows[case.index("t")]).unwrap();

    // The guest.
    let devs = case.attach_drives(boot);
    boot.line(&format!(
        "devno {} {}",
        devs.origin,
        case.label("origin-drive")
    ));
    boot.line(&format!(
        "discard_limits {} {}",
        devs.origin,
        case.label("origin-drive")
    ));
    for (i, n) in NAMES.iter().enumerate() {
        boot.line(&format!(
            "devno {} {}",
            devs.cows[i],
            case.label(&format!("{n}-cow"))
        ));
    }
    // Passdown alone: refused. Tried before t is active (a second table naming an active COW
    // would be a handover); removed at once should the kernel take it.
    let pd = case.dm("pd");
    boot.create(
        &pd,
        &format!(
            "0 {} snapshot {} {} P {CS}{}",
            case.sectors(),
            devs.origin,
            devs.cows[case.index("t")],
            feature_args(&features(false, true))
        ),
    );
    boot.line(&format!("kernel_said '{REFUSAL}' {}", case.label("pd")));
    boot.line(&format!(
        "if dmsetup info {pd} >/dev/null 2>&1; then remove {pd}; fi"
    ));
    for n in NAMES {
        case.k_snapshot(boot, &devs, n, CS);
    }
    case.k_origin(boot, &devs);
    for n in NAMES {
        boot.line(&format!("table {} {}", case.dm(n), case.label(n)));
        boot.line(&format!(
            "discard_limits /dev/mapper/{} {}",
            case.dm(n),
            case.label(n)
        ));
    }
    case.k_statuses(boot, &NAMES, "");
    case.k_dumps(boot, &NAMES, "");
    for (n, c) in GUEST_DISCARDS {
        boot.line(&format!(
            "discard /dev/mapper/{} {} {CHUNK} {}",
            case.dm(n),
            c * CHUNK,
            case.label(&format!("{n}:{c}"))
        ));
    }
    case.k_statuses(boot, &NAMES, "@disc");
    case.k_dumps(boot, &NAMES, "@disc");
    case.k_remove(boot, &NAMES);
    Some(Discard {
        case,
        initial,
        expected,
        state,
        t_cow,
    })
}

/// `discard_max_bytes` and `discard_granularity` the guest printed for `label`.
fn limits(case: &Case, console: &Console, label: &str) -> Option<(u64, u64)> {
    let line = console.one("LIMITS", &case.label(label))?;
    let mut w = line.split_whitespace().map(|x| x.parse::<u64>().ok());
    Some((w.next()??, w.next()??))
}

/// After the boot: what the kernel did with snapfs's punches and its own discards, and what
/// snapfs reads of the result.
pub fn check(r: &mut Report, d: &Discard, console: &Console) {
    let case = &d.case;
    let pd = case.dm("pd");
    for e in console.errors(&case.name) {
        if !e.starts_with(&format!("CREATEFAIL {pd} ")) {
            r.fail(format!("{}: guest: {e}", case.what("harness")));
        }
    }

    // 2. Tables: passdown alone refused, the others printed back as snapfs words them.
    if console.one("CREATEFAIL", &pd).is_none() {
        r.fail(format!(
            "{}: the kernel accepted a table with discard_passdown_origin alone",
            case.what("table pd")
        ));
    }
    match console.one("KMSG", &case.label("pd")) {
        Some(m) if m.contains(REFUSAL) => {}
        other => r.fail(format!(
            "{}: the kernel did not say \"{REFUSAL}\" (its last such message: {other:?})",
            case.what("table pd")
        )),
    }
    let devno = |label: &str| {
        console
            .one("DEVNO", &case.label(label))
            .unwrap_or_else(|| "?".to_string())
    };
    for n in NAMES {
        let spec = &case.snaps[case.index(n)];
        let want = format!(
            "0 {} snapshot {} {} {} {CS}{}",
            case.sectors(),
            devno("origin-drive"),
            devno(&format!("{n}-cow")),
            spec.kind,
            feature_args(&spec.features)
        );
        let got = console.one("TABLE", &case.label(n));
        if got.as_deref() != Some(want.as_str()) {
            r.fail(format!(
                "{}: dmsetup table printed {got:?}, expected {want:?}",
                case.what(&format!("table of {n}"))
            ));
        }
    }

    // 3. What the kernel reads of snapfs's punches: the model, and what snapfs read.
    for (n, v) in &d.expected {
        case.check_view(r, console, n, "", "model", Some(&View::of(v, CHUNK)));
    }
    check_against_kernel(r, case, console, &d.state, &NAMES, "");
    for n in NAMES {
        expect_status(
            r,
            &case.what(&format!("status of {n}")),
            "the kernel",
            console.status(&case.label(n)),
            &expected_status(case, n, exceptions(n)),
        );
    }

    // 4. The guest's discards and the model after them.
    let origin_limits = limits(case, console, "origin-drive");
    r.note(&format!(
        "{}: origin drive {:?}, s {:?}, t {:?}, u {:?}",
        case.what("discard limits (discard_max_bytes, discard_granularity)"),
        origin_limits,
        limits(case, console, "s"),
        limits(case, console, "t"),
        limits(case, console, "u")
    ));
    let origin_discards = matches!(origin_limits, Some((max, _)) if max > 0);
    let mut after = d.expected.clone();
    for (n, c) in GUEST_DISCARDS {
        let label = case.label(&format!("{n}:{c}"));
        let res = console.one("DISCARD", &label);
        if res.as_deref() != Some("ok") {
            if origin_discards {
                r.fail(format!(
                    "{}: blkdiscard failed: {res:?}",
                    case.what(&format!("discard of {n} chunk {c}"))
                ));
            } else {
                r.note(&format!(
                    "{}: SKIPPED: the guest's origin drive takes no discards, so neither does \
                     the snapshot ({res:?})",
                    case.what(&format!("discard of {n} chunk {c}"))
                ));
            }
            continue;
        }
        match (n, c) {
            // An exception, wholly discarded: zeroed in the COW.
            ("s", 0) => zero_chunks(after.get_mut("s").unwrap(), 0, 1),
            // No exception: the kernel completes the discard and does nothing.
            ("s", _) => {}
            // Passed down to the origin's drive (a hole there): every view reads the origin at
            // chunk 50 (no snapshot has an exception there).
            _ => {
                for v in after.values_mut() {
                    zero_chunks(v, c, 1);
                }
            }
        }
    }
    for (n, v) in &after {
        case.check_view(r, console, n, "@disc", "model", Some(&View::of(v, CHUNK)));
    }

    // 5. snapfs opens what the kernel left.
    let res = (|| -> Result<(), String> {
        let vol = case.open(&NAMES, true)?;
        let state = snapfs_state(&vol, CHUNK)?;
        check_against_kernel(r, case, console, &state, &NAMES, "@disc");
        // The kernel's discards allocate nothing.
        check_snapfs(r, case, &after, &state, "the kernel's discards");
        let read = |name: Option<&str>, c: u64| -> Result<Vec<u8>, String> {
            let mut buf = vec![0u8; CHUNK as usize];
            match name {
                Some(n) => vol.read_snapshot(&vol.snapshot(n).unwrap(), c * CHUNK, &mut buf),
                None => vol.read_origin(c * CHUNK, &mut buf),
            }
            .map_err(|e| format!("read of chunk {c}: {e}"))?;
            Ok(buf)
        };
        let zeroes = |b: &[u8]| b.iter().all(|&x| x == 0);
        if console.one("DISCARD", &case.label("s:0")).as_deref() == Some("ok")
            && !zeroes(&read(Some("s"), 0)?)
        {
            r.fail(format!(
                "{}: snapfs does not read zeroes after the kernel's discard",
                case.what("s chunk 0")
            ));
        }
        if read(Some("s"), 40)? != d.initial[range(40, 1)] {
            r.fail(format!(
                "{}: snapfs does not read the origin's data (the kernel's discard of a chunk \
                 without an exception does nothing)",
                case.what("s chunk 40")
            ));
        }
        if origin_discards {
            if !zeroes(&read(None, 50)?) {
                r.fail(format!(
                    "{}: snapfs does not read zeroes after t's discard was passed down (the \
                     drive takes discards: does the work directory's filesystem punch holes?)",
                    case.what("origin chunk 50")
                ));
            }
        } else {
            r.note(&format!(
                "{}: SKIPPED the check for zeroes: the guest's origin drive takes no discards \
                 (discard_max_bytes {origin_limits:?})",
                case.what("origin chunk 50")
            ));
        }
        let (now, before) = (state.exceptions["t"], d.state.exceptions["t"]);
        if now != before {
            r.fail(format!(
                "{}: {now} exceptions after the kernel's discard, {before} before it",
                case.what("t")
            ));
        }
        Ok(())
    })();
    if let Err(e) = res {
        r.fail(format!(
            "{}: snapfs cannot open what the kernel left: {e}",
            case.what("open@disc")
        ));
    }
    // t's COW: the kernel's discard of a chunk without an exception leaves it as it was.
    let now = std::fs::read(&case.cows[case.index("t")]).unwrap();
    let stride = records_per_area(CS) + 1;
    let differ: Vec<String> = (0..d.t_cow.len().max(now.len()) as u64 / CHUNK)
        .filter(|&c| d.t_cow.get(range(c, 1)) != now.get(range(c, 1)))
        .map(|c| match c {
            0 => "0 (header)".to_string(),
            c if c % stride == 1 => format!("{c} (area {})", c / stride),
            c => format!("{c} (data)"),
        })
        .collect();
    if !differ.is_empty() {
        r.fail(format!(
            "{}: {} chunks changed in the kernel: {}",
            case.what("t's COW"),
            differ.len(),
            differ
                .iter()
                .take(6)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
}
