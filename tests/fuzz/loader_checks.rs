//! Target 1, the metadata loader: what docs/format.md says a load must give (read with the
//! shared reference reader of `tests/common/format.rs`), the checks of what a loaded store does
//! next, the regression cases and the test.

use super::loader::*;
use super::*;

// ----- the reference: docs/format.md, read independently -------------------------------------

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Expect {
    /// First four bytes zero and room for three chunks: a new store of this many sectors.
    New(u64),
    /// `valid == 0`.
    Invalid,
    /// The list, and whether the merge marker is set.
    Valid(Vec<(u64, u64)>, bool),
    Refused(&'static str),
}

/// The kernel's chunk-size rules for both devices.
pub(super) fn legal_chunk(sectors: u64, case: &Case) -> bool {
    let fits = |block: u32| sectors.is_multiple_of((block as u64 / SECTOR).max(1));
    sectors.is_power_of_two()
        && sectors <= CHUNK_SECTORS_MAX
        && fits(case.cow_block)
        && fits(case.origin_block)
}

/// What docs/format.md says a loader must do with `case`.
pub(super) fn reference(case: &Case) -> Expect {
    let img = &case.image;
    if case.requested != 0 && !legal_chunk(case.requested, case) {
        return Expect::Refused("requested chunk size");
    }
    if img.len() < 28 {
        return Expect::Refused("header unreadable");
    }
    if word32(img, 0) == 0 {
        let sectors = match case.requested {
            0 => (case.cow_block as u64 / SECTOR).max(32),
            s => s,
        };
        if !legal_chunk(sectors, case) {
            return Expect::Refused("default chunk size");
        }
        if (img.len() as u64) < 3 * sectors * SECTOR {
            return Expect::Refused("new COW below 3 chunks");
        }
        return Expect::New(sectors);
    }
    if word32(img, 0) != SNAP {
        return Expect::Refused("magic");
    }
    let cs = word32(img, 12) as u64;
    if !legal_chunk(cs, case) {
        return Expect::Refused("on-disk chunk size");
    }
    if word32(img, 8) != 1 {
        return Expect::Refused("version");
    }
    if (img.len() as u64) < 2 * cs * SECTOR {
        return Expect::Refused("below 2 chunks");
    }
    if word32(img, 4) == 0 {
        return Expect::Invalid;
    }
    let marker = img[16..28] == MARKER;
    match reference_list(img, Layout { cs }, case.origin_bytes) {
        Ok(list) => Expect::Valid(list, marker),
        Err(why) => Expect::Refused(why),
    }
}

// ----- checks ---------------------------------------------------------------------------------

pub(super) fn new_store(dev: &Arc<Watch>, case: &Case) -> PersistentStore {
    let origin = OriginGeometry {
        size_bytes: case.origin_bytes,
        block_bytes: case.origin_block,
    };
    PersistentStore::new(dev.device(), false, case.requested, origin, false)
}

/// Loads `case` and checks the outcome against the reference, then what a loaded store does.
pub(super) fn check_case(case: &Case) -> Result<String, String> {
    let expect = reference(case);
    let dev = Watch::new("fuzz.cow", case.image.clone(), case.cow_block);
    let mut store = new_store(&dev, case);
    let loaded = store.read_metadata();
    if dev.writes() != 0 || dev.flushes() != 0 || dev.contents() != case.image {
        return Err(format!(
            "read_metadata wrote the device (outcome {loaded:?})"
        ));
    }
    match (loaded, &expect) {
        (Err(e), Expect::Refused(why)) => {
            check_refusal(&e)?;
            Ok(format!("refused ({why})"))
        }
        (Ok(Loaded::Invalid), Expect::Invalid) => {
            check_invalid(&store)?;
            Ok("invalid".into())
        }
        (Ok(Loaded::Valid(list)), Expect::New(sectors)) if list.is_empty() => {
            let next = check_new(store, &dev, case, *sectors)?;
            Ok(format!("new, {next}"))
        }
        (Ok(Loaded::Valid(list)), Expect::Valid(want, marker)) if &list == want => {
            let next = check_takes_one_more(store, &dev, case, &list)?;
            check_volume_view(case, &list, *marker)?;
            let merging = if *marker { " merging" } else { "" };
            Ok(format!("loaded{merging}, {next}"))
        }
        (got, _) => Err(format!(
            "loader gave {} but the format says {expect:?}",
            brief(&got)
        )),
    }
}

pub(super) fn brief(got: &Result<Loaded, StoreError>) -> String {
    match got {
        Ok(Loaded::Valid(list)) if list.len() > 8 => format!("a list of {}", list.len()),
        other => format!("{other:?}"),
    }
}

pub(super) fn check_refusal(e: &StoreError) -> Result<(), String> {
    match e {
        StoreError::Corrupt(_) | StoreError::ChunkSize(_) | StoreError::Io(_) => {
            check_one_line(&e.to_string())
        }
        other => Err(format!("refused with the wrong kind of error: {other:?}")),
    }
}

pub(super) fn check_invalid(store: &PersistentStore) -> Result<(), String> {
    match store.prepare_exceptions(1) {
        Err(StoreError::Invalid) => Ok(()),
        other => Err(format!("an invalid store allocated: {other:?}")),
    }
}

pub(super) fn check_new(
    mut store: PersistentStore,
    dev: &Arc<Watch>,
    case: &Case,
    sectors: u64,
) -> Result<&'static str, String> {
    if store.chunk_size().sectors() != sectors {
        return Err(format!("new store got chunk size {}", store.chunk_size()));
    }
    store.initialise().map_err(|e| format!("initialise: {e}"))?;
    check_takes_one_more(store, dev, case, &[])
}

