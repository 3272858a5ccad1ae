//! A snapshot's life as its COW fills: usage warnings, notify events and the autoextension of
//! file COWs (what LVM does with dmeventd and `snapshot_autoextend_threshold/percent`).
//!
//! Nothing here knows about FUSE. The daemon runs [`Monitor::check`] from a thread of its own
//! once a second, never from the I/O path; what a check finds is a list of [`Event`]s, which
//! the daemon logs and hands to a [`Notifier`] (one more thread, which runs `notify=CMD` with a
//! timeout, one event after the other, in order).
//!
//! - Usage percent is `allocated / total` from the kernel's status figures (docs/status.md);
//!   an Invalid snapshot counts as 100 %.
//! - A level is crossed when `allocated * 100 >= level * total`. Every level crossed since the
//!   last check warns, lowest first, once; a level re-arms when usage falls below it again
//!   (after the COW grew).
//! - Autoextension grows a file COW by PERCENT of its size once usage reaches THRESHOLD, never
//!   past MAX, and never so far that the host file system would keep less than
//!   [`host_reserve`] free. Block devices are not grown (said once in the log).

mod notify;

pub use notify::{Notifier, kill_running_notify, run_notify};

use crate::device::Device;
use crate::volume::{Snapshot, Volume};
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

/// The levels warned at without a `warn=` option, in percent.
pub const DEFAULT_WARN_LEVELS: [u8; 4] = [80, 85, 90, 95];
/// How often the daemon's monitor thread checks.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// A notify command still running after this is killed.
pub const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);

/// Usage warning levels, ascending and distinct, each 1..=100; empty for `warn=none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WarnLevels(Vec<u8>);

impl Default for WarnLevels {
    fn default() -> Self {
        WarnLevels(DEFAULT_WARN_LEVELS.to_vec())
    }
}

impl WarnLevels {
    /// `none`, or percent integers joined by `:` in ascending order (`50:75:90`).
    pub fn parse(text: &str) -> Result<WarnLevels, String> {
        if text == "none" {
            return Ok(WarnLevels(Vec::new()));
        }
        let bad = |why: &str| {
            format!(
                "option \"warn={text}\": {why} (expected levels in percent, ascending, like warn=80:90:95, or warn=none)"
            )
        };
        let mut levels: Vec<u8> = Vec::new();
        for word in text.split(':') {
            if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(&format!("{word:?} is not a percent")));
            }
            let level = match word.parse::<u8>() {
                Ok(l @ 1..=100) => l,
                _ => return Err(bad(&format!("{word} is not between 1 and 100"))),
            };
            if levels.last().is_some_and(|&last| last >= level) {
                return Err(bad("levels must be ascending and distinct"));
            }
            levels.push(level);
        }
        Ok(WarnLevels(levels))
    }

    pub fn levels(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for WarnLevels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let words: Vec<String> = self.0.iter().map(|l| l.to_string()).collect();
        f.write_str(&words.join(":"))
    }
}

/// `autoextend=THRESHOLD:PERCENT[:MAX]`, as lvm.conf's `snapshot_autoextend_threshold` and
/// `snapshot_autoextend_percent` (MAX: a size, `10G`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Autoextend {
    /// Usage percent (1..=99) at which the COW grows.
    pub threshold: u8,
    /// Growth in percent of the COW's size (1..=1000).
    pub percent: u32,
    /// The COW never grows past this many bytes.
    pub max_bytes: Option<u64>,
}

impl Autoextend {
    /// Parses the mount option's value (`70:20:10G`); errors name the option.
    pub fn parse(text: &str) -> Result<Autoextend, String> {
        Autoextend::parse_value(text).map_err(|why| {
            format!(
                "option \"autoextend={text}\": {why} (expected THRESHOLD:PERCENT[:MAX], like autoextend=70:20:10G)"
            )
        })
    }

