//! Log lines that would otherwise come at I/O rate. A filesystem on a loop device over the
//! origin flushes many times a second (every journal commit); a line per flush buried the rest
//! of a debug log under thousands of "flushed" lines.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one line per file per this interval.
const INTERVAL: Duration = Duration::from_secs(1);

/// When the last line about each file was written, and the flushes not logged since.
static FLUSHES: Mutex<Option<HashMap<String, (Instant, u64)>>> = Mutex::new(None);

/// Logs at debug level that the file `describe` names (`origin`, `snapshot NAME`) was
/// flushed: the first flush, then at most one line a second with the count of the flushes in
/// between. Without debug logging nothing is done, not even naming the file: this runs at
/// every fsync.
pub(super) fn log_flushed(describe: impl FnOnce() -> String) {
    if !log::log_enabled!(log::Level::Debug) {
        return;
    }
    let file = describe();
    let file = file.as_str();
    let now = Instant::now();
    let unlogged = {
        let mut guard = FLUSHES.lock();
        let files = guard.get_or_insert_with(HashMap::new);
        match files.get_mut(file) {
            Some((last, count)) if now.duration_since(*last) < INTERVAL => {
                *count += 1;
                return;
            }
            Some((last, count)) => {
                *last = now;
                std::mem::take(count)
            }
            None => {
                files.insert(file.to_string(), (now, 0));
                0
            }
        }
    };
    match unlogged {
        0 => log::debug!("{file}: flushed"),
        n => log::debug!("{file}: flushed ({n} more flushes since the last line)"),
    }
}
