//! Scenarios 1, 3a, 4b and 5: snapfs writes (through the library and through a FUSE mount),
//! including the failure states and merges; the kernel reads, and merges too.

use super::*;

/// Scenario 1: origins and several COWs written through the library, for every chunk size; the
/// kernel activates them and must read the same bytes and print the same status.
pub(super) fn snapfs_written_cows(r: &mut Report, dir: &Path, seed: u64) {
    let mut boot = Boot::new(dir, "snapfs-writes");
    boot.pattern = boot_pattern(seed);
    let mut cases = Vec::new();
    for (i, &cs) in CHUNK_SIZES.iter().enumerate() {
        let mut rng = Rng::for_stream(seed, &format!("w{cs}"));
        let cs1 = CHUNK_SIZES[(i + 1) % CHUNK_SIZES.len()];
        let cs2 = rng.pick(&CHUNK_SIZES);
        let snaps = vec![
            snap("s0", P, cs, roomy_cow(ORIGIN_BYTES, cs)),
            snap("s1", PO, cs1, roomy_cow(ORIGIN_BYTES, cs1)),
            snap("s2", P, cs2, roomy_cow(ORIGIN_BYTES, cs2)),
        ];
        let case = Case::new(dir, seed, &format!("w{cs}"), ORIGIN_BYTES, snaps);
        // s0 from the start; s1 and s2 taken later, so the three differ.
        let state = (|| -> Result<State, String> {
            let vol = case.open(&["s0"], false)?;
            let mut attached = vec![vol.snapshot("s0").unwrap()];
            snapfs_writes(&vol, &mut rng, 100, &attached)?;
            for name in ["s1", "s2"] {
                let s = vol
                    .attach_snapshot(case.config(name, OpenMode::ReadWrite)?)
                    .map_err(|e| e.to_string())?;
                attached.push(s);
                snapfs_writes(&vol, &mut rng, 100, &attached)?;
            }
            drop(attached);
            snapfs_state(&vol, case.chunk_bytes())
        })();
        let state = match state {
            Ok(s) => s,
            Err(e) => {
                r.fail(format!("{}: snapfs failed: {e}", case.what("writing")));
                continue;
            }
        };
        check_multi_area(r, &case, "s0", state.exceptions.get("s0").copied());
        check_reopen(r, &case, &state, &["s0", "s1", "s2"]);

        let devs = case.attach_drives(&mut boot);
        case.k_snapshot(&mut boot, &devs, "s0", cs);
        case.k_snapshot(&mut boot, &devs, "s1", cs1);
        // Chunk size 0 on the table: the kernel takes the header's.
        case.k_snapshot(&mut boot, &devs, "s2", 0);
        case.k_origin(&mut boot, &devs);
        let names = ["s0", "s1", "s2"];
        case.k_statuses(&mut boot, &names, "");
        case.k_dumps(&mut boot, &names, "");
        // Then the kernel goes on writing to the snapfs COWs (appending to snapfs's lists),
        // and snapfs must read the result.
        let writes = kernel_writes(&mut rng, ORIGIN_BYTES, &names, 150);
        boot.writes(&case, &writes);
        boot.line("sync");
        case.k_statuses(&mut boot, &names, "@kw");
        case.k_dumps(&mut boot, &names, "@kw");
        case.k_remove(&mut boot, &names);
        cases.push((case, state, writes));
    }
    let console = boot.run();
    r.note(&console.describe());
    let names = ["s0", "s1", "s2"];
    for (case, state, writes) in &cases {
        case.check_errors(r, &console, false);
        check_against_kernel(r, case, &console, state, &names, "");
        canary(r, case, &console, &state.views["origin"], "s0", "");
        // The kernel's writes on top of what it read first (the model), then snapfs.
        let base: Option<BTreeMap<String, Vec<u8>>> = names
            .iter()
            .chain(["origin"].iter())
            .map(|n| {
                let d = console.dump(&case.label(n)).ok()?;
                Some((n.to_string(), d))
            })
            .collect();
        let Some(base) = base else {
            continue;
        };
        let expected = model(base, &boot_pattern(seed), writes);
        for n in names.iter().chain(["origin"].iter()) {
            let v = View::of(&expected[*n], case.chunk_bytes());
            case.check_view(r, &console, n, "@kw", "model", Some(&v));
        }
        snapfs_reads_kernel(r, case, &console, &names, "@kw");
    }
}

