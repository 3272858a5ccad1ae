//! Kernel compatibility: COW devices written by snapfs are activated by the Linux kernel's own
//! dm-snapshot targets (snapshot, snapshot-origin, snapshot-merge), and COW devices written by
//! the kernel are opened by snapfs. The kernel is Debian's, booted under qemu's software
//! emulation by `scripts/kernel-compat.sh` (see docs/compatibility.md).
//!
//! The first run needs root, apt and network access to Debian's mirror, and a run takes
//! minutes, so an ordinary `cargo test` reports both tests as ignored (skipped, never passed).
//! `scripts/kernel-compat.sh test` runs them: `SNAPFS_KERNEL_COMPAT=1 cargo test --release
//! --test kernel_compat -- --ignored`. Run without that switch, a test that cannot run fails
//! under CI (`CI` set, as `.ci/run` sets it) and says loudly elsewhere that it was skipped.
//! Seeds: `SNAPFS_KERNEL_SEEDS=N` runs seeds 1..=N, `SNAPFS_KERNEL_SEEDS=3,17` those seeds.
//!
//! What is compared: every view (the origin and each snapshot) chunk by chunk, as snapfs reads
//! it and as the kernel reads it (the guest copies each dm device onto a results drive), and the
//! `dmsetup status` line of every target against snapfs's status line. A mismatch names the
//! seed, the case, the view, the chunk and both checksums.
//!
//! This file holds the scenarios; `kernel_compat/support.rs` the machinery (report, checksums,
//! booting the kernel, a `snapfs mount`), `kernel_compat/cases.rs` the cases (images, tables,
//! workloads, comparisons), `kernel_compat/edges.rs` case `edge` (COWs that end at a
//! metadata-area boundary), `kernel_compat/discard.rs` case `dsc` (the discard features).

use snapfs::device::{Device, FileDevice, OpenMode};
use snapfs::features::SnapshotFeatures;
use snapfs::status::dm_lines;
use snapfs::store::StoreKind;
use snapfs::{Snapshot, SnapshotConfig, Volume, VolumeError, VolumeOptions};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

#[path = "kernel_compat/cases.rs"]
mod cases;
#[path = "kernel_compat/discard.rs"]
mod discard;
#[path = "kernel_compat/edges.rs"]
mod edges;
#[path = "kernel_compat/support.rs"]
mod support;

use cases::*;
use support::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const SECTOR: u64 = 512;
/// Chunk sizes in sectors exercised for each seed: the kernel's minimum, LVM's range, and one
/// beyond the default.
const CHUNK_SIZES: [u64; 5] = [1, 8, 16, 128, 1024];
/// Origin of the main cases: small enough for quick boots under emulation, large enough for
/// more than one metadata area at chunk sizes 1, 8 and 16 (E = 32, 256, 512 records per area).
const ORIGIN_BYTES: u64 = 16 * MIB;
/// Origin of the failure-state cases.
const SMALL_ORIGIN_BYTES: u64 = 4 * MIB;
/// A COW that holds 14 data chunks of 4 KiB (header, area 0, data).
const TINY_COW_BYTES: u64 = 64 * KIB;
/// Bytes of the random pattern the guest's writes copy from.
const PATTERN_BYTES: u64 = MIB;
const DEFAULT_SEEDS: [u64; 3] = [1, 2, 3];
/// virtio disks per boot: each takes a PCI slot (about 28 are free on qemu's pc machine).
const DRIVES_MAX: usize = 24;

const P: StoreKind = StoreKind::Persistent { overflow: false };
const PO: StoreKind = StoreKind::Persistent { overflow: true };

// ---------------------------------------------------------------------------------------------
// Switch and seeds
// ---------------------------------------------------------------------------------------------

