//! A deterministic, seeded mutation fuzzer (no nightly toolchain needed), three targets:
//!
//! - **loader**: valid COW images made by `PersistentStore` itself are mutated (bit flips,
//!   header words, record fields set to interesting values, duplicated, swapped and cut records,
//!   truncation, growth, other block sizes and origin sizes) and loaded. Every load is compared
//!   with a reference reading of docs/format.md written here: it must refuse exactly what the
//!   reference refuses (with `Corrupt`, `ChunkSize` or `Io` and a one-line message), return
//!   exactly the reference's list otherwise, never panic, and never write the device. A list
//!   that loads must then take one more exception (prepared, committed, reloaded: the new chunk
//!   is no area, no chunk in use, and the reload returns the list plus it) and must serve the
//!   snapshot (or the merged origin) exactly as the records say through a read-only volume.
//! - **control**: `control::parse_command` on random byte strings and mutations of valid
//!   commands: no panic, errors are one line, and a valid command re-rendered parses back to
//!   itself.
//! - **options**: `options::MountOptions::parse` on random and mutated option lists: no panic,
//!   errors are one line, and what parses re-renders to options that parse back the same.
//!
//! Iterations: a small CI default; `SNAPFS_FUZZ_ITERS=N` runs N per target (loader N, parsers
//! 10 N). `SNAPFS_FUZZ_SEED` changes the base seed; `SNAPFS_FUZZ_ITER=i` replays one
//! iteration. A failure prints the seed, the iteration and the mutations, and saves the
//! input under target/fuzz-failures/. Inputs that ever found a bug stay below as regression
//! cases. Every run prints executions per second.

mod hostile_support;

// One module per target; the driver below is shared.
#[path = "fuzz/control.rs"]
mod control;
#[path = "fuzz/loader.rs"]
mod loader;
#[path = "fuzz/loader_checks.rs"]
mod loader_checks;
#[path = "fuzz/options.rs"]
mod options;

use hostile_support::*;
use snapfs::control::{CONTROL_WRITE_MAX, Command, parse_command};
use snapfs::device::{BlockDevice, MemDevice};
use snapfs::options::{MountOptions, check_snapshot_name};
use snapfs::rng::Rng;
use snapfs::store::{
    ExceptionStore, Loaded, OriginGeometry, PersistentStore, StoreError, StoreKind,
};
use snapfs::{SnapshotConfig, Volume, VolumeError, VolumeOptions};
use std::collections::{BTreeMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

const DEFAULT_LOADER_ITERS: u64 = 10_000;
const PARSER_ITERS_PER_LOADER_ITER: u64 = 10;
const DEFAULT_SEED: u64 = 0x5eed_f022;
const CHUNK_SECTORS_MAX: u64 = 1 << 21;

// ----- driver ---------------------------------------------------------------------------------

struct Plan {
    base: u64,
    iters: u64,
    only: Option<u64>,
}

fn plan(default_iters: u64) -> Plan {
    Plan {
        base: env_u64("SNAPFS_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
        iters: default_iters,
        only: env_u64("SNAPFS_FUZZ_ITER"),
    }
}

fn loader_iters() -> u64 {
    env_u64("SNAPFS_FUZZ_ITERS").unwrap_or(DEFAULT_LOADER_ITERS)
}

/// The generator of iteration `i`: independent of every other iteration, so one replays alone.
fn rng_for(base: u64, target: u64, i: u64) -> Rng {
    let mut r = Rng(base
        ^ target.wrapping_mul(0xa076_1d64_78bd_642f)
        ^ i.wrapping_mul(0xe703_7ed1_a0b4_28db));
    r.next();
    r
}

/// Runs `one` for every iteration of the plan, catching panics; reports executions per second.
/// Returns how many iterations ended with each outcome label.
fn drive(
    target: &str,
    id: u64,
    plan: &Plan,
    mut one: impl FnMut(&mut Rng, u64) -> Result<String, String>,
) -> BTreeMap<String, u64> {
    let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
    let started = Instant::now();
    let range = match plan.only {
        Some(i) => i..i + 1,
        None => 0..plan.iters,
    };
    let count = range.end - range.start;
    for i in range {
        let mut rng = rng_for(plan.base, id, i);
        let outcome = catch_unwind(AssertUnwindSafe(|| one(&mut rng, i)));
        let why = match outcome {
            Ok(Ok(label)) => {
                *outcomes.entry(label).or_default() += 1;
                continue;
            }
            Ok(Err(why)) => why,
            Err(panic) => format!("PANIC: {}", panic_text(&panic)),
        };
        panic!(
            "fuzz {target}: iteration {i} failed (replay: SNAPFS_FUZZ_SEED={} SNAPFS_FUZZ_ITER={i}): {why}",
            plan.base
        );
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {target}: {count} executions in {secs:.2} s ({:.0}/s), seed {}",
        count as f64 / secs.max(1e-9),
        plan.base
    );
    let tally: Vec<String> = outcomes.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    eprintln!("fuzz {target}: outcomes: {}", tally.join(", "));
    outcomes
}

/// A full run (not a replay of one iteration) reached every outcome whose label starts with
/// one of `wanted`: a generator that stopped producing one kind of input fails here instead of
/// passing while testing less.
fn assert_outcomes(target: &str, plan: &Plan, outcomes: &BTreeMap<String, u64>, wanted: &[&str]) {
    let total: u64 = outcomes.values().sum();
    if plan.only.is_some() {
        assert_eq!(total, 1, "fuzz {target}: the replayed iteration ran");
        return;
    }
    assert_eq!(
        total, plan.iters,
        "fuzz {target}: every iteration has an outcome"
    );
    for w in wanted {
        assert!(
            outcomes.keys().any(|k| k.starts_with(w)),
            "fuzz {target}: no iteration ended \"{w}...\" in {total}: {outcomes:?}"
        );
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic)".to_string()
    }
}

/// Saves a failing input where a person can pick it up; returns the path for the message.
fn save_failure(name: &str, bytes: &[u8]) -> String {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(name);
    match std::fs::write(&path, bytes) {
        Ok(()) => path.display().to_string(),
        Err(e) => format!("(not saved: {e})"),
    }
}

/// At most 160 characters of `text`, for messages.
fn clip(text: &str) -> String {
    match text.char_indices().nth(160) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// One-line, non-empty error text.
fn check_one_line(msg: &str) -> Result<(), String> {
    if msg.trim().is_empty() || msg.contains('\n') || msg.contains('\r') {
        return Err(format!("error is not one non-empty line: {:?}", clip(msg)));
    }
    Ok(())
}