/// The next chunk the format allows after `list`: past every chunk in use, never an area.
pub(super) fn expected_next(l: Layout, list: &[(u64, u64)]) -> u64 {
    let next = list.iter().map(|r| r.1 + 1).max().unwrap_or(2).max(2);
    if l.is_area(next) { next + 1 } else { next }
}

/// Whether chunk `c` may be allocated: it fits (the kernel checks nothing else; the next area
/// is checked when the commit must zero it, see `commit_fails`).
pub(super) fn fits(l: Layout, c: u64, cow_bytes: u64) -> bool {
    (c + 1) * l.bytes() <= cow_bytes && c < CHUNK_LIMIT
}

/// Whether committing one more record after `list` fails the store, as the kernel's commit
/// does: the record fills its area and the next area (zeroed first) lies past the end.
pub(super) fn commit_fails(l: Layout, list: &[(u64, u64)], cow_bytes: u64) -> bool {
    let n = list.len() as u64 + 1;
    n.is_multiple_of(l.per_area()) && !fits(l, l.area(n / l.per_area()), cow_bytes)
}

/// Prepares and commits one exception and reloads: the list must be the old one plus it.
pub(super) fn check_takes_one_more(
    store: PersistentStore,
    dev: &Arc<Watch>,
    case: &Case,
    list: &[(u64, u64)],
) -> Result<&'static str, String> {
    let l = Layout {
        cs: store.chunk_size().sectors(),
    };
    let origin_chunks = case.origin_bytes.div_ceil(l.bytes());
    let used: HashSet<u64> = list.iter().map(|r| r.0).collect();
    let Some(old) = (0..origin_chunks).find(|c| !used.contains(c)) else {
        return Ok("every origin chunk taken");
    };
    let next = expected_next(l, list);
    let prepared = match store.prepare_exceptions(1) {
        Err(StoreError::NoSpace) if !fits(l, next, dev.size_bytes()) => return Ok("COW full"),
        Err(e) => return Err(format!("prepare after load: {e:?} (next {next})")),
        Ok(p) => p,
    };
    let new = prepared.new_chunks[0];
    if new != next || !fits(l, new, dev.size_bytes()) {
        return Err(format!("allocated chunk {new}, the format says {next}"));
    }
    let committed = store.commit_exceptions(prepared, &[old], true);
    let mut want = list.to_vec();
    match committed {
        Err(StoreError::Invalid) if commit_fails(l, list, dev.size_bytes()) => {}
        Ok(()) if !commit_fails(l, list, dev.size_bytes()) => want.push((old, new)),
        other => return Err(format!("commit after load: {other:?} (next {next})")),
    }
    let mut again = new_store(dev, case);
    match again.read_metadata() {
        Ok(Loaded::Valid(got)) if got == want && got.len() == list.len() => {
            Ok("COW full at an area boundary")
        }
        Ok(Loaded::Valid(got)) if got == want => Ok("one more committed"),
        other => Err(format!("reload after one commit: {}", brief(&other))),
    }
}

/// Byte `i` of origin chunk data as the origin image holds it.
pub(super) fn origin_byte(i: u64) -> u8 {
    (i / 512) as u8 ^ 0x3c
}

