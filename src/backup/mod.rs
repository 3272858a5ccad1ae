//! Incremental backup of a volume into a plain image (`snapfs backup`): the pieces that do not
//! talk to a mount. [`marker`] is what the image carries, [`plan`] decides what a run copies,
//! [`copy`] copies byte ranges from a snapshot file into the image. The command itself is
//! `src/cli/backup.rs`; docs/backup.md tells the whole story.

pub mod copy;
pub mod marker;
pub mod plan;

use std::time::{SystemTime, UNIX_EPOCH};

/// The name of a new backup snapshot: `backup-YYYYMMDDTHHMMSSZ` (UTC), with `-2`, `-3`, ...
/// when `taken` says a name is in use. Valid under the name rule (`crate::names`).
pub fn snapshot_name(now: SystemTime, taken: impl Fn(&str) -> bool) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, mo, d) = civil_from_days((secs / 86400) as i64);
    let t = secs % 86400;
    let base = format!(
        "backup-{y:04}{mo:02}{d:02}T{:02}{:02}{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    );
    let mut name = base.clone();
    let mut n = 1;
    while taken(&name) {
        n += 1;
        name = format!("{base}-{n}");
    }
    name
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The default size of a backup snapshot's COW: room for every chunk of the volume plus the
/// store's metadata (its header chunk, one metadata chunk per `chunk_bytes / 16` exceptions,
/// and one spare), so that the snapshot can never fill up however much of the volume is
/// rewritten between two runs. The file is sparse: it takes host space only for the chunks
/// actually copied out.
pub fn default_cow_bytes(volume_bytes: u64, chunk_bytes: u64) -> u64 {
    let data = volume_bytes.div_ceil(chunk_bytes);
    let per_area = chunk_bytes / 16;
    let areas = data.div_ceil(per_area) + 1;
    (1 + areas + data) * chunk_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn names_are_utc_times_and_unique() {
        let t = UNIX_EPOCH + Duration::from_secs(1_765_083_845);
        assert_eq!(snapshot_name(t, |_| false), "backup-20251207T050405Z");
        let taken = ["backup-20251207T050405Z", "backup-20251207T050405Z-2"];
        assert_eq!(
            snapshot_name(t, |n| taken.contains(&n)),
            "backup-20251207T050405Z-3"
        );
        assert_eq!(
            snapshot_name(UNIX_EPOCH, |_| false),
            "backup-19700101T000000Z"
        );
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(snapshot_name(leap, |_| false), "backup-20000229T000000Z");
        crate::names::check_snapshot_name(&snapshot_name(t, |_| false)).unwrap();
    }

    #[test]
    fn the_default_cow_holds_every_chunk() {
        // 1 GiB in 16 KiB chunks: 65536 data chunks, 64 areas of 1024, + 1 spare, + header.
        assert_eq!(default_cow_bytes(1 << 30, 16384), (1 + 65 + 65536) * 16384);
        // A partial last chunk counts.
        assert_eq!(default_cow_bytes(4097, 4096), (1 + 2 + 2) * 4096);
    }
}