    /// The one parser of `THRESHOLD:PERCENT[:MAX]`, for the mount option and the snapshot
    /// feature word alike; the error is the reason only. `/` separates the fields as well as
    /// `:` (the form a `-o snapshot=` spec can carry), wherever the value is given. MAX follows
    /// the rule of every size snapfs takes: a positive multiple of 512 bytes.
    pub fn parse_value(text: &str) -> Result<Autoextend, String> {
        let fields: Vec<&str> = text.split([':', '/']).collect();
        let (t, p, max) = match fields.as_slice() {
            [t, p] => (*t, *p, None),
            [t, p, m] => (*t, *p, Some(*m)),
            _ => return Err("wrong number of fields".to_string()),
        };
        let number = |w: &str, what: &str, lo: u32, hi: u32| match w.parse::<u32>() {
            Ok(n) if (lo..=hi).contains(&n) && w.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
            _ => Err(format!("{what} {w:?} is not an integer from {lo} to {hi}")),
        };
        let threshold = number(t, "THRESHOLD", 1, 99)? as u8;
        let percent = number(p, "PERCENT", 1, 1000)?;
        let max_bytes = max.map(crate::units::parse_bytes).transpose()?;
        if let Some(m) = max_bytes
            && !m.is_multiple_of(512)
        {
            return Err(format!("MAX {m} is not a multiple of 512 bytes"));
        }
        Ok(Autoextend {
            threshold,
            percent,
            max_bytes,
        })
    }
}

/// `THRESHOLD:PERCENT[:MAX]`, MAX with the largest suffix that divides it exactly (`10G`), so
/// that [`Autoextend::parse_value`] reads back exactly the same.
impl fmt::Display for Autoextend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.threshold, self.percent)?;
        if let Some(max) = self.max_bytes {
            let (shift, suffix) = [(40, "T"), (30, "G"), (20, "M"), (10, "K"), (0, "")]
                .into_iter()
                .find(|(shift, _)| max % (1u64 << shift) == 0)
                .unwrap_or((0, ""));
            write!(f, ":{}{suffix}", max >> shift)?;
        }
        Ok(())
    }
}

/// What the free space of the host file system must keep when a COW file grows: 5 % of the
/// file system or 1 GiB, whichever is smaller.
pub fn host_reserve(fs_total: u64) -> u64 {
    (fs_total / 20).min(1 << 30)
}

/// What happened to a snapshot, for the log and `notify=CMD`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// Usage crossed a warning level (the event's percent is the level).
    Warning,
    /// The snapshot became Invalid (percent 100).
    Invalid,
    /// A `PO` snapshot overflowed (percent: its usage).
    Overflow,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Warning => "warning",
            EventKind::Invalid => "invalid",
            EventKind::Overflow => "overflow",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub snapshot: String,
    pub percent: u8,
    pub kind: EventKind,
}

/// What the monitor does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub levels: WarnLevels,
    pub autoextend: Option<Autoextend>,
}

/// What the monitor remembers of one snapshot between checks.
#[derive(Default)]
struct Watch {
    /// How many of the levels are crossed.
    crossed: usize,
    invalid: bool,
    overflow: bool,
    /// Said once: the COW is a block device, or MAX is reached, or the host is full.
    said: Option<String>,
}

pub struct Monitor {
    policy: Policy,
    watches: Mutex<HashMap<String, Watch>>,
}

/// Usage in percent (rounded down); an Invalid snapshot is 100.
pub fn usage_percent(snap: &Snapshot) -> u8 {
    if snap.is_invalid() {
        return 100;
    }
    let u = snap.usage();
    if u.total_sectors == 0 {
        return 100;
    }
    (u.allocated_sectors.min(u.total_sectors) * 100 / u.total_sectors) as u8
}

/// Whether usage reached `level` percent (exactly: `allocated * 100 >= level * total`).
fn reached(snap: &Snapshot, level: u8) -> bool {
    if snap.is_invalid() {
        return true;
    }
    let u = snap.usage();
    u128::from(u.allocated_sectors) * 100 >= u128::from(level) * u128::from(u.total_sectors)
}

