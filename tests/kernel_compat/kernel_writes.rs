//! Scenarios 2, 3b and 4a: the kernel writes (snapshots, failure states); snapfs reads, and
//! merges what the kernel wrote.

use super::*;

pub(super) fn kernel_written_cows(r: &mut Report, dir: &Path, seed: u64) {
    let mut boot = Boot::new(dir, "kernel-writes");
    boot.pattern = boot_pattern(seed);
    let pattern = boot.pattern.clone();

    // Scenario 2: for every chunk size, a P and a PO snapshot; the kernel writes to the origin
    // and to both snapshots.
    let mut cases = Vec::new();
    for (i, &cs) in CHUNK_SIZES.iter().enumerate() {
        let cs1 = CHUNK_SIZES[(i + 2) % CHUNK_SIZES.len()];
        let case = Case::new(
            dir,
            seed,
            &format!("k{cs}"),
            ORIGIN_BYTES,
            vec![
                snap("s0", P, cs, roomy_cow(ORIGIN_BYTES, cs)),
                snap("s1", PO, cs1, roomy_cow(ORIGIN_BYTES, cs1)),
            ],
        );
        let names = ["s0", "s1"];
        let mut rng = Rng::for_stream(seed, &case.name);
        let writes = kernel_writes(&mut rng, ORIGIN_BYTES, &names, 300);
        let devs = case.attach_drives(&mut boot);
        case.k_snapshot(&mut boot, &devs, "s0", cs);
        case.k_snapshot(&mut boot, &devs, "s1", cs1);
        case.k_origin(&mut boot, &devs);
        boot.writes(&case, &writes);
        boot.line("sync");
        case.k_statuses(&mut boot, &names, "");
        case.k_dumps(&mut boot, &names, "");
        case.k_remove(&mut boot, &names);
        let initial = std::fs::read(&case.origin).unwrap();
        let fresh = names
            .iter()
            .chain(["origin"].iter())
            .map(|n| (n.to_string(), initial.clone()))
            .collect();
        let expected: BTreeMap<String, View> = model(fresh, &pattern, &writes)
            .into_iter()
            .map(|(n, d)| (n, View::of(&d, case.chunk_bytes())))
            .collect();
        cases.push((case, expected, writes));
    }

    // 4a: the kernel invalidates a P snapshot (origin writes beyond its COW); a healthy one
    // stays beside it.
    let inv = invalidation_case(dir, seed, "kinv");
    let inv_writes: Vec<KWrite> = (0..16)
        .map(|i| KWrite {
            target: "origin".to_string(),
            src: i * 64 * KIB,
            dst: i * 64 * KIB,
            len: 64 * KIB,
        })
        .collect();
    {
        let devs = inv.attach_drives(&mut boot);
        inv.k_snapshot(&mut boot, &devs, "s0", 8);
        inv.k_snapshot(&mut boot, &devs, "s1", 16);
        inv.k_origin(&mut boot, &devs);
        boot.writes(&inv, &inv_writes);
        boot.line("sync");
        inv.k_statuses(&mut boot, &["s0", "s1"], "");
        boot.readable(&inv.dm("s0"), &inv.label("s0"));
        inv.k_dumps(&mut boot, &["s1"], "");
        inv.k_remove(&mut boot, &["s0", "s1"]);
        // Reloaded: the invalid flag is on disk.
        inv.k_snapshot(&mut boot, &devs, "s0", 8);
        boot.status(&inv.dm("s0"), &inv.label("s0@reload"));
        boot.remove(&inv.dm("s0"));
    }

    // A PO snapshot overflowed by the kernel (snapshot writes beyond its COW): Overflow is not
    // on disk; reloaded, the kernel and snapfs print the same usage.
    let ovf = Case::new(
        dir,
        seed,
        "kovf",
        SMALL_ORIGIN_BYTES,
        vec![snap("s0", PO, 8, TINY_COW_BYTES)],
    );
    let mut rng = Rng::for_stream(seed, "kovf");
    let ovf_writes: Vec<KWrite> = (0..32)
        .map(|_| KWrite {
            target: "s0".to_string(),
            src: rng.below(PATTERN_BYTES / (4 * KIB)) * 4 * KIB,
            dst: rng.below(SMALL_ORIGIN_BYTES / (4 * KIB)) * 4 * KIB,
            len: 4 * KIB,
        })
        .collect();
    {
        let devs = ovf.attach_drives(&mut boot);
        ovf.k_snapshot(&mut boot, &devs, "s0", 8);
        ovf.k_origin(&mut boot, &devs);
        boot.writes(&ovf, &ovf_writes);
        boot.status(&ovf.dm("s0"), &ovf.label("s0@overflow"));
        ovf.k_remove(&mut boot, &["s0"]);
        ovf.k_snapshot(&mut boot, &devs, "s0", 8);
        ovf.k_origin(&mut boot, &devs);
        ovf.k_statuses(&mut boot, &["s0"], "");
        ovf.k_dumps(&mut boot, &["s0"], "");
        ovf.k_remove(&mut boot, &["s0"]);
    }

    let console = boot.run();
    r.note(&console.describe());

    // Then snapfs opens each kernel-written COW; afterwards it merges s0 (scenario 3b), and a
    // second boot checks the merged result in the kernel.
    let mut verify = Boot::new(dir, "kernel-writes-verify");
    let mut merged = Vec::new();
    for (case, expected, writes) in &cases {
        case.check_errors(r, &console, false);
        let names = ["s0", "s1"];
        for n in names.iter().chain(["origin"].iter()) {
            // The harness itself: the kernel must have done what the model says.
            case.check_view(r, &console, n, "", "model", expected.get(*n));
        }
        canary(r, case, &console, &expected["origin"], "s0", "");
        let state = match case.open(&names, true).and_then(|v| {
            let s = snapfs_state(&v, case.chunk_bytes())?;
            Ok(s)
        }) {
            Ok(s) => s,
            Err(e) => {
                r.fail(format!(
                    "{}: snapfs cannot open the kernel's COWs: {e}",
                    case.what("open")
                ));
                continue;
            }
        };
        check_multi_area(r, case, "s0", state.exceptions.get("s0").copied());
        check_against_kernel(r, case, &console, &state, &names, "");
        twin(r, case, writes, &pattern, &console, &names);
        if let Some(after) = snapfs_merge(r, case, &console) {
            let devs = case.attach_drives(&mut verify);
            case.k_snapshot(&mut verify, &devs, "s0", case.snaps[0].chunk_sectors);
            case.k_snapshot(&mut verify, &devs, "s1", case.snaps[1].chunk_sectors);
            case.k_origin(&mut verify, &devs);
            case.k_statuses(&mut verify, &names, "@merged");
            case.k_dumps(&mut verify, &names, "@merged");
            case.k_remove(&mut verify, &names);
            merged.push((case, after));
        }
    }

    inv.check_errors(r, &console, false);
    match inv
        .open(&["s0", "s1"], true)
        .and_then(|v| snapfs_state(&v, inv.chunk_bytes()))
    {
        Ok(state) => {
            check_against_kernel(r, &inv, &console, &state, &["s1"], "");
            inv.compare_kernel_status(r, &console, &state.status, ("s0", ""), false);
            inv.compare_kernel_status(r, &console, &state.status, ("s0", "@reload"), false);
            if status_word(state.status.get("s0").map_or("", |s| s)) != "Invalid" {
                r.fail(format!(
                    "{}: snapfs does not see the kernel's invalidation",
                    inv.what("s0")
                ));
            }
        }
        Err(e) => r.fail(format!("{}: snapfs cannot open: {e}", inv.what("open"))),
    }
    if console.one("READ", &inv.label("s0")).as_deref() != Some("fail") {
        r.fail(format!(
            "{}: the kernel could read its invalid snapshot",
            inv.what("s0")
        ));
    }
    // s1 byte for byte; s0 (invalidated) by its header.
    twin(r, &inv, &inv_writes, &pattern, &console, &["s1"]);

    ovf.check_errors(r, &console, true);
    if console
        .status(&ovf.label("s0@overflow"))
        .map(|s| status_word(&s))
        != Some("Overflow".into())
    {
        r.fail(format!(
            "{}: the kernel did not overflow: {:?}",
            ovf.what("s0"),
            console.status(&ovf.label("s0@overflow"))
        ));
    }
    match ovf
        .open(&["s0"], true)
        .and_then(|v| snapfs_state(&v, ovf.chunk_bytes()))
    {
        Ok(state) => check_against_kernel(r, &ovf, &console, &state, &["s0"], ""),
        Err(e) => r.fail(format!("{}: snapfs cannot open: {e}", ovf.what("open"))),
    }
    twin(r, &ovf, &ovf_writes, &pattern, &console, &["s0"]);

    // Case dsc: the discard features, snapfs's punches read by the kernel and the kernel's
    // discards read by snapfs (`discard.rs`). In this boot, which has drives to spare.
    let dsc = discard::plan(r, &mut verify, dir, seed);

    if merged.is_empty() && dsc.is_none() {
        return;
    }
    let console = verify.run();
    for (case, after) in &merged {
        case.check_errors(r, &console, false);
        check_against_kernel(r, case, &console, after, &["s0", "s1"], "@merged");
    }
    if let Some(dsc) = &dsc {
        discard::check(r, dsc, &console);
    }
}