/// Scenario 1 through the FUSE binary: `snapfs mount -f` with s0, writes through the origin and
/// snapshot files (byte-granular, unaligned), s1 and s2 taken live through `control`. Returns
/// what the files and `status` served, for the kernel to compare with.
pub(super) fn fuse_writes(r: &mut Report, dir: &Path, seed: u64) -> Option<(Case, State)> {
    let mut rng = Rng::for_stream(seed, "fuse");
    let cs: Vec<u64> = (0..3).map(|_| rng.pick(&CHUNK_SIZES)).collect();
    let case = Case::new(
        dir,
        seed,
        "fuse",
        ORIGIN_BYTES,
        vec![
            snap("s0", P, cs[0], roomy_cow(ORIGIN_BYTES, cs[0])),
            snap("s1", PO, cs[1], roomy_cow(ORIGIN_BYTES, cs[1])),
            snap("s2", P, cs[2], roomy_cow(ORIGIN_BYTES, cs[2])),
        ],
    );
    let res = (|| -> Result<State, String> {
        let cow = |i: usize| case.cows[i].display().to_string();
        let m = Mount::start(
            &case.origin,
            &dir.join("fuse-mnt"),
            &format!("snapshot=s0:{}:P:{}", cow(0), cs[0]),
        )?;
        let mut files: Vec<File> = Vec::new();
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.file(name))
                .map_err(|e| format!("{name}: {e}"))
        };
        files.push(open("origin")?);
        files.push(open("s0")?);
        for phase in 0..3 {
            if phase > 0 {
                let (i, kind) = (phase, if phase == 1 { "PO" } else { "P" });
                m.control(&format!("snapshot s{i} {} {kind} {}", cow(i), cs[i]))?;
                files.push(open(&format!("s{i}"))?);
            }
            for _ in 0..100 {
                let len = rng.write_len();
                let off = rng.below(ORIGIN_BYTES - len + 1);
                let data = rng.bytes(len);
                let f = if rng.below(10) < 7 {
                    0
                } else {
                    1 + rng.below(files.len() as u64 - 1) as usize
                };
                files[f]
                    .write_all_at(&data, off)
                    .map_err(|e| format!("write {off}+{len} to file {f}: {e}"))?;
            }
        }
        for f in &files {
            f.sync_all().map_err(|e| format!("fsync: {e}"))?;
        }
        let status = std::fs::read_to_string(m.file("status")).map_err(|e| e.to_string())?;
        let mut views = BTreeMap::new();
        for name in ["origin", "s0", "s1", "s2"] {
            let data = std::fs::read(m.file(name)).map_err(|e| format!("{name}: {e}"))?;
            views.insert(name.to_string(), View::of(&data, case.chunk_bytes()));
        }
        drop(files);
        m.stop()?;
        Ok(State {
            status: parse_status(&status),
            views,
            exceptions: BTreeMap::new(),
        })
    })();
    match res {
        Ok(state) => {
            check_reopen(r, &case, &state, &["s0", "s1", "s2"]);
            Some((case, state))
        }
        Err(e) => {
            r.fail(format!("{}: snapfs mount failed: {e}", case.what("fuse")));
            None
        }
    }
}

