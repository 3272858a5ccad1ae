//! Cases of the kernel compatibility harness: an origin and its COW images, how the kernel
//! activates them (table lines, status, dumps), what snapfs serves from them, workloads, and
//! the comparisons between the two.

use super::*;

#[derive(Clone)]
pub struct SnapSpec {
    pub name: String,
    pub kind: StoreKind,
    pub chunk_sectors: u64,
    pub cow_bytes: u64,
    /// The kernel's optional features: snapfs opens the snapshot with them and the kernel's
    /// table line carries them (`<#features> <feature>...`).
    pub features: SnapshotFeatures,
}

pub fn snap(name: &str, kind: StoreKind, chunk_sectors: u64, cow_bytes: u64) -> SnapSpec {
    SnapSpec {
        name: name.to_string(),
        kind,
        chunk_sectors,
        cow_bytes,
        features: SnapshotFeatures::default(),
    }
}

impl SnapSpec {
    pub fn with_features(mut self, features: SnapshotFeatures) -> SnapSpec {
        self.features = features;
        self
    }
}

/// The feature arguments of a snapshot table line as the kernel takes and prints them:
/// nothing without features, else ` <#features> <feature>...` in snapfs's words.
pub fn feature_args(features: &SnapshotFeatures) -> String {
    let words = features.words();
    if words.is_empty() {
        String::new()
    } else {
        format!(" {} {}", words.len(), words.join(" "))
    }
}

/// The invalidation cases: on the small origin, `s0` (P, cs 8) on a COW too small to last and
/// `s1` (P, cs 16) beside it with room for every chunk.
pub fn invalidation_case(dir: &Path, seed: u64, name: &str) -> Case {
    Case::new(
        dir,
        seed,
        name,
        SMALL_ORIGIN_BYTES,
        vec![
            snap("s0", P, 8, TINY_COW_BYTES),
            snap("s1", P, 16, roomy_cow(SMALL_ORIGIN_BYTES, 16)),
        ],
    )
}

/// A COW size that holds an exception for every chunk of the origin, and then some.
pub fn roomy_cow(origin_bytes: u64, chunk_sectors: u64) -> u64 {
    let b = chunk_sectors * SECTOR;
    let n = origin_bytes / b;
    let per_area = chunk_sectors * 32;
    (b * (4 + n + n / per_area)).next_multiple_of(MIB)
}

pub struct Case {
    pub seed: u64,
    pub name: String,
    pub origin: PathBuf,
    pub origin_bytes: u64,
    pub snaps: Vec<SnapSpec>,
    pub cows: Vec<PathBuf>,
}

/// The guest devices of a case.
pub struct Devs {
    pub origin: String,
    pub cows: Vec<String>,
}

impl Case {
    /// Creates the origin (random content) and zeroed COW images.
    pub fn new(dir: &Path, seed: u64, name: &str, origin_bytes: u64, snaps: Vec<SnapSpec>) -> Case {
        Case::create(dir, seed, name, name, origin_bytes, snaps)
    }

    /// Case `name`'s devices in files named after `files`: the origin's content depends on the
    /// seed and the case name only.
    fn create(
        dir: &Path,
        seed: u64,
        name: &str,
        files: &str,
        origin_bytes: u64,
        snaps: Vec<SnapSpec>,
    ) -> Case {
        let origin = dir.join(format!("{files}-origin.img"));
        let data = Rng::for_stream(seed, &format!("{name}/origin")).bytes(origin_bytes);
        std::fs::write(&origin, data).unwrap();
        let cows = snaps
            .iter()
            .map(|s| {
                let p = dir.join(format!("{files}-{}.cow", s.name));
                File::create(&p).unwrap().set_len(s.cow_bytes).unwrap();
                p
            })
            .collect();
        Case {
            seed,
            name: name.to_string(),
            origin,
            origin_bytes,
            snaps,
            cows,
        }
    }

    /// Copies of the case's devices as they are now, as a case of their own.
    pub fn copy_files(&self, suffix: &str) -> Case {
        let copy = |p: &PathBuf, what: &str| {
            let to = p.with_file_name(format!("{}-{suffix}-{what}", self.name));
            std::fs::copy(p, &to).unwrap();
            to
        };
        Case {
            seed: self.seed,
            name: self.name.clone(),
            origin: copy(&self.origin, "origin.img"),
            origin_bytes: self.origin_bytes,
            snaps: self.snaps.clone(),
            cows: self
                .cows
                .iter()
                .zip(&self.snaps)
                .map(|(c, s)| copy(c, &format!("{}.cow", s.name)))
                .collect(),
        }
    }

