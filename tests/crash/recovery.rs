//! Recovery checks: after a crash image is reopened, every acknowledged write is there, every
//! sector holds a value it may hold, and the volume works on.

use super::*;

// ---------------------------------------------------------------------------------------------
// Recovery checks
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub(super) struct Stats {
    pub(super) points: u64,
    /// Recovered sectors that hold an older candidate than the last value written.
    pub(super) older: u64,
}

pub(super) fn read_tags(
    vol: &Volume,
    view: usize,
    names: &[String],
    ctx: &str,
) -> Vec<Option<u64>> {
    let mut buf = vec![0u8; (ORIGIN_SECTORS * SECTOR) as usize];
    let got = if view == 0 {
        vol.read_origin(0, &mut buf)
    } else {
        vol.read_snapshot(&vol.snapshot(&names[view - 1]).unwrap(), 0, &mut buf)
    };
    got.unwrap_or_else(|e| panic!("{ctx}: read of view {view} failed: {e}"));
    buf.chunks(SECTOR as usize)
        .enumerate()
        .map(|(s, sec)| sector_tag(sec, s as u64))
        .collect()
}

pub(super) fn open_recovered(
    w: &Workload,
    origin: &Arc<MemDevice>,
    cows: &[Arc<MemDevice>],
    ctx: &str,
) -> Volume {
    let cows: Vec<snapfs::device::Device> = cows.iter().map(|c| c.clone() as _).collect();
    let vol = Volume::open(origin.clone(), configs(w, &cows), options(w))
        .unwrap_or_else(|e| panic!("{ctx}: the recovered volume does not open: {e}"));
    for (name, word) in status_words(&vol, ctx) {
        assert_ne!(
            word, "Invalid",
            "{ctx}: snapshot {name} is invalid after recovery"
        );
    }
    vol
}

/// Reopens from the crash images and checks every sector against its candidates; then uses
/// the recovered volume a little with an exact model and reopens it once more.
pub(super) fn check_recovery(w: &Workload, out: &Outcome, point: &str, stats: &mut Stats) {
    let ctx = format!(
        "seed {} {point} (replay: SNAPFS_CRASH_SEED={}), {} ops done, opened {}",
        w.seed, w.seed, out.completed, out.opened
    );
    let images = out
        .world
        .crash_images()
        .unwrap_or_else(|| panic!("{ctx}: no crash images"));
    assert_eq!(images.len(), 1 + w.specs.len(), "{ctx}: images");
    let mems: Vec<Arc<MemDevice>> = images
        .into_iter()
        .enumerate()
        .map(|(i, img)| Arc::new(MemDevice::from_bytes(&format!("dev{i}"), img, 512)))
        .collect();
    let (origin, cows) = (&mems[0], &mems[1..]);
    let names: Vec<String> = w.specs.iter().map(|s| s.name.clone()).collect();
    let vol = open_recovered(w, origin, cows, &ctx);
    let mut exact: Vec<Vec<u64>> = Vec::new();
    for (v, view) in out.durability.views.iter().enumerate() {
        let tags = read_tags(&vol, v, &names, &ctx);
        let mut recovered = Vec::with_capacity(tags.len());
        for (s, tag) in tags.into_iter().enumerate() {
            let cands = &view.cands[s];
            match tag {
                Some(t) if cands.contains(&t) => {
                    if t != *cands.last().unwrap() {
                        stats.older += 1;
                    }
                    recovered.push(t);
                }
                _ => panic!(
                    "{ctx}: {} sector {s} holds {} after recovery; it may only hold one of \
                     {cands:?} (tags: 0 zero, 1 initial, 2+n written by op n)",
                    view.name,
                    match tag {
                        Some(t) => format!("tag {t}"),
                        None => "data nobody wrote there".to_string(),
                    }
                ),
            }
        }
        exact.push(recovered);
    }
    stats.points += 1;
    continue_after_recovery(w, vol, origin, cows, exact, &ctx);
}

/// A few more operations on the recovered volume with an exact model, a flush, a reopen.
pub(super) fn continue_after_recovery(
    w: &Workload,
    vol: Volume,
    origin: &Arc<MemDevice>,
    cows: &[Arc<MemDevice>],
    mut exact: Vec<Vec<u64>>,
    ctx: &str,
) {
    let ctx = format!("{ctx}, after recovery");
    let names: Vec<String> = w.specs.iter().map(|s| s.name.clone()).collect();
    let mut rng = Rng::new(w.seed ^ exact[0].iter().sum::<u64>());
    for j in 0..20u64 {
        let tag = (1 << 32) + j;
        let (first, count) = sector_range(&mut rng);
        let view = rng.below(exact.len() as u64) as usize;
        let zero = rng.chance(15);
        let data = sectors_data(if zero { ZERO } else { tag }, first, count);
        let got = match view {
            0 => vol.write_origin(first * SECTOR, &data),
            v => vol.write_snapshot(&vol.snapshot(&names[v - 1]).unwrap(), first * SECTOR, &data),
        };
        got.unwrap_or_else(|e| panic!("{ctx}: write {j} to view {view} failed: {e}"));
        for s in first..first + count {
            exact[view][s as usize] = if zero { ZERO } else { tag };
        }
    }
    let check = |vol: &Volume, when: &str| {
        for (v, want) in exact.iter().enumerate() {
            let got = read_tags(vol, v, &names, &ctx);
            for (s, (g, w)) in got.iter().zip(want).enumerate() {
                assert_eq!(*g, Some(*w), "{ctx}: {when}: view {v} sector {s}");
            }
        }
    };
    check(&vol, "live");
    vol.flush_all()
        .unwrap_or_else(|e| panic!("{ctx}: flush_all failed: {e}"));
    drop(vol);
    let vol = open_recovered(w, origin, cows, &ctx);
    check(&vol, "reopened");
}
