//! Shared/exclusive locks on byte ranges of the origin, granted first come, first served.
//!
//! This is how snapfs gets the kernel's guarantees without the kernel's per-bio bookkeeping:
//! - a copy-out (and the origin write waiting for it) holds its chunks exclusively, so a second
//!   write to the same chunk waits for the one copy in flight instead of starting another, and
//!   never overtakes it;
//! - a snapshot read served from the origin holds its range shared, so no origin write can
//!   overwrite those bytes until the read is done (the kernel's `track_chunk`).
//!
//! The table of held and waiting ranges is behind one mutex, but that mutex is held only to
//! add or remove an entry (a scan of the requests in flight), never across I/O. A request
//! conflicts with every earlier overlapping entry whose mode conflicts, granted or still
//! waiting, so an exclusive request cannot be starved by a stream of shared ones. A thread holds
//! at most one range at a time, which keeps this deadlock-free.

use parking_lot::{Condvar, Mutex};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

struct Entry {
    id: u64,
    start: u64,
    end: u64,
    mode: LockMode,
}

impl Entry {
    fn conflicts(&self, other: &Entry) -> bool {
        self.start < other.end
            && other.start < self.end
            && (self.mode == LockMode::Exclusive || other.mode == LockMode::Exclusive)
    }
}

#[derive(Default)]
struct Table {
    next_id: u64,
    /// In arrival order; an entry is granted when no earlier entry conflicts with it.
    entries: Vec<Entry>,
}

#[derive(Default)]
pub struct RangeLock {
    table: Mutex<Table>,
    released: Condvar,
}

/// A granted range; released on drop.
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

impl RangeLock {
    pub fn new() -> RangeLock {
        RangeLock::default()
    }

    /// Waits until `[start, end)` is granted in `mode`.
    pub fn lock(&self, start: u64, end: u64, mode: LockMode) -> RangeGuard<'_> {
        let mut t = self.table.lock();
        let id = t.next_id;
        t.next_id += 1;
        t.entries.push(Entry {
            id,
            start,
            end,
            mode,
        });
        loop {
            let pos = t.entries.iter().position(|e| e.id == id).unwrap();
            let me = &t.entries[pos];
            if !t.entries[..pos].iter().any(|e| e.conflicts(me)) {
                return RangeGuard { lock: self, id };
            }
            self.released.wait(&mut t);
        }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut t = self.lock.table.lock();
        t.entries.retain(|e| e.id != self.id);
        self.lock.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[test]
    fn shared_ranges_coexist_exclusive_waits() {
        let lock = Arc::new(RangeLock::new());
        let a = lock.lock(0, 100, LockMode::Shared);
        let _b = lock.lock(50, 150, LockMode::Shared);
        let _c = lock.lock(200, 300, LockMode::Exclusive);
        let granted = Arc::new(AtomicU64::new(0));
        let t = {
            let (lock, granted) = (lock.clone(), granted.clone());
            std::thread::spawn(move || {
                let _g = lock.lock(90, 95, LockMode::Exclusive);
                granted.store(1, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            granted.load(Ordering::SeqCst),
            0,
            "overlaps two shared holders"
        );
        drop(a);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            granted.load(Ordering::SeqCst),
            0,
            "still overlaps the second"
        );
        drop(_b);
        t.join().unwrap();
        assert_eq!(granted.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn exclusive_excludes_under_contention() {
        let lock = Arc::new(RangeLock::new());
        let counter = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (lock, counter) = (lock.clone(), counter.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        let _g = lock.lock(10, 20, LockMode::Exclusive);
                        let v = counter.load(Ordering::SeqCst);
                        std::hint::spin_loop();
                        counter.store(v + 1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.load(Ordering::SeqCst), 8000, "no lost update");
        assert!(lock.table.lock().entries.is_empty(), "every range released");
    }
}