/// Opens a read-only volume over the case and reads every byte of the snapshot (or, when the
/// store is merging, of the origin): each chunk with a record reads from its COW chunk.
pub(super) fn check_volume_view(
    case: &Case,
    list: &[(u64, u64)],
    merging: bool,
) -> Result<(), String> {
    let size = case.origin_bytes / SECTOR * SECTOR;
    if size == 0 {
        return Ok(());
    }
    let origin: Vec<u8> = (0..case.origin_bytes).map(origin_byte).collect();
    let origin_dev = Watch::new("origin", origin.clone(), case.origin_block);
    let cow = Watch::new("fuzz.cow", case.image.clone(), case.cow_block);
    let config = SnapshotConfig {
        name: "s".into(),
        cow: cow.device(),
        kind: StoreKind::Persistent { overflow: false },
        chunk_sectors: case.requested,
        features: Default::default(),
    };
    let ro = VolumeOptions::read_only(false);
    let volume =
        Volume::open(origin_dev.device(), vec![config], ro).map_err(|e| format!("volume: {e}"))?;
    let snap = volume.snapshot("s").ok_or("no snapshot s")?;
    let mut got = vec![0u8; size as usize];
    let read = if merging {
        volume.read_origin(0, &mut got)
    } else {
        volume.read_snapshot(&snap, 0, &mut got)
    };
    read.map_err(|e: VolumeError| format!("reading the view: {e}"))?;
    let mut want = origin[..size as usize].to_vec();
    let b = snap.chunk_size().bytes();
    for &(old, new) in list {
        let start = (old * b) as usize;
        let end = ((old + 1) * b).min(size) as usize;
        let from = (new * b) as usize;
        want[start..end].copy_from_slice(&case.image[from..from + end - start]);
    }
    if got != want {
        let at = got.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!(
            "the view differs from the records at byte {at} (merging {merging})"
        ));
    }
    if origin_dev.writes() + cow.writes() != 0 {
        return Err("a read-only volume wrote a device".into());
    }
    Ok(())
}

/// A fixed loader input: a seed image (index into `seeds()`), byte patches, a length.
pub(super) struct Fixed {
    pub(super) seed: usize,
    pub(super) patches: &'static [(usize, &'static [u8])],
    pub(super) len: Option<usize>,
}

/// Inputs that once found a bug in the loader go here. None has so far (the loader held every
/// fuzz case since the fuzzer was written); these edge inputs run as fixed cases.
pub(super) const LOADER_REGRESSIONS: &[Fixed] = &[
    // Area 0 full (seed 2: 32 records of 512-byte chunks), the COW cut before area 1.
    Fixed {
        seed: 2,
        patches: &[],
        len: Some(34 * 512),
    },
    // Record 0's new chunk = 2^56 (byte 520 = area 0 at chunk 1, + 8).
    Fixed {
        seed: 1,
        patches: &[(520, &[0, 0, 0, 0, 0, 0, 0, 1])],
        len: None,
    },
    // Record 6's new chunk = record 5's (chunk 7).
    Fixed {
        seed: 3,
        patches: &[(616, &[7, 0, 0, 0, 0, 0, 0, 0])],
        len: None,
    },
    // Merge marker of version 2: not a merge.
    Fixed {
        seed: 7,
        patches: &[(24, &[2])],
        len: None,
    },
];

pub(super) fn fixed_case(seeds: &[Seed], f: &Fixed) -> Case {
    let seed = &seeds[f.seed];
    let mut image = seed.image.clone();
    for (at, bytes) in f.patches {
        image[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    image.truncate(f.len.unwrap_or(image.len()));
    Case {
        image,
        origin_bytes: seed.origin_bytes,
        cow_block: 512,
        origin_block: 512,
        requested: 0,
    }
}

pub(super) fn run_loader_case(seed: &Seed, rng: &mut Rng, i: u64) -> Result<String, String> {
    let mut case = Case {
        image: seed.image.clone(),
        origin_bytes: seed.origin_bytes,
        cow_block: 512,
        origin_block: 512,
        requested: 0,
    };
    let mut done = Vec::new();
    for _ in 0..1 + rng.below(4) {
        done.push(mutate(&mut case, seed.cs, rng));
    }
    check_case(&case).map_err(|why| {
        let saved = save_failure(&format!("loader-{i}.img"), &case.image);
        format!(
            "{why}\n  seed image: {}\n  mutations: {done:?}\n  case: origin {} bytes, cow block {}, \
             origin block {}, requested {}\n  image saved to {saved}",
            seed.label, case.origin_bytes, case.cow_block, case.origin_block, case.requested
        )
    })
}

#[test]
pub(super) fn fuzz_the_metadata_loader() {
    let seeds = seeds();
    for (k, fixed) in LOADER_REGRESSIONS.iter().enumerate() {
        let outcome = check_case(&fixed_case(&seeds, fixed));
        let label = outcome.unwrap_or_else(|why| panic!("loader regression {k}: {why}"));
        eprintln!("fuzz loader: fixed case {k}: {label}");
    }
    // Every seed loads as made.
    for seed in &seeds {
        let case = Case {
            image: seed.image.clone(),
            origin_bytes: seed.origin_bytes,
            cow_block: 512,
            origin_block: 512,
            requested: 0,
        };
        check_case(&case).unwrap_or_else(|why| panic!("seed {}: {why}", seed.label));
    }
    let plan = plan(loader_iters());
    let outcomes = drive("loader", 1, &plan, |rng, i| {
        let seed = &seeds[rng.below(seeds.len() as u64) as usize];
        run_loader_case(seed, rng, i)
    });
    assert_outcomes("loader", &plan, &outcomes, &["refused", "loaded"]);
}
