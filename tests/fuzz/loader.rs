//! Target 1, the metadata loader: the cases (valid images made by `PersistentStore` itself,
//! in several geometries) and their mutations. What a load of a case must give is decided in
//! `loader_checks.rs`.

use super::*;

/// A valid image made by the store, and what it holds.
#[derive(Clone)]
pub(super) struct Seed {
    pub(super) label: String,
    pub(super) cs: u64,
    pub(super) image: Vec<u8>,
    pub(super) origin_bytes: u64,
}

/// What a seed holds: `records` exceptions of distinct random origin chunks, committed in
/// batches of 1-5.
pub(super) struct SeedSpec {
    pub(super) cs: u64,
    pub(super) cow_chunks: u64,
    pub(super) origin_chunks: u64,
    pub(super) records: u64,
    pub(super) marker: bool,
    pub(super) invalid: bool,
}

pub(super) fn geometry(origin_bytes: u64) -> OriginGeometry {
    OriginGeometry {
        size_bytes: origin_bytes,
        block_bytes: 512,
    }
}

/// Builds a seed image through the store's own operations, data chunks tagged.
pub(super) fn make_seed(spec: &SeedSpec, rng: &mut Rng) -> Seed {
    let l = Layout { cs: spec.cs };
    let origin_bytes = spec.origin_chunks * l.bytes();
    let dev = Arc::new(MemDevice::new("seed", spec.cow_chunks * l.bytes()));
    let mut store =
        PersistentStore::new(dev.clone(), false, spec.cs, geometry(origin_bytes), false);
    assert!(matches!(store.read_metadata(), Ok(Loaded::Valid(ref v)) if v.is_empty()));
    store.initialise().unwrap();
    let mut olds: Vec<u64> = (0..spec.origin_chunks).collect();
    for i in (1..olds.len()).rev() {
        olds.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut done = 0;
    while done < spec.records {
        let batch = (1 + rng.below(5)).min(spec.records - done);
        let olds = &olds[done as usize..(done + batch) as usize];
        let prepared = store.prepare_exceptions(batch as usize).expect("seed fits");
        for &new in &prepared.new_chunks {
            let data = vec![0xc0 ^ (new as u8); l.bytes() as usize];
            dev.write_at(&data, new * l.bytes()).unwrap();
        }
        store.commit_exceptions(prepared, olds, true).unwrap();
        done += batch;
    }
    if spec.marker {
        store.set_merge_marker(true).unwrap();
    }
    if spec.invalid {
        store.drop_snapshot();
    }
    Seed {
        label: format!(
            "cs{} cow{} origin{} n{}{}{}",
            spec.cs,
            spec.cow_chunks,
            spec.origin_chunks,
            spec.records,
            if spec.marker { " merging" } else { "" },
            if spec.invalid { " invalid" } else { "" }
        ),
        cs: spec.cs,
        image: dev.contents(),
        origin_bytes,
    }
}

pub(super) fn seeds() -> Vec<Seed> {
    let s = |cs, cow_chunks, origin_chunks, records| SeedSpec {
        cs,
        cow_chunks,
        origin_chunks,
        records,
        marker: false,
        invalid: false,
    };
    let specs = [
        s(1, 120, 128, 0),
        s(1, 120, 128, 31),
        s(1, 120, 128, 32),
        s(1, 120, 128, 70),
        s(1, 36, 64, 33), // full: the next allocation does not fit
        s(2, 150, 200, 100),
        s(8, 40, 48, 30),
        SeedSpec {
            marker: true,
            ..s(1, 100, 64, 10)
        },
        SeedSpec {
            invalid: true,
            ..s(1, 100, 64, 10)
        },
    ];
    let mut rng = Rng(DEFAULT_SEED);
    specs.iter().map(|spec| make_seed(spec, &mut rng)).collect()
}

/// A fuzz case: the image and everything about the devices it is loaded with.
#[derive(Clone, Debug)]
pub(super) struct Case {
    pub(super) image: Vec<u8>,
    pub(super) origin_bytes: u64,
    pub(super) cow_block: u32,
    pub(super) origin_block: u32,
    pub(super) requested: u64,
}

// ----- mutations ------------------------------------------------------------------------------

/// Interesting chunk numbers for a case: edges of the COW, the origin, areas, the 56-bit limit.
pub(super) fn interesting_chunks(
    case: &Case,
    l: Layout,
    list: &[(u64, u64)],
    rng: &mut Rng,
) -> Vec<u64> {
    let cow_chunks = case.image.len() as u64 / l.bytes();
    let origin_chunks = case.origin_bytes.div_ceil(l.bytes());
    let mut v = vec![
        0,
        1,
        2,
        l.area(1),
        l.area(2),
        l.area(1) + 1,
        cow_chunks.saturating_sub(1),
        cow_chunks,
        cow_chunks + 1,
        origin_chunks.saturating_sub(1),
        origin_chunks,
        CHUNK_LIMIT - 1,
        CHUNK_LIMIT,
        CHUNK_LIMIT + 2,
        u64::MAX,
        1 << 32,
    ];
    if let Some(&(old, new)) = list.get(rng.below(list.len().max(1) as u64) as usize) {
        v.extend([old, new, old + 1, new + 1, new.wrapping_sub(1)]);
    }
    v
}

pub(super) const INTERESTING_U32: [u32; 16] = [
    0,
    1,
    2,
    3,
    4,
    8,
    16,
    32,
    64,
    0x100,
    1 << 21,
    1 << 22,
    0x7fff_ffff,
    0x8000_0000,
    u32::MAX,
    SNAP,
];

/// A record index to mutate: mostly one in use, sometimes the terminator or beyond.
pub(super) fn pick_record(rng: &mut Rng, used: usize) -> u64 {
    rng.below(used as u64 + 3)
}

/// A byte offset: mostly the header or an area, sometimes anywhere.
pub(super) fn pick_offset(rng: &mut Rng, case: &Case, l: Layout) -> usize {
    let len = case.image.len().max(1);
    let at = match rng.below(10) {
        0..=3 => rng.below(28) as usize,
        4..=8 => {
            let area = l.area(rng.below(4)) * l.bytes();
            (area + rng.below(l.bytes())) as usize
        }
        _ => rng.below(len as u64) as usize,
    };
    at.min(len - 1)
}

/// Applies one random mutation; returns what it did.
pub(super) fn mutate(case: &mut Case, seed_cs: u64, rng: &mut Rng) -> String {
    let l = Layout { cs: seed_cs };
    let list = list_in(&case.image, l);
    match rng.below(14) {
        0 | 1 => flip_bit(case, l, rng),
        2 => header_word(case, rng),
        3..=5 => record_field(case, l, &list, rng),
        6 => copy_record(case, l, &list, rng),
        7 => cut_list(case, l, &list, rng),
        8 => extend_list(case, l, &list, rng),
        9 => truncate(case, l, rng),
        10 => grow(case, l, rng),
        11 => random_span(case, l, rng),
        12 => devices(case, l, rng),
        _ => marker(case, rng),
    }
}

pub(super) fn flip_bit(case: &mut Case, l: Layout, rng: &mut Rng) -> String {
    if case.image.is_empty() {
        return "flip: empty".into();
    }
    let at = pick_offset(rng, case, l);
    let bit = rng.below(8);
    case.image[at] ^= 1 << bit;
    format!("flip byte {at} bit {bit}")
}

pub(super) fn header_word(case: &mut Case, rng: &mut Rng) -> String {
    let field = rng.below(7) as usize * 4;
    let value = rng.pick(&INTERESTING_U32);
    if case.image.len() >= field + 4 {
        case.image[field..field + 4].copy_from_slice(&value.to_le_bytes());
    }
    format!("header word at {field} = {value:#x}")
}

pub(super) fn put_word(case: &mut Case, at: usize, value: u64) -> bool {
    if at + 8 > case.image.len() {
        return false;
    }
    case.image[at..at + 8].copy_from_slice(&value.to_le_bytes());
    true
}

pub(super) fn record_field(
    case: &mut Case,
    l: Layout,
    list: &[(u64, u64)],
    rng: &mut Rng,
) -> String {
    let k = pick_record(rng, list.len());
    let field = rng.below(2) as usize * 8;
    let values = interesting_chunks(case, l, list, rng);
    let value = rng.pick(&values);
    let done = put_word(case, l.kth_record_at(k) + field, value);
    let name = if field == 0 { "old" } else { "new" };
    format!("record {k} {name} = {value:#x} ({done})")
}

pub(super) fn copy_record(
    case: &mut Case,
    l: Layout,
    list: &[(u64, u64)],
    rng: &mut Rng,
) -> String {
    let (from, to) = (pick_record(rng, list.len()), pick_record(rng, list.len()));
    let (a, b) = (l.kth_record_at(from), l.kth_record_at(to));
    if a.max(b) + 16 > case.image.len() {
        return "copy record: out of image".into();
    }
    if rng.chance(50) {
        let r = record_from(&case.image, a);
        put_record_at(&mut case.image, b, r.0, r.1);
        format!("copy record {from} over {to}")
    } else {
        let (ra, rb) = (record_from(&case.image, a), record_from(&case.image, b));
        put_record_at(&mut case.image, a, rb.0, rb.1);
        put_record_at(&mut case.image, b, ra.0, ra.1);
        format!("swap records {from} and {to}")
    }
}

pub(super) fn cut_list(case: &mut Case, l: Layout, list: &[(u64, u64)], rng: &mut Rng) -> String {
    let k = rng.below(list.len() as u64 + 1);
    let at = l.kth_record_at(k);
    let whole = rng.chance(50);
    if at + 16 <= case.image.len() {
        let from = if whole { at } else { at + 8 };
        case.image[from..at + 16].fill(0);
    }
    format!("terminate at record {k} (whole record: {whole})")
}

pub(super) fn extend_list(
    case: &mut Case,
    l: Layout,
    list: &[(u64, u64)],
    rng: &mut Rng,
) -> String {
    let k = list.len() as u64 + rng.below(2);
    let cow_chunks = case.image.len() as u64 / l.bytes();
    let old = rng.below(case.origin_bytes.div_ceil(l.bytes()) + 2);
    let new = 2 + rng.below(cow_chunks + 2);
    let at = l.kth_record_at(k);
    if at + 16 <= case.image.len() {
        put_record_at(&mut case.image, at, old, new);
    }
    format!("record {k} = ({old}, {new})")
}

pub(super) fn truncate(case: &mut Case, l: Layout, rng: &mut Rng) -> String {
    let b = l.bytes() as usize;
    let len = case.image.len();
    let cut = match rng.below(4) {
        0 => rng.below(len as u64 + 1) as usize,
        1 => (l.area(rng.below(4)) as usize * b + rng.below(b as u64) as usize).min(len),
        2 => (rng.below((len / b) as u64 + 1) as usize * b).min(len),
        _ => len.saturating_sub(1 + rng.below(2 * b as u64) as usize),
    };
    case.image.truncate(cut);
    format!("truncate to {cut}")
}

pub(super) fn grow(case: &mut Case, l: Layout, rng: &mut Rng) -> String {
    let extra = 1 + rng.below(3 * l.bytes()) as usize;
    let random = rng.chance(30);
    let tail = if random {
        rng.bytes(extra as u64)
    } else {
        vec![0; extra]
    };
    case.image.extend_from_slice(&tail);
    format!("grow by {extra} (random: {random})")
}

pub(super) fn random_span(case: &mut Case, l: Layout, rng: &mut Rng) -> String {
    if case.image.is_empty() {
        return "span: empty".into();
    }
    let at = pick_offset(rng, case, l);
    let n = (1 + rng.below(64) as usize).min(case.image.len() - at);
    let bytes = rng.bytes(n as u64);
    case.image[at..at + n].copy_from_slice(&bytes);
    format!("random {n} bytes at {at}")
}

pub(super) fn devices(case: &mut Case, l: Layout, rng: &mut Rng) -> String {
    match rng.below(4) {
        0 => case.cow_block = rng.pick(&[512, 1024, 4096]),
        1 => case.origin_block = rng.pick(&[512, 1024, 4096]),
        2 => {
            let chunks = rng.below(2 * case.origin_bytes.div_ceil(l.bytes()) + 1);
            case.origin_bytes = (chunks * l.bytes()).max(512) + 512 * rng.below(2);
        }
        _ => case.requested = rng.pick(&[0, 0, 1, 2, 3, 8, 16, 24, 1 << 21, 1 << 22]),
    }
    format!(
        "cow block {}, origin block {}, origin {} bytes, requested {}",
        case.cow_block, case.origin_block, case.origin_bytes, case.requested
    )
}

pub(super) fn marker(case: &mut Case, rng: &mut Rng) -> String {
    if case.image.len() < 28 {
        return "marker: image too short".into();
    }
    if rng.chance(50) {
        case.image[16..28].copy_from_slice(&MARKER);
        "merge marker set".into()
    } else {
        let at = 16 + rng.below(12) as usize;
        case.image[at] ^= 1 << rng.below(8);
        format!("merge marker byte {at} flipped")
    }
}