/// The same workload through snapfs, on fresh copies of what the kernel started from: the
/// kernel writes sequentially (O_DIRECT, one write at a time), so its allocation order is
/// deterministic and the devices must come out byte for byte identical. Snapshots in `full`
/// are compared whole, the others by their header chunk only (an invalidated COW: which of the
/// exceptions in flight at the invalidation got committed is a race in the kernel). Writes that
/// failed (a full PO COW) must fail in both.
pub(super) fn twin(
    r: &mut Report,
    case: &Case,
    writes: &[KWrite],
    pattern: &[u8],
    console: &Console,
    full: &[&str],
) {
    let twin = case.twin();
    let names: Vec<&str> = case.snaps.iter().map(|s| s.name.as_str()).collect();
    let res = (|| -> Result<Vec<String>, String> {
        let vol = twin.open(&names, false)?;
        let mut failed = Vec::new();
        for w in writes {
            let data = &pattern[w.src as usize..(w.src + w.len) as usize];
            let res = if w.target == "origin" {
                vol.write_origin(w.dst, data)
            } else {
                let s = vol.snapshot(&w.target).unwrap();
                vol.write_snapshot(&s, w.dst, data)
            };
            if let Err(e) = res {
                failed.push(format!("{} {} {} ({e})", w.target, w.dst, w.len));
            }
        }
        vol.flush_all().map_err(|e| e.to_string())?;
        Ok(failed)
    })();
    let what = |x: &str| format!("twin {x}");
    let failed = match res {
        Ok(f) => f,
        Err(e) => return r.fail(format!("{}: snapfs failed: {e}", case.what(&what("run")))),
    };
    let kernel_failed = console.failed_writes(&case.name);
    let snapfs_failed: Vec<String> = failed
        .iter()
        .map(|f| f.split(" (").next().unwrap().to_string())
        .collect();
    if snapfs_failed != kernel_failed {
        r.fail(format!(
            "{}: failed writes differ: snapfs {failed:?}, kernel {kernel_failed:?}",
            case.what(&what("writes"))
        ));
    }
    let scope = |name: &str| {
        if full.contains(&name) {
            Scope::Whole
        } else {
            Scope::Header
        }
    };
    compare_devices(r, &what(""), case, &twin, scope);
}