impl Monitor {
    pub fn new(policy: Policy) -> Monitor {
        Monitor {
            policy,
            watches: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Looks at every snapshot once: grows COWs that reached the autoextend threshold, then
    /// returns the events since the last check, in order (each snapshot's warnings lowest
    /// level first, then its invalid or overflow event). Warnings are logged here.
    pub fn check(&self, volume: &Volume) -> Vec<Event> {
        let mut events = Vec::new();
        let mut watches = self.watches.lock().unwrap_or_else(|e| e.into_inner());
        let snapshots = volume.snapshots();
        watches.retain(|name, _| snapshots.iter().any(|s| s.name() == name));
        for snap in snapshots {
            if snap.is_merging() {
                continue;
            }
            let watch = watches.entry(snap.name().to_string()).or_default();
            // The snapshot's own autoextend, else the mount's.
            if let Some(ax) = snap.features().autoextend.or(self.policy.autoextend)
                && !volume.is_read_only()
                && !snap.is_invalid()
                && reached(&snap, ax.threshold)
            {
                autoextend(&snap, ax, watch);
            }
            let levels = self.policy.levels.levels();
            let n = levels.iter().take_while(|&&l| reached(&snap, l)).count();
            let percent = usage_percent(&snap);
            for &level in &levels[watch.crossed.min(n)..n] {
                let u = snap.usage();
                log::warn!(
                    "Snapshot {} is {percent}% full: warning level {level}% crossed ({}/{} sectors)",
                    snap.name(),
                    u.allocated_sectors,
                    u.total_sectors
                );
                events.push(Event {
                    snapshot: snap.name().to_string(),
                    percent: level,
                    kind: EventKind::Warning,
                });
            }
            if n < watch.crossed {
                log::info!(
                    "Snapshot {} is {percent}% full: warning levels above it are armed again",
                    snap.name()
                );
            }
            watch.crossed = n;
            snap.set_warning_level(n.checked_sub(1).map_or(0, |i| levels[i]));
            if snap.is_invalid() && !watch.invalid {
                watch.invalid = true;
                events.push(Event {
                    snapshot: snap.name().to_string(),
                    percent: 100,
                    kind: EventKind::Invalid,
                });
            }
            if snap.is_overflowed() && !watch.overflow {
                watch.overflow = true;
                events.push(Event {
                    snapshot: snap.name().to_string(),
                    percent,
                    kind: EventKind::Overflow,
                });
            }
        }
        events
    }
}

/// Says `text` at warn level unless it was the last thing said for this snapshot.
fn say_once(watch: &mut Watch, text: String) {
    if watch.said.as_deref() != Some(text.as_str()) {
        log::warn!("{text}");
        watch.said = Some(text);
    }
}

/// The size a COW of `size` bytes grows to: `percent` more, rounded up to 1 MiB, capped by
/// MAX and by the host's free space less its reserve. `None` when it cannot grow at all.
pub fn grown_size(
    size: u64,
    ax: Autoextend,
    host: Option<(u64, u64)>,
    allocated: Option<u64>,
) -> Result<u64, String> {
    const ROUND: u64 = 1 << 20;
    let step = (size.saturating_mul(u64::from(ax.percent)) / 100).max(ROUND);
    let mut target = size.saturating_add(step).div_ceil(ROUND) * ROUND;
    if let Some(max) = ax.max_bytes {
        if size >= max {
            return Err(format!("it reached the autoextend maximum of {max} bytes"));
        }
        target = target.min(max);
    }
    if let Some((available, total)) = host {
        // Space the COW file already holds is not needed again (a sparse file holds less).
        let held = allocated.unwrap_or(size).min(size);
        let usable = available.saturating_sub(host_reserve(total));
        let fits = held.saturating_add(usable);
        if fits <= size {
            return Err(format!(
                "its file system has {available} bytes free, and {} are kept in reserve",
                host_reserve(total)
            ));
        }
        target = target.min(fits);
    }
    Ok(target)
}

fn autoextend(snap: &Snapshot, ax: Autoextend, watch: &mut Watch) {
    let cow: Device = snap.cow_device();
    let name = snap.name();
    if !cow.can_grow() {
        say_once(
            watch,
            format!(
                "Snapshot {name}: COW {} is a block device, which snapfs does not grow \
                 (extend it, e.g. with lvextend from notify=CMD)",
                cow.name()
            ),
        );
        return;
    }
    let size = cow.size_bytes();
    let target = match grown_size(size, ax, cow.host_space(), cow.allocated_bytes()) {
        Ok(t) => t,
        Err(why) => {
            say_once(
                watch,
                format!("Snapshot {name}: COW {} cannot grow: {why}", cow.name()),
            );
            return;
        }
    };
    match cow.grow(target) {
        Ok(()) => {
            watch.said = None;
            log::warn!(
                "Snapshot {name}: COW {} extended from {size} to {} bytes (autoextend {}%:{}%)",
                cow.name(),
                cow.size_bytes(),
                ax.threshold,
                ax.percent
            );
        }
        Err(e) => say_once(
            watch,
            format!(
                "Snapshot {name}: extending COW {} to {target} bytes failed: {e}; the snapshot \
                 runs on until it is full",
                cow.name()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{BlockDevice, MemDevice};
    use crate::store::StoreKind;
    use crate::volume::{SnapshotConfig, VolumeOptions};
    use std::sync::Arc;

    const ORIGIN: u64 = 4 << 20;
    const CHUNK: u64 = 4096;

    /// An origin of 4 MiB and a persistent snapshot `s` on a COW of `cow_bytes`.
    fn volume(cow_bytes: u64) -> (Volume, Arc<MemDevice>) {
        volume_of(cow_bytes, StoreKind::Persistent { overflow: false })
    }

    fn volume_of(cow_bytes: u64, kind: StoreKind) -> (Volume, Arc<MemDevice>) {
        volume_with(cow_bytes, kind, Default::default())
    }

    fn volume_with(
        cow_bytes: u64,
        kind: StoreKind,
        features: crate::features::SnapshotFeatures,
    ) -> (Volume, Arc<MemDevice>) {
        let origin = Arc::new(MemDevice::new("origin", ORIGIN));
        let cow = Arc::new(MemDevice::new("cow", cow_bytes));
        let config = SnapshotConfig {
            name: "s".to_string(),
            cow: cow.clone(),
            kind,
            chunk_sectors: CHUNK / 512,
            features,
        };
        let v = Volume::open(origin, vec![config], VolumeOptions::default()).unwrap();
        (v, cow)
    }

    /// Writes origin chunks `[from, to)`, each copied out once.
    fn write_chunks(v: &Volume, from: u64, to: u64) {
        for c in from..to {
            v.write_origin(c * CHUNK, &[c as u8 + 1; CHUNK as usize])
                .unwrap();
        }
    }

    fn warnings(events: &[Event]) -> Vec<u8> {
        events
            .iter()
            .filter(|e| e.kind == EventKind::Warning)
            .map(|e| e.percent)
            .collect()
    }

    /// Chunks to write so that usage is at least `pct` percent of a COW of `cow_chunks`.
    fn chunks_for(v: &Volume, pct: u64) -> u64 {
        let u = v.snapshot("s").unwrap().usage();
        let want = u.total_sectors * pct / 100;
        (want.saturating_sub(u.allocated_sectors)).div_ceil(CHUNK / 512)
    }

    #[test]
    fn levels_parse_and_refuse() {
        assert_eq!(
            WarnLevels::parse("50:75:90").unwrap().levels(),
            [50, 75, 90]
        );
        assert!(WarnLevels::parse("none").unwrap().levels().is_empty());
        assert_eq!(WarnLevels::default().to_string(), "80:85:90:95");
        for bad in ["", "80:", "0", "101", "90:80", "80:80", "x", "-5", "85%"] {
            let e = WarnLevels::parse(bad).unwrap_err();
            assert!(
                e.starts_with("option \"warn=") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn autoextend_parses_and_refuses() {
        let a = Autoextend::parse("70:20:10G").unwrap();
        assert_eq!(
            (a.threshold, a.percent, a.max_bytes),
            (70, 20, Some(10 << 30))
        );
        assert_eq!(Autoextend::parse("70:20").unwrap().max_bytes, None);
        for bad in [
            "70",
            "0:20",
            "100:20",
            "70:0",
            "70:20:",
            "70:20:10Q",
            "70:20:1G:x",
            "a:b",
        ] {
            let e = Autoextend::parse(bad).unwrap_err();
            assert!(
                e.starts_with("option \"autoextend=") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn a_sharp_rise_warns_every_level_once_in_order() {
        let (v, _) = volume(1 << 20);
        let m = Monitor::new(Policy::default());
        assert!(m.check(&v).is_empty());
        write_chunks(&v, 0, chunks_for(&v, 70));
        assert!(m.check(&v).is_empty(), "70 % is below every level");
        let n = chunks_for(&v, 96);
        let at = v.snapshot("s").unwrap().usage().allocated_sectors / 8;
        write_chunks(&v, at, at + n);
        let s = v.snapshot("s").unwrap();
        assert!(
            usage_percent(&s) >= 96 && !s.is_invalid(),
            "{}",
            s.status_word()
        );
        assert_eq!(warnings(&m.check(&v)), [80, 85, 90, 95]);
        assert_eq!(s.warning_level(), 95);
        assert!(m.check(&v).is_empty(), "each level warns once");
    }

    #[test]
    fn invalid_counts_as_full_and_comes_after_the_warnings() {
        let (v, _) = volume(512 << 10);
        let m = Monitor::new(Policy {
            levels: WarnLevels::parse("50:90").unwrap(),
            autoextend: None,
        });
        write_chunks(&v, 0, chunks_for(&v, 60));
        assert_eq!(warnings(&m.check(&v)), [50]);
        write_chunks(&v, 200, 400); // far more than the COW holds
        let s = v.snapshot("s").unwrap();
        assert!(s.is_invalid());
        assert_eq!(usage_percent(&s), 100);
        let events = m.check(&v);
        let kinds: Vec<(EventKind, u8)> = events.iter().map(|e| (e.kind, e.percent)).collect();
        assert_eq!(kinds, [(EventKind::Warning, 90), (EventKind::Invalid, 100)]);
        assert!(m.check(&v).is_empty(), "invalid is told once");
    }

    #[test]
    fn no_levels_no_warnings_but_invalid_is_still_told() {
        let (v, _) = volume(256 << 10);
        let m = Monitor::new(Policy {
            levels: WarnLevels::parse("none").unwrap(),
            autoextend: None,
        });
        write_chunks(&v, 0, 200);
        let events = m.check(&v);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, EventKind::Invalid);
        assert_eq!(v.snapshot("s").unwrap().warning_level(), 0);
    }

    #[test]
    fn levels_rearm_when_the_cow_grows() {
        let (v, cow) = volume(1 << 20);
        let m = Monitor::new(Policy::default());
        write_chunks(&v, 0, chunks_for(&v, 86));
        assert_eq!(warnings(&m.check(&v)), [80, 85]);
        cow.resize(4 << 20);
        assert!(m.check(&v).is_empty());
        let s = v.snapshot("s").unwrap();
        assert_eq!(s.warning_level(), 0, "{}", s.status_word());
        let at = s.usage().allocated_sectors / 8;
        write_chunks(&v, at, at + chunks_for(&v, 81));
        assert_eq!(warnings(&m.check(&v)), [80], "re-armed");
    }

    #[test]
    fn autoextend_keeps_a_filling_snapshot_valid_and_its_data() {
        let (v, cow) = volume(256 << 10);
        let m = Monitor::new(Policy {
            levels: WarnLevels::default(),
            autoextend: Some(Autoextend::parse("50:100:3M").unwrap()),
        });
        let chunks = ORIGIN / CHUNK; // 1024 chunks: 4 MiB of copies, more than MAX
        let mut written = 0;
        while written < 600 {
            write_chunks(&v, written, written + 16);
            written += 16;
            m.check(&v);
        }
        let s = v.snapshot("s").unwrap();
        assert!(!s.is_invalid(), "{}", s.status_word());
        assert_eq!(cow.size_bytes(), 3 << 20, "grown in steps up to MAX");
        // Every chunk the snapshot saved reads back as the origin was (zeroes).
        let mut buf = vec![1u8; (written * CHUNK) as usize];
        v.read_snapshot(&s, 0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        // Past MAX the snapshot fills and becomes invalid, told after the warnings.
        write_chunks(&v, written, chunks);
        assert!(s.is_invalid());
        let events = m.check(&v);
        assert_eq!(events.last().unwrap().kind, EventKind::Invalid);
    }

    #[test]
    fn autoextend_grows_a_transient_cow_too() {
        let (v, cow) = volume_of(256 << 10, StoreKind::Transient);
        let m = Monitor::new(Policy {
            levels: WarnLevels::parse("none").unwrap(),
            autoextend: Some(Autoextend::parse("60:50").unwrap()),
        });
        for step in 0..32 {
            write_chunks(&v, step * 16, step * 16 + 16);
            assert!(m.check(&v).is_empty());
        }
        let s = v.snapshot("s").unwrap();
        assert!(!s.is_invalid(), "{}", s.status_word());
        assert!(cow.size_bytes() >= 512 * CHUNK, "{}", cow.size_bytes());
        let mut buf = vec![1u8; (512 * CHUNK) as usize];
        v.read_snapshot(&s, 0, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
    }

    #[test]
    fn a_snapshots_own_autoextend_wins_over_the_mounts() {
        let features =
            crate::features::SnapshotFeatures::parse_field("autoextend=50:100:2M").unwrap();
        let quiet = || WarnLevels::parse("none").unwrap();
        // The mount has none: the snapshot's own grows it, up to its MAX.
        let (v, cow) = volume_with(1 << 20, StoreKind::Persistent { overflow: false }, features);
        let m = Monitor::new(Policy {
            levels: quiet(),
            autoextend: None,
        });
        write_chunks(&v, 0, chunks_for(&v, 60));
        m.check(&v);
        assert_eq!(cow.size_bytes(), 2 << 20);
        // The mount's (no MAX, 300 %) is not used for a snapshot that has its own (MAX 2M).
        let (v, cow) = volume_with(1 << 20, StoreKind::Persistent { overflow: false }, features);
        let m = Monitor::new(Policy {
            levels: quiet(),
            autoextend: Some(Autoextend::parse("10:300").unwrap()),
        });
        let first = chunks_for(&v, 40);
        write_chunks(&v, 0, first);
        m.check(&v);
        assert_eq!(cow.size_bytes(), 1 << 20, "below its own threshold of 50 %");
        write_chunks(&v, first, first + chunks_for(&v, 60));
        m.check(&v);
        assert_eq!(cow.size_bytes(), 2 << 20);
        // Without its own, the mount's applies.
        let (v, cow) = volume_of(1 << 20, StoreKind::Persistent { overflow: false });
        write_chunks(&v, 0, chunks_for(&v, 40));
        m.check(&v);
        assert_eq!(cow.size_bytes(), 4 << 20);
    }

    #[test]
    fn autoextend_displays_what_parses_back() {
        for text in [
            "70:20",
            "70:20:10G",
            "1:1000:1536K",
            "99:1:6320640",
            "5:5:3T",
        ] {
            let a = Autoextend::parse_value(text).unwrap();
            assert_eq!(a.to_string(), text);
        }
        assert_eq!(
            Autoextend::parse("50:50:10240M").unwrap().to_string(),
            "50:50:10G"
        );
    }

    #[test]
    fn an_overflow_is_told_once() {
        let (v, _) = volume_of(256 << 10, StoreKind::Persistent { overflow: true });
        let m = Monitor::new(Policy::default());
        let s = v.snapshot("s").unwrap();
        let mut c = 0;
        while v
            .write_snapshot(&s, c * CHUNK, &[3; CHUNK as usize])
            .is_ok()
        {
            c += 1;
        }
        assert!(s.is_overflowed() && !s.is_invalid());
        let events = m.check(&v);
        let last = events.last().unwrap();
        assert_eq!(last.kind, EventKind::Overflow);
        assert_eq!(warnings(&events), [80, 85, 90, 95]);
        assert!(m.check(&v).is_empty());
    }

    #[test]
    fn growth_respects_max_and_the_host_reserve() {
        let ax = Autoextend::parse("80:20:10M").unwrap();
        assert_eq!(grown_size(4 << 20, ax, None, None), Ok(5 << 20)); // 4.8 MiB, rounded up to MiB
        assert_eq!(grown_size(9 << 20, ax, None, None), Ok(10 << 20));
        assert!(grown_size(10 << 20, ax, None, None).is_err());
        // 100 MiB fs: the reserve is 5 MiB; 6 MiB free leaves 1 MiB to grow.
        let host = Some((6 << 20, 100 << 20));
        assert_eq!(grown_size(4 << 20, ax, host, Some(4 << 20)), Ok(5 << 20));
        assert!(grown_size(4 << 20, ax, Some((5 << 20, 100 << 20)), Some(4 << 20)).is_err());
        assert_eq!(host_reserve(1 << 40), 1 << 30);
    }
}