    /// Fresh copies of what this case started from: the same origin content, zeroed COWs.
    pub fn twin(&self) -> Case {
        Case::create(
            self.origin.parent().unwrap(),
            self.seed,
            &self.name,
            &format!("{}-twin", self.name),
            self.origin_bytes,
            self.snaps.clone(),
        )
    }

    pub fn what(&self, view: &str) -> String {
        format!("seed {}, case {}, {view}", self.seed, self.name)
    }

    /// Views are checksummed per chunk of the smallest chunk size of the case (the kernel
    /// splits origin I/O there); a mismatch names the chunk.
    pub fn chunk_bytes(&self) -> u64 {
        self.snaps
            .iter()
            .map(|s| s.chunk_sectors)
            .min()
            .unwrap_or(8)
            * SECTOR
    }

    pub fn index(&self, name: &str) -> usize {
        self.snaps.iter().position(|s| s.name == name).unwrap()
    }

    pub fn config(&self, name: &str, mode: OpenMode) -> Result<SnapshotConfig, String> {
        let i = self.index(name);
        let cow = FileDevice::open(&self.cows[i], mode).map_err(|e| e.to_string())?;
        Ok(SnapshotConfig {
            name: name.to_string(),
            cow: Arc::new(cow),
            kind: self.snaps[i].kind,
            chunk_sectors: self.snaps[i].chunk_sectors,
            features: self.snaps[i].features,
        })
    }

    /// Opens the origin with the snapshots `names` through the snapfs library.
    pub fn open(&self, names: &[&str], read_only: bool) -> Result<Volume, String> {
        let mode = if read_only {
            OpenMode::ReadOnly
        } else {
            OpenMode::ReadWrite
        };
        let origin: Device =
            Arc::new(FileDevice::open(&self.origin, mode).map_err(|e| e.to_string())?);
        let configs = names
            .iter()
            .map(|n| self.config(n, mode))
            .collect::<Result<Vec<_>, _>>()?;
        let options = VolumeOptions {
            read_only,
            ..VolumeOptions::default()
        };
        Volume::open(origin, configs, options).map_err(|e| e.to_string())
    }