fn enabled(test: &str) -> bool {
    if std::env::var("SNAPFS_KERNEL_COMPAT").as_deref() == Ok("1") {
        return true;
    }
    // Under CI a suite that did not run must not look like one that passed.
    if under_ci() {
        panic!(
            "kernel_compat::{test} did NOT run: CI is set but SNAPFS_KERNEL_COMPAT is not 1; CI \
             runs this suite with scripts/kernel-compat.sh test"
        );
    }
    // Written to the process's stderr directly: the test harness captures eprintln!.
    let bar = "!".repeat(96);
    let msg = format!(
        "\n{bar}\n!! SKIPPED kernel_compat::{test}: the kernel compatibility harness did NOT run.\n\
         !! It boots Debian's kernel under qemu (root, apt, minutes). Run it with\n\
         !!     SNAPFS_KERNEL_COMPAT=1 cargo test --release --test kernel_compat -- --ignored --nocapture\n\
         !! or  scripts/kernel-compat.sh test          (see docs/compatibility.md)\n{bar}\n"
    );
    let _ = std::io::stderr().write_all(msg.as_bytes());
    false
}

/// Whether this runs under CI: `CI` set to anything but empty, `0` or `false` (the convention of
/// CI services; `.ci/run` sets `CI=1`).
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

fn seeds() -> Vec<u64> {
    match std::env::var("SNAPFS_KERNEL_SEEDS") {
        Ok(s) if s.contains(',') => s
            .split(',')
            .map(|w| w.trim().parse().expect("SNAPFS_KERNEL_SEEDS: numbers"))
            .collect(),
        Ok(s) => (1..=s
            .trim()
            .parse::<u64>()
            .expect("SNAPFS_KERNEL_SEEDS: a count"))
            .collect(),
        Err(_) => DEFAULT_SEEDS.to_vec(),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario 1, 3a, 4b, 5: snapfs writes, the kernel reads (and merges)
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "boots a kernel under qemu: run scripts/kernel-compat.sh test"]
fn snapfs_writes_kernel_reads() {
    run_seeds(
        "snapfs_writes_kernel_reads",
        "snapfs-writes",
        |r, dir, seed, kernel| {
            r.note(&format!(
                "seed {seed}: snapfs writes, {kernel} reads ({})",
                dir.display()
            ));
            snapfs_written_cows(r, dir, seed);
            snapfs_failure_and_merge_states(r, dir, seed);
        },
    );
}

/// Runs `scenarios` for every seed in a work directory of its own (`<dir_prefix>-<seed>`, kept
/// when something did not match, or with `SNAPFS_KERNEL_KEEP`), then fails the test with every
/// mismatch found. The scenarios get the report, the directory, the seed and the kernel's name.
fn run_seeds(test: &str, dir_prefix: &str, scenarios: impl Fn(&mut Report, &Path, u64, &str)) {
    if !enabled(test) {
        return;
    }
    let h = harness();
    let mut r = Report::default();
    let started = Instant::now();
    for seed in seeds() {
        let dir = work_dir(&format!("{dir_prefix}-{seed}"));
        scenarios(&mut r, &dir, seed, &h.kernel);
        if r.failures.is_empty() && std::env::var_os("SNAPFS_KERNEL_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    r.note(&format!("{test}: {:.0} s", started.elapsed().as_secs_f64()));
    let failures = r.into_failures();
    assert!(
        failures.is_empty(),
        "{test}: {} mismatch(es) between snapfs and the kernel:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Scenario 1: origins and several COWs written through the library, for every chunk size; the
/// kernel activates them and must read the same bytes and print the same status.
fn snapfs_written_cows(r: &mut Report, dir: &Path, seed: u64) {
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
fn fuse_writes(r: &mut Report, dir: &Path, seed: u64) -> Option<(Case, State)> {
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
fn snapfs_failure_and_merge_states(r: &mut Report, dir: &Path, seed: u64) {
    let mut boot = Boot::new(dir, "snapfs-states");

    // 4b: origin writes beyond a tiny COW invalidate s0; s1 stays healthy.
    let inv = Case::new(
        dir,
        seed,
        "inv",
        SMALL_ORIGIN_BYTES,
        vec![
            snap("s0", P, 8, TINY_COW_BYTES),
            snap("s1", P, 16, roomy_cow(SMALL_ORIGIN_BYTES, 16)),
        ],
    );
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
        compare_status(
            r,
            &inv.what("status of s0"),
            state.status.get("s0"),
            console.status(&inv.label("s0")),
            false,
        );
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
        let cs0 = case.snaps[0].chunk_sectors;
        let expected_origin = &before.views["s0"];
        if *partial {
            // The COW mid-merge, as a plain snapshot: same usage figures as snapfs printed
            // (snapfs calls its target snapshot-merge), same data as before the merge.
            compare_status(
                r,
                &case.what("status of s0 mid-merge"),
                during.status.get("s0"),
                console.status(&case.label("s0@mid")),
                true,
            );
            compare_status(
                r,
                &case.what("status of s1 mid-merge"),
                during.status.get("s1"),
                console.status(&case.label("s1@mid")),
                false,
            );
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
        let empty = format!(
            "0 {} snapshot-merge {}/{} {}",
            case.sectors(),
            2 * cs0,
            case.snaps[0].cow_bytes / SECTOR,
            2 * cs0
        );
        compare_status(
            r,
            &case.what("kernel status after its merge"),
            Some(&empty),
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
fn merge_twin(r: &mut Report, case: &Case, twin: &Case, partial: bool) {
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
fn check_after_kernel_merge(r: &mut Report, case: &Case, before: &State, partial: bool) {
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
            let cs = case.snaps[0].chunk_sectors;
            let want = format!(
                "0 {} snapshot {}/{} {}",
                case.sectors(),
                2 * cs,
                case.snaps[0].cow_bytes / SECTOR,
                2 * cs
            );
            compare_status(
                r,
                &case.what("snapfs status of s0 after the kernel's merge"),
                Some(&want),
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

// ---------------------------------------------------------------------------------------------
// Scenario 2, 3b, 4a: the kernel writes, snapfs reads (and merges)
// ---------------------------------------------------------------------------------------------

#[test]
#[ignore = "boots a kernel under qemu: run scripts/kernel-compat.sh test"]
fn kernel_writes_snapfs_reads() {
    run_seeds(
        "kernel_writes_snapfs_reads",
        "kernel-writes",
        |r, dir, seed, kernel| {
            r.note(&format!(
                "seed {seed}: {kernel} writes, snapfs reads ({})",
                dir.display()
            ));
            kernel_written_cows(r, dir, seed);
        },
    );
}

fn kernel_written_cows(r: &mut Report, dir: &Path, seed: u64) {
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
    let inv = Case::new(
        dir,
        seed,
        "kinv",
        SMALL_ORIGIN_BYTES,
        vec![
            snap("s0", P, 8, TINY_COW_BYTES),
            snap("s1", P, 16, roomy_cow(SMALL_ORIGIN_BYTES, 16)),
        ],
    );
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
            compare_status(
                r,
                &inv.what("status of s0"),
                state.status.get("s0"),
                console.status(&inv.label("s0")),
                false,
            );
            compare_status(
                r,
                &inv.what("status of s0 reloaded"),
                state.status.get("s0"),
                console.status(&inv.label("s0@reload")),
                false,
            );
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
fn twin(
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
fn snapfs_merge(r: &mut Report, case: &Case, console: &Console) -> Option<State> {
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
    let cs = case.snaps[0].chunk_sectors;
    let want = format!(
        "0 {} snapshot {}/{} {}",
        case.sectors(),
        2 * cs,
        case.snaps[0].cow_bytes / SECTOR,
        2 * cs
    );
    compare_status(
        r,
        &case.what("snapfs status of s0 after its merge"),
        Some(&want),
        state.status.get("s0").cloned(),
        false,
    );
    Some(state)
}