/// Scenario 3b: snapfs merges the kernel-written s0 into the origin. The origin must then read
/// as the kernel's s0 did, s1 as the kernel's s1 did. Returns what snapfs serves afterwards,
/// reopened, for the verification boot.
pub(super) fn snapfs_merge(r: &mut Report, case: &Case, console: &Console) -> Option<State> {
    let res = (|| -> Result<State, String> {
        {
            let vol = Arc::new(case.open(&["s0", "s1"], false)?);
            vol.start_merge("s0").map_err(|e| e.to_string())?;
            vol.wait_merge();
            if let Some(s) = vol.snapshot("s0") {
                return Err(format!(
                    "s0 still attached after the merge: {}",
                    s.status_word()
                ));
            }
            vol.flush_all().map_err(|e| e.to_string())?;
        }
        let vol = case.open(&["s0", "s1"], true)?;
        snapfs_state(&vol, case.chunk_bytes())
    })();
    let state = match res {
        Ok(s) => s,
        Err(e) => {
            r.fail(format!(
                "{}: snapfs merge of a kernel COW: {e}",
                case.what("merge")
            ));
            return None;
        }
    };
    let pairs = [("origin", "s0"), ("s1", "s1"), ("s0", "s0")];
    for (now, kernel_before) in pairs {
        match (
            case.kernel_view(console, kernel_before),
            state.views.get(now),
        ) {
            (Some(k), Some(v)) => compare_views(
                r,
                &case.what(&format!("{now} after snapfs merged s0")),
                &format!("kernel {kernel_before} before"),
                &k,
                "snapfs",
                v,
            ),
            (k, v) => r.fail(format!(
                "{}: missing views (kernel {}, snapfs {})",
                case.what(now),
                k.is_some(),
                v.is_some()
            )),
        }
    }
    compare_status(
        r,
        &case.what("snapfs status of s0 after its merge"),
        Some(&case.empty_status("snapshot")),
        state.status.get("s0").cloned(),
        false,
    );
    Some(state)
}