/// Scenarios 4b (a COW snapfs invalidated), an overflowed PO COW, 3a (the kernel merges a
/// snapfs COW), 5 (the kernel activates and finishes a merge snapfs started) and 4c (COWs that
/// end at a metadata-area boundary, written by both: `edges.rs`).
pub(super) fn snapfs_failure_and_merge_states(r: &mut Report, dir: &Path, seed: u64) {
    let mut boot = Boot::new(dir, "snapfs-states");

    // 4b: origin writes beyond a tiny COW invalidate s0; s1 stays healthy.
    let inv = invalidation_case(dir, seed, "inv");
    let inv_state = (|| -> Result<State, String> {
        let vol = inv.open(&["s0", "s1"], false)?;
        let mut rng = Rng::for_stream(seed, "inv");
        for i in 0..16 {
            vol.write_origin(i * 64 * KIB, &rng.bytes(64 * KIB))
                .map_err(|e| e.to_string())?;
        }
        vol.flush_all().map_err(|e| e.to_string())?;
        if !vol.snapshot("s0").unwrap().is_invalid() {
            return Err("s0 did not become invalid".to_string());
        }
        snapfs_state(&vol, inv.chunk_bytes())
    })();
    let inv_state = inv_state
        .map_err(|e| r.fail(format!("{}: snapfs failed: {e}", inv.what("setup"))))
        .ok();
    if inv_state.is_some() {
        let devs = inv.attach_drives(&mut boot);
        inv.k_snapshot(&mut boot, &devs, "s0", 8);
        inv.k_snapshot(&mut boot, &devs, "s1", 16);
        inv.k_origin(&mut boot, &devs);
        inv.k_statuses(&mut boot, &["s0", "s1"], "");
        boot.readable(&inv.dm("s0"), &inv.label("s0"));
        inv.k_dumps(&mut boot, &["s1"], "");
        inv.k_remove(&mut boot, &["s0", "s1"]);
    }

    // A PO snapshot overflowed by snapshot writes: the state is not persistent; the kernel
    // loads the COW as snapfs reopens it.
    let ovf = Case::new(
        dir,
        seed,
        "ovf",
        SMALL_ORIGIN_BYTES,
        vec![snap("s0", PO, 8, TINY_COW_BYTES)],
    );
    let ovf_state = (|| -> Result<State, String> {
        {
            let vol = ovf.open(&["s0"], false)?;
            let s0 = vol.snapshot("s0").unwrap();
            let mut rng = Rng::for_stream(seed, "ovf");
            let mut overflowed = false;
            for i in 0..32 {
                let off = rng.below(SMALL_ORIGIN_BYTES / (4 * KIB)) * 4 * KIB + i % 2;
                match vol.write_snapshot(&s0, off, &rng.bytes(4 * KIB)) {
                    Ok(()) => {}
                    Err(VolumeError::Overflow) => {
                        overflowed = true;
                        break;
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
            if !overflowed || status_word(&parse_status(&dm_lines(&vol))["s0"]) != "Overflow" {
                return Err("s0 did not overflow".to_string());
            }
            vol.flush_all().map_err(|e| e.to_string())?;
        }
        let vol = ovf.open(&["s0"], true)?;
        snapfs_state(&vol, ovf.chunk_bytes())
    })();
    let ovf_state = ovf_state
        .map_err(|e| r.fail(format!("{}: snapfs failed: {e}", ovf.what("setup"))))
        .ok();
    if ovf_state.is_some() {
        let devs = ovf.attach_drives(&mut boot);
        ovf.k_snapshot(&mut boot, &devs, "s0", 8);
        ovf.k_origin(&mut boot, &devs);
        ovf.k_statuses(&mut boot, &["s0"], "");
        ovf.k_dumps(&mut boot, &["s0"], "");
        ovf.k_remove(&mut boot, &["s0"]);
    }

    // Scenario 1 through a real mount.
    let fuse = fuse_writes(r, dir, seed);
    if let Some((case, _)) = &fuse {
        let names = ["s0", "s1", "s2"];
        let devs = case.attach_drives(&mut boot);
        for n in names {
            let cs = case.snaps[case.index(n)].chunk_sectors;
            case.k_snapshot(&mut boot, &devs, n, cs);
        }
        case.k_origin(&mut boot, &devs);
        case.k_statuses(&mut boot, &names, "");
        case.k_dumps(&mut boot, &names, "");
        case.k_remove(&mut boot, &names);
    }

    // 3a and 5: the kernel merges a snapfs COW; in "mip" snapfs started the merge and was
    // stopped part-way, so the kernel first activates it as a plain snapshot.
    let mut merges = Vec::new();
    for (name, partial) in [("kmg", false), ("mip", true)] {
        let mut rng = Rng::for_stream(seed, name);
        let cs0 = rng.pick(&[8, 16, 128]);
        let cs1 = rng.pick(&CHUNK_SIZES);
        let case = Case::new(
            dir,
            seed,
            name,
            ORIGIN_BYTES,
            vec![
                snap("s0", P, cs0, roomy_cow(ORIGIN_BYTES, cs0)),
                snap("s1", P, cs1, roomy_cow(ORIGIN_BYTES, cs1)),
            ],
        );
        let res = (|| -> Result<(State, State), String> {
            let vol = Arc::new(case.open(&["s0", "s1"], false)?);
            let snaps = vec![vol.snapshot("s0").unwrap(), vol.snapshot("s1").unwrap()];
            snapfs_writes(&vol, &mut rng, 120, &snaps)?;
            drop(snaps);
            let before = snapfs_state(&vol, case.chunk_bytes())?;
            if !partial {
                return Ok((before, snapfs_state(&vol, case.chunk_bytes())?));
            }
            vol.start_merge("s0").map_err(|e| e.to_string())?;
            std::thread::sleep(Duration::from_millis(20));
            vol.stop_merge();
            let progress = vol.snapshot("s0").and_then(|s| s.merge_progress());
            r.note(&format!(
                "{}: snapfs merge stopped with (left, total) = {progress:?}",
                case.what("s0")
            ));
            if !matches!(progress, Some((left, _)) if left > 0) {
                return Err(format!("the merge was not left part-way: {progress:?}"));
            }
            let during = snapfs_state(&vol, case.chunk_bytes())?;
            vol.flush_all().map_err(|e| e.to_string())?;
            Ok((before, during))
        })();
        let (before, during) = match res {
            Ok(s) => s,
            Err(e) => {
                r.fail(format!("{}: snapfs failed: {e}", case.what("setup")));
                continue;
            }
        };
        let devs = case.attach_drives(&mut boot);
        case.k_snapshot(&mut boot, &devs, "s1", cs1);
        if partial {
            // A snapfs COW in the middle of a merge activates as a plain snapshot: chunks still
            // in its list come from the COW, so it reads as the snapshot did before the merge.
            case.k_snapshot(&mut boot, &devs, "s0", cs0);
            case.k_origin(&mut boot, &devs);
            case.k_statuses(&mut boot, &["s0", "s1"], "@mid");
            case.k_dumps(&mut boot, &["s0", "s1"], "@mid");
            boot.remove(&case.dm("origin"));
            boot.remove(&case.dm("s0"));
        }
        case.k_merge(&mut boot, &devs, "s0");
        let m = case.dm("s0-merge");
        boot.line(&format!("wait_merge {m} 120"));
        boot.status(&m, &case.label("s0-merge@done"));
        boot.status(&case.dm("s1"), &case.label("s1@merged"));
        boot.dump_dm(&m, &case.label("s0-merge@done"), case.origin_bytes);
        boot.dump_dm(&case.dm("s1"), &case.label("s1@merged"), case.origin_bytes);
        boot.remove(&m);
        boot.remove(&case.dm("s1"));
        boot.dump(&devs.origin, &case.label("raw@merged"), case.origin_bytes);
        // The same COW, merged by snapfs after the boot, must come out as the kernel left it.
        let twin = case.copy_files("twin");
        merges.push((case, twin, before, during, partial));
    }

    // A COW that ends at a metadata-area boundary: the kernel and snapfs run the same writes.
    let edge = edges::plan(&mut boot, dir, seed);

    let console = boot.run();
    r.note(&console.describe());

    edges::check(r, &edge, &console, &boot_pattern(seed));
    if let Some(state) = &inv_state {
        inv.check_errors(r, &console, false);
        check_against_kernel(r, &inv, &console, state, &["s1"], "");
        inv.compare_kernel_status(r, &console, &state.status, ("s0", ""), false);
        if console.one("READ", &inv.label("s0")).as_deref() != Some("fail") {
            r.fail(format!(
                "{}: the kernel could read the invalid snapshot",
                inv.what("s0")
            ));
        }
    }
    if let Some(state) = &ovf_state {
        ovf.check_errors(r, &console, false);
        check_against_kernel(r, &ovf, &console, state, &["s0"], "");
    }
    if let Some((case, state)) = &fuse {
        case.check_errors(r, &console, false);
        check_against_kernel(r, case, &console, state, &["s0", "s1", "s2"], "");
        canary(r, case, &console, &state.views["origin"], "s0", "");
    }
    for (case, twin, before, during, partial) in &merges {
        case.check_errors(r, &console, false);
        let expected_origin = &before.views["s0"];
        if *partial {
            // The COW mid-merge, as a plain snapshot: same usage figures as snapfs printed
            // (snapfs calls its target snapshot-merge), same data as before the merge.
            case.compare_kernel_status(r, &console, &during.status, ("s0", "@mid"), true);
            case.compare_kernel_status(r, &console, &during.status, ("s1", "@mid"), false);
            case.check_view(
                r,
                &console,
                "s0",
                "@mid",
                "snapfs before the merge",
                Some(expected_origin),
            );
            case.check_view(r, &console, "s1", "@mid", "snapfs", before.views.get("s1"));
        }
        // After the kernel's merge the origin is the snapshot as it was; the other snapshot is
        // unchanged; the merged COW is an empty store.
        compare_status(
            r,
            &case.what("kernel status after its merge"),
            Some(&case.empty_status("snapshot-merge")),
            console.status(&case.label("s0-merge@done")),
            false,
        );
        case.check_view(
            r,
            &console,
            "s0-merge",
            "@done",
            "snapfs s0 before the merge",
            Some(expected_origin),
        );
        case.check_view(
            r,
            &console,
            "raw",
            "@merged",
            "snapfs s0 before the merge",
            Some(expected_origin),
        );
        case.check_view(
            r,
            &console,
            "s1",
            "@merged",
            "snapfs s1",
            before.views.get("s1"),
        );
        merge_twin(r, case, twin, *partial);
        check_after_kernel_merge(r, case, before, *partial);
    }
}

/// snapfs merges s0 of `twin` (copies of what the kernel merged; resuming the merge it started
/// when `partial`) with s1 beside it. The kernel merges tail-first, a run of consecutive
/// records at a time, and copies out to s1 as it goes, as snapfs does: origin, s1 and s0 must
/// come out byte for byte as the kernel left them (except s0's header when snapfs started the
/// merge: the kernel leaves snapfs's merge marker in the spare bytes; snapfs clears it).
pub(super) fn merge_twin(r: &mut Report, case: &Case, twin: &Case, partial: bool) {
    let res = (|| -> Result<(), String> {
        let vol = Arc::new(twin.open(&["s0", "s1"], false)?);
        if partial {
            vol.resume_merge();
        } else {
            vol.start_merge("s0").map_err(|e| e.to_string())?;
        }
        vol.wait_merge();
        if vol.snapshot("s0").is_some() {
            return Err("s0 is still attached after the merge".to_string());
        }
        vol.flush_all().map_err(|e| e.to_string())
    })();
    if let Err(e) = res {
        return r.fail(format!("{}: snapfs merge: {e}", case.what("merge twin")));
    }
    let scope = |name: &str| {
        if partial && name == "s0" {
            Scope::NoHeader
        } else {
            Scope::Whole
        }
    };
    compare_devices(r, "merge twin ", case, twin, scope);
}

/// After the kernel merged a snapfs COW: snapfs opens the result, the origin reads as the
/// merged snapshot did, the other snapshot (now holding the kernel's copy-outs) is unchanged.
pub(super) fn check_after_kernel_merge(r: &mut Report, case: &Case, before: &State, partial: bool) {
    let expected_origin = &before.views["s0"];
    let res = (|| -> Result<(), String> {
        let vol = Arc::new(case.open(&["s0", "s1"], false)?);
        let s0 = vol.snapshot("s0").ok_or("s0 not attached")?;
        if s0.is_merging() {
            // The kernel completed a merge snapfs started; the merge marker in the header's
            // spare bytes is still set (the kernel never rewrites a valid header).
            r.note(&format!(
                "{}: after the kernel finished snapfs's merge, snapfs reopens it as merging \
                 ({} chunks left); resuming completes it",
                case.what("s0"),
                s0.exceptions()
            ));
            if !partial {
                r.fail(format!(
                    "{}: a COW snapfs never merged opens as merging",
                    case.what("s0")
                ));
            }
            drop(s0);
            vol.resume_merge();
            vol.wait_merge();
        } else {
            compare_status(
                r,
                &case.what("snapfs status of s0 after the kernel's merge"),
                Some(&case.empty_status("snapshot")),
                parse_status(&dm_lines(&vol)).get("s0").cloned(),
                false,
            );
        }
        let after = snapfs_state(&vol, case.chunk_bytes())?;
        compare_views(
            r,
            &case.what("origin after the kernel's merge, read by snapfs"),
            "s0 before",
            expected_origin,
            "snapfs now",
            &after.views["origin"],
        );
        compare_views(
            r,
            &case.what("s1 after the kernel's merge, read by snapfs"),
            "s1 before",
            &before.views["s1"],
            "snapfs now",
            &after.views["s1"],
        );
        vol.flush_all().map_err(|e| e.to_string())
    })();
    if let Err(e) = res {
        r.fail(format!(
            "{}: snapfs after the kernel's merge: {e}",
            case.what("reopen")
        ));
    }
}