    pub fn dm(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    pub fn label(&self, what: &str) -> String {
        format!("{}/{what}", self.name)
    }

    pub fn sectors(&self) -> u64 {
        self.origin_bytes / SECTOR
    }

    /// The status line of the case's first snapshot as `target` with an empty store: only
    /// the header chunk and area 0 in use.
    pub fn empty_status(&self, target: &str) -> String {
        let cs = self.snaps[0].chunk_sectors;
        let cow_sectors = self.snaps[0].cow_bytes / SECTOR;
        format!(
            "0 {} {target} {}/{cow_sectors} {}",
            self.sectors(),
            2 * cs,
            2 * cs
        )
    }

    /// Compares snapfs's status line of `name` (from `statuses`) with the kernel's, labelled
    /// `<case>/<name><sfx>`.
    pub fn compare_kernel_status(
        &self,
        r: &mut Report,
        console: &Console,
        statuses: &BTreeMap<String, String>,
        (name, sfx): (&str, &str),
        word_only: bool,
    ) {
        compare_status(
            r,
            &self.what(&format!("status of {name}{sfx}")),
            statuses.get(name),
            console.status(&self.label(&format!("{name}{sfx}"))),
            word_only,
        );
    }

    pub fn attach_drives(&self, boot: &mut Boot) -> Devs {
        let origin = boot.drive(&self.origin);
        let cows = self.cows.iter().map(|c| boot.drive(c)).collect();
        Devs { origin, cows }
    }

    /// `snapshot <origin> <cow> P|PO <cs> [<#features> <feature>...]` as LVM loads it, naming
    /// the real devices.
    pub fn k_snapshot(&self, boot: &mut Boot, devs: &Devs, name: &str, chunk_word: u64) {
        let i = self.index(name);
        let s = &self.snaps[i];
        let table = format!(
            "0 {} snapshot {} {} {} {chunk_word}{}",
            self.sectors(),
            devs.origin,
            devs.cows[i],
            s.kind,
            feature_args(&s.features)
        );
        boot.create(&self.dm(name), &table);
    }

    pub fn k_origin(&self, boot: &mut Boot, devs: &Devs) {
        let table = format!("0 {} snapshot-origin {}", self.sectors(), devs.origin);
        boot.create(&self.dm("origin"), &table);
    }

    pub fn k_merge(&self, boot: &mut Boot, devs: &Devs, name: &str) {
        let i = self.index(name);
        let table = format!(
            "0 {} snapshot-merge {} {} P {}",
            self.sectors(),
            devs.origin,
            devs.cows[i],
            self.snaps[i].chunk_sectors
        );
        boot.create(&self.dm(&format!("{name}-merge")), &table);
    }

    /// Prints the status of every snapshot named and of the origin, labelled `<case>/<name><sfx>`.
    pub fn k_statuses(&self, boot: &mut Boot, names: &[&str], sfx: &str) {
        for n in names.iter().chain(["origin"].iter()) {
            boot.status(&self.dm(n), &self.label(&format!("{n}{sfx}")));
        }
    }

    pub fn k_dumps(&self, boot: &mut Boot, names: &[&str], sfx: &str) {
        for n in names.iter().chain(["origin"].iter()) {
            boot.dump_dm(
                &self.dm(n),
                &self.label(&format!("{n}{sfx}")),
                self.origin_bytes,
            );
        }
    }

    pub fn k_remove(&self, boot: &mut Boot, names: &[&str]) {
        boot.remove(&self.dm("origin"));
        for n in names {
            boot.remove(&self.dm(n));
        }
    }

    /// Reports the harness errors the guest printed for this case.
    pub fn check_errors(&self, r: &mut Report, console: &Console, expected_wfail: bool) {
        for e in console.errors(&self.name) {
            if expected_wfail && e.starts_with("WFAIL") {
                continue;
            }
            r.fail(format!("{}: guest: {e}", self.what("harness")));
        }
    }

    /// Compares the kernel's view dumped as `<case>/<view><sfx>` with `expected`.
    pub fn check_view(
        &self,
        r: &mut Report,
        console: &Console,
        view: &str,
        sfx: &str,
        exp_name: &str,
        expected: Option<&View>,
    ) {
        let what = self.what(&format!("view {view}{sfx}"));
        let Some(expected) = expected else {
            return r.fail(format!("{what}: {exp_name} has no such view"));
        };
        match console.dump(&self.label(&format!("{view}{sfx}"))) {
            Ok(data) => {
                let got = View::of(&data, expected.chunk_bytes);
                compare_views(r, &what, exp_name, expected, "kernel", &got);
            }
            Err(e) => r.fail(format!("{what}: {e}")),
        }
    }

    /// The kernel's view as a `View`, if it was dumped.
    pub fn kernel_view(&self, console: &Console, label: &str) -> Option<View> {
        console
            .dump(&self.label(label))
            .ok()
            .map(|d| View::of(&d, self.chunk_bytes()))
    }
}

/// What snapfs serves: status lines (by name) and views (by name, "origin" included).
pub struct State {
    pub status: BTreeMap<String, String>,
    pub views: BTreeMap<String, View>,
    pub exceptions: BTreeMap<String, u64>,
}

pub fn parse_status(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(": "))
        .map(|(n, rest)| (n.to_string(), rest.to_string()))
        .collect()
}

pub fn read_whole(
    vol: &Volume,
    snap: Option<&Snapshot>,
    bytes: u64,
) -> Result<Vec<u8>, VolumeError> {
    let mut buf = vec![0u8; bytes as usize];
    for (i, piece) in buf.chunks_mut(MIB as usize).enumerate() {
        let off = i as u64 * MIB;
        match snap {
            Some(s) => vol.read_snapshot(s, off, piece)?,
            None => vol.read_origin(off, piece)?,
        }
    }
    Ok(buf)
}

/// Records what snapfs serves now: every status line, the origin, and every readable snapshot.
pub fn snapfs_state(vol: &Volume, chunk_bytes: u64) -> Result<State, String> {
    let bytes = vol.size_bytes();
    let mut views = BTreeMap::new();
    let origin = read_whole(vol, None, bytes).map_err(|e| format!("reading the origin: {e}"))?;
    views.insert("origin".to_string(), View::of(&origin, chunk_bytes));
    let mut exceptions = BTreeMap::new();
    for s in vol.snapshots() {
        exceptions.insert(s.name().to_string(), s.exceptions());
        if s.is_invalid() || s.is_merging() {
            continue;
        }
        let data = read_whole(vol, Some(&s), bytes)
            .map_err(|e| format!("reading snapshot {}: {e}", s.name()))?;
        views.insert(s.name().to_string(), View::of(&data, chunk_bytes));
    }
    Ok(State {
        status: parse_status(&dm_lines(vol)),
        views,
        exceptions,
    })
}

/// Random writes through the library: `ops` writes, 70% to the origin, the rest to the
/// snapshots given.
pub fn snapfs_writes(
    vol: &Volume,
    rng: &mut Rng,
    ops: usize,
    snaps: &[Arc<Snapshot>],
) -> Result<(), String> {
    let size = vol.size_bytes();
    for _ in 0..ops {
        let len = rng.write_len().min(size);
        let off = rng.below(size - len + 1);
        let data = rng.bytes(len);
        if snaps.is_empty() || rng.below(10) < 7 {
            vol.write_origin(off, &data)
                .map_err(|e| format!("origin write {off}+{len}: {e}"))?;
        } else {
            let s = &snaps[rng.below(snaps.len() as u64) as usize];
            vol.write_snapshot(s, off, &data)
                .map_err(|e| format!("snapshot {} write {off}+{len}: {e}", s.name()))?;
        }
    }
    vol.flush_all().map_err(|e| format!("flush: {e}"))
}

pub fn records_per_area(chunk_sectors: u64) -> u64 {
    chunk_sectors * 32
}

/// Checks that a snapshot holds more exceptions than one metadata area (chunk sizes up to 16).
pub fn check_multi_area(r: &mut Report, case: &Case, name: &str, exceptions: Option<u64>) {
    let cs = case.snaps[case.index(name)].chunk_sectors;
    let e = records_per_area(cs);
    if cs <= 16 && exceptions.unwrap_or(0) <= e {
        r.fail(format!(
            "{}: workload too small: {:?} exceptions, want more than one area ({e})",
            case.what(name),
            exceptions
        ));
    }
}

/// Compares what snapfs served (`state`) with what the kernel printed and dumped, for the
/// snapshots `names` and the origin, labels `<case>/<name><sfx>`.
pub fn check_against_kernel(
    r: &mut Report,
    case: &Case,
    console: &Console,
    state: &State,
    names: &[&str],
    sfx: &str,
) {
    for n in names.iter().chain(["origin"].iter()) {
        case.compare_kernel_status(r, console, &state.status, (n, sfx), false);
        case.check_view(r, console, n, sfx, "snapfs", state.views.get(*n));
    }
}

/// The pattern the guest's writes copy from.
pub fn boot_pattern(seed: u64) -> Vec<u8> {
    Rng::for_stream(seed, "pattern").bytes(PATTERN_BYTES)
}

/// The harness must notice a wrong view: the kernel's snapshot `name` compared with the
/// origin must differ (every case writes to the origin after the snapshot was taken).
pub fn canary(
    r: &mut Report,
    case: &Case,
    console: &Console,
    origin: &View,
    name: &str,
    sfx: &str,
) {
    let mut scratch = Report::default();
    let quiet = true;
    if let Ok(data) = console.dump(&case.label(&format!("{name}{sfx}"))) {
        let got = View::of(&data, origin.chunk_bytes);
        compare_views_into(
            &mut scratch,
            quiet,
            "canary",
            "origin",
            origin,
            "kernel",
            &got,
        );
        if scratch.failures.is_empty() {
            r.fail(format!(
                "{}: harness canary: the kernel's {name} equals the origin, so the comparison \
                 cannot tell a snapshot from its origin",
                case.what(name)
            ));
        }
    }
}

/// snapfs opens the COWs the kernel left (read-only) and must print the kernel's status lines
/// (labels `<case>/<name><sfx>`) and read its views.
pub fn snapfs_reads_kernel(
    r: &mut Report,
    case: &Case,
    console: &Console,
    names: &[&str],
    sfx: &str,
) {
    match case
        .open(names, true)
        .and_then(|v| snapfs_state(&v, case.chunk_bytes()))
    {
        Ok(state) => check_against_kernel(r, case, console, &state, names, sfx),
        Err(e) => r.fail(format!(
            "{}: snapfs cannot open what the kernel wrote: {e}",
            case.what(&format!("open{sfx}"))
        )),
    }
}

/// snapfs reopened read-only must print what it printed live.
pub fn check_reopen(r: &mut Report, case: &Case, live: &State, names: &[&str]) {
    match case.open(names, true) {
        Ok(vol) => {
            let again = parse_status(&dm_lines(&vol));
            for (n, line) in &live.status {
                compare_status(
                    r,
                    &case.what(&format!("snapfs status of {n} live vs reopened")),
                    Some(line),
                    again.get(n).cloned(),
                    false,
                );
            }
        }
        Err(e) => r.fail(format!(
            "{}: snapfs cannot reopen: {e}",
            case.what("reopen")
        )),
    }
}

/// The kernel's workload, known to the host: writes of pattern bytes, sector-aligned.
#[derive(Clone)]
pub struct KWrite {
    pub target: String,
    pub src: u64,
    pub dst: u64,
    pub len: u64,
}

pub fn kernel_writes(rng: &mut Rng, origin_bytes: u64, targets: &[&str], n: usize) -> Vec<KWrite> {
    (0..n)
        .map(|_| {
            let sectors = match rng.below(20) {
                0..=9 => 1 + rng.below(8),
                10..=16 => 1 + rng.below(128),
                _ => 1 + rng.below(1024),
            };
            let len = sectors * SECTOR;
            let target = if rng.below(10) < 7 {
                "origin"
            } else {
                targets[rng.below(targets.len() as u64) as usize]
            };
            KWrite {
                target: target.to_string(),
                src: rng.below((PATTERN_BYTES - len) / SECTOR + 1) * SECTOR,
                dst: rng.below((origin_bytes - len) / SECTOR + 1) * SECTOR,
                len,
            }
        })
        .collect()
}

/// The expected content of every view after `writes` to views that read as `views` before.
pub fn model(
    mut views: BTreeMap<String, Vec<u8>>,
    pattern: &[u8],
    writes: &[KWrite],
) -> BTreeMap<String, Vec<u8>> {
    for w in writes {
        let v = views.get_mut(&w.target).unwrap();
        v[w.dst as usize..(w.dst + w.len) as usize]
            .copy_from_slice(&pattern[w.src as usize..(w.src + w.len) as usize]);
    }
    views
}

/// How much of a COW two writers must agree on byte for byte.
#[derive(Clone, Copy, PartialEq)]
pub enum Scope {
    Whole,
    /// The header chunk only.
    Header,
    /// Everything but the header chunk (its spare bytes hold snapfs's merge marker).
    NoHeader,
}

/// Compares the devices the kernel left (`kernel`) with the ones snapfs left (`snapfs`) from
/// the same start: the origin byte for byte, each COW per chunk within `scope(name)`; a
/// difference names the chunk and what it holds (header, area N, data).
pub fn compare_devices(
    r: &mut Report,
    what: &str,
    kernel: &Case,
    snapfs: &Case,
    scope: impl Fn(&str) -> Scope,
) {
    let read = |p: &Path| std::fs::read(p).unwrap();
    compare_views(
        r,
        &format!("{what}origin device"),
        "kernel",
        &View::of(&read(&kernel.origin), kernel.chunk_bytes()),
        "snapfs",
        &View::of(&read(&snapfs.origin), kernel.chunk_bytes()),
    );
    for (i, s) in kernel.snaps.iter().enumerate() {
        let b = s.chunk_sectors * SECTOR;
        let (k, f) = (read(&kernel.cows[i]), read(&snapfs.cows[i]));
        let (kv, fv) = (View::of(&k, b), View::of(&f, b));
        let stride = records_per_area(s.chunk_sectors) + 1;
        let scope = scope(&s.name);
        let compared = |c: u64| match scope {
            Scope::Whole => true,
            Scope::Header => c == 0,
            Scope::NoHeader => c != 0,
        };
        let mut bad: Vec<String> = Vec::new();
        for c in 0..kv.sums.len().min(fv.sums.len()) as u64 {
            if kv.sums[c as usize] == fv.sums[c as usize] || !compared(c) {
                continue;
            }
            let kind = match c {
                0 => "header".to_string(),
                c if c % stride == 1 => format!("area {}", c / stride),
                _ => "data".to_string(),
            };
            bad.push(format!(
                "COW chunk {c} ({kind}): kernel {:016x} snapfs {:016x}",
                kv.sums[c as usize], fv.sums[c as usize]
            ));
        }
        if k.len() != f.len() || !bad.is_empty() {
            // Keep the kernel's COW as it is now (what follows may change it).
            let keep = kernel
                .origin
                .with_file_name(format!("{}-kernel-{}.cow", kernel.name, s.name));
            std::fs::write(&keep, &k).unwrap();
            let scope = match scope {
                Scope::Whole => "whole device",
                Scope::Header => "header",
                Scope::NoHeader => "all but the header",
            };
            r.fail(format!(
                "{}: {} COW chunks of {} sectors differ ({scope}; the kernel's is kept as {}); {}",
                kernel.what(&format!("{what}COW of {}", s.name)),
                bad.len(),
                s.chunk_sectors,
                keep.display(),
                bad.iter().take(6).cloned().collect::<Vec<_>>().join("; ")
            ));
        }
    }
}
