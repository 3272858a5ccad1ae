//! snapshot-merge: rolling the origin back to a snapshot, online and resumable.
//!
//! Starting a merge: the store's merge marker is made durable first (so a restart resumes the
//! merge and never exposes the half-merged physical origin), then, with origin writes held back,
//! the snapshot is switched to *merging*: it takes no more copies, its file goes away, and origin
//! I/O consults its table (chunks still in the COW are read and written there).
//!
//! A background thread then copies the exceptions back in the kernel's order: the run of
//! records at the tail of the list (consecutive in origin and COW chunks), for each run:
//! lock the chunks -> copy them out to every other snapshot -> copy COW -> origin -> flush the
//! origin (the 2021 kernel fix: merged data durable before its record goes) -> clear the records
//! durably (`commit_merge`) -> drop them from the table -> unlock. When the list is empty the
//! marker is cleared and the snapshot detached; its COW is then an empty, valid store.
//! An error stops the merge with the state `Merge failed`; ordinary I/O goes on.
//!
//! Every store offers its list the same way (a store without metadata from memory), so there
//! is one path; what differs is only whether the merge can stop and resume later
//! (`ExceptionStore::merge_resumable`): one that cannot is never paused, and is finished
//! rather than stopped at unmount.

use super::{Snapshot, Volume};
use crate::rangelock::LockMode;
use crate::store::MergeRun;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

#[derive(Debug)]
#[non_exhaustive]
pub enum MergeError {
    /// No snapshot of that name is attached.
    NoSuchSnapshot(String),
    /// A merge is already running (EBUSY).
    AlreadyRunning(String),
    /// The snapshot cannot be merged (invalid, read-only mount, ...), or its merge cannot be
    /// paused or resumed in this state (not merging, not paused, ...).
    Refused(String),
    /// Writing the merge marker failed.
    Io(String),
}

impl MergeError {
    /// Whether the caller should see EBUSY (otherwise EINVAL).
    pub fn is_busy(&self) -> bool {
        matches!(self, MergeError::AlreadyRunning(_))
    }
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeError::NoSuchSnapshot(n) => write!(f, "no snapshot named {n}"),
            MergeError::AlreadyRunning(n) => write!(f, "snapshot {n} is already merging"),
            MergeError::Refused(why) | MergeError::Io(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for MergeError {}

pub(super) struct MergeWorker {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Volume {
    /// The snapshot being merged, if any.
    pub fn merging_snapshot(&self) -> Option<Arc<Snapshot>> {
        if !self.merge_active.load(Ordering::Acquire) {
            return None;
        }
        self.snapshots
            .read()
            .iter()
            .find(|s| s.is_merging())
            .cloned()
    }

    /// Starts merging `name` into the origin. From the return on, the origin reads as the
    /// snapshot did. Choosing the snapshot when the user named none (`control`'s `merge`) and
    /// checking that nobody has the origin or the snapshot open are the caller's job (the file
    /// layer knows about opens).
    pub fn start_merge(self: &Arc<Self>, name: &str) -> Result<String, MergeError> {
        if self.options.read_only {
            return Err(MergeError::Refused(
                "the volume is mounted read-only: cannot merge".to_string(),
            ));
        }
        let mut worker = self.merge_worker.lock();
        // Every acknowledged origin write copied out and on the origin first.
        self.drain();
        if let Some(m) = self.merging_snapshot() {
            return Err(MergeError::AlreadyRunning(m.name.clone()));
        }
        let snap = self
            .snapshot(name)
            .ok_or_else(|| MergeError::NoSuchSnapshot(name.to_string()))?;
        if snap.is_invalid() {
            return Err(MergeError::Refused(format!(
                "snapshot {} is invalid: can't merge",
                snap.name
            )));
        }
        snap.store.set_merge_marker(true).map_err(|e| {
            MergeError::Io(format!(
                "cannot record the merge on {}: {e}",
                snap.cow.name()
            ))
        })?;
        {
            // With origin and snapshot writes drained, switch the views.
            let _list = self.snapshots.write();
            self.drain();
            snap.set_merging();
            self.merge_active.store(true, Ordering::Release);
        }
        log::info!(
            "merging snapshot {} into the origin: {} chunks",
            snap.name,
            snap.table.len()
        );
        *worker = Some(self.spawn_merge(snap.clone()));
        Ok(snap.name.clone())
    }

    /// Restarts the copying of a merge found in progress when the volume was opened.
    /// A read-only volume never resumes (it must not write the origin): it serves the merged
    /// view, and the merge goes on at the next read-write mount.
    pub fn resume_merge(self: &Arc<Self>) {
        if self.options.read_only {
            return;
        }
        let mut worker = self.merge_worker.lock();
        if worker.is_some() {
            return;
        }
        if let Some(snap) = self.merging_snapshot()
            && !snap.is_merge_failed()
            && !snap.is_merge_paused()
        {
            *worker = Some(self.spawn_merge(snap));
        }
    }

    /// Pauses the merge of `name`: the copying stops after its current step, the merged view
    /// holds (origin I/O goes on, writes to chunks still in the COW go there), and the pause is
    /// recorded durably in the COW's header (flushed before the return), so that it holds across
    /// a remount until [`Volume::resume_paused_merge`]. Returns `(chunks left, chunks total)`.
    pub fn pause_merge(self: &Arc<Self>, name: &str) -> Result<(u64, u64), MergeError> {
        self.drain();
        let snap = self.pause_target(name)?;
        if snap.is_merge_paused() {
            return Err(MergeError::Refused(format!(
                "the merge of {name} is already paused"
            )));
        }
        if snap.is_merge_failed() {
            return Err(MergeError::Refused(format!(
                "the merge of {name} failed: nothing to pause (it is retried at the next mount)"
            )));
        }
        if !snap.store.merge_resumable() {
            return Err(MergeError::Refused(format!(
                "{name} is a transient snapshot: its merge keeps nothing on disk and cannot be \
                 paused (it must finish)"
            )));
        }
        let mut worker = self.merge_worker.lock();
        // The pause flag first: the thread sees it after its current step and stops.
        snap.set_merge_paused(true);
        if let Some(w) = worker.take() {
            w.stop.store(true, Ordering::Release);
            let _ = w.thread.join();
        }
        if !snap.is_attached() || snap.is_merge_failed() {
            // The last step completed or failed the merge while we waited for it.
            snap.set_merge_paused(false);
            let what = if snap.is_merge_failed() {
                "failed"
            } else {
                "completed"
            };
            return Err(MergeError::Refused(format!(
                "the merge of {name} has just {what}: nothing to pause"
            )));
        }
        if let Err(e) = snap.store.set_merge_paused(true) {
            snap.set_merge_paused(false);
            if !snap.is_merge_failed() {
                *worker = Some(self.spawn_merge(snap.clone()));
            }
            return Err(MergeError::Io(format!(
                "cannot record the pause on {}: {e}; the merge goes on",
                snap.cow.name()
            )));
        }
        log::info!(
            "merge of {name} paused with {} chunks left; resume {name} continues it",
            snap.table.len()
        );
        Ok(snap.merge_progress().unwrap_or((0, 0)))
    }

    /// Resumes a paused merge: the pause is cleared durably, then the copying restarts where
    /// the list ends. Returns `(chunks left, chunks total)`.
    pub fn resume_paused_merge(self: &Arc<Self>, name: &str) -> Result<(u64, u64), MergeError> {
        self.drain();
        let snap = self.pause_target(name)?;
        if !snap.is_merge_paused() {
            return Err(MergeError::Refused(format!(
                "the merge of {name} is not paused"
            )));
        }
        let mut worker = self.merge_worker.lock();
        snap.store.set_merge_paused(false).map_err(|e| {
            MergeError::Io(format!(
                "cannot record the resumption on {}: {e}; the merge stays paused",
                snap.cow.name()
            ))
        })?;
        snap.set_merge_paused(false);
        if worker.is_none() && !snap.is_merge_failed() {
            *worker = Some(self.spawn_merge(snap.clone()));
        }
        log::info!(
            "merge of {name} resumed with {} chunks left",
            snap.table.len()
        );
        Ok(snap.merge_progress().unwrap_or((0, 0)))
    }

    /// The merging snapshot `name`, for pause and resume.
    fn pause_target(&self, name: &str) -> Result<Arc<Snapshot>, MergeError> {
        if self.options.read_only {
            return Err(MergeError::Refused(
                "the volume is mounted read-only: its merge state cannot change".to_string(),
            ));
        }
        let snap = self
            .snapshot(name)
            .ok_or_else(|| MergeError::NoSuchSnapshot(name.to_string()))?;
        if !snap.is_merging() {
            return Err(MergeError::Refused(format!(
                "snapshot {name} is not merging"
            )));
        }
        Ok(snap)
    }

    /// Stops the merge thread after its current step (unmount); the merge resumes at the next
    /// mount from what is on disk. A transient snapshot's merge cannot resume (nothing of it is
    /// on disk), so it is finished instead: stopping it would leave the origin half merged.
    pub fn stop_merge(&self) {
        let must_finish = self
            .merging_snapshot()
            .is_some_and(|s| !s.store.merge_resumable());
        if let Some(w) = self.merge_worker.lock().take() {
            if must_finish {
                log::info!("finishing the merge of a transient snapshot before stopping");
            } else {
                w.stop.store(true, Ordering::Release);
            }
            let _ = w.thread.join();
        }
    }

    /// Waits for the merge thread to finish (complete or failed).
    pub fn wait_merge(&self) {
        let worker = self.merge_worker.lock().take();
        if let Some(w) = worker {
            let _ = w.thread.join();
        }
    }

    fn spawn_merge(self: &Arc<Self>, snap: Arc<Snapshot>) -> MergeWorker {
        let stop = Arc::new(AtomicBool::new(false));
        let (volume, flag) = (Arc::clone(self), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("merge-{}", snap.name))
            .spawn(move || volume.run_merge(&snap, &flag))
            .expect("spawn the merge thread");
        MergeWorker { stop, thread }
    }

    fn run_merge(&self, snap: &Arc<Snapshot>, stop: &AtomicBool) {
        loop {
            if stop.load(Ordering::Acquire) {
                if !snap.is_merge_paused() {
                    log::info!(
                        "merge of {} stopped; it resumes at the next mount",
                        snap.name
                    );
                }
                return;
            }
            let run = match snap.store.prepare_merge() {
                Ok(Some(run)) => run,
                Ok(None) => break,
                Err(e) => return self.merge_failed(snap, &format!("reading the list: {e}")),
            };
            if let Err(why) = self.merge_step(snap, run) {
                return self.merge_failed(snap, &why);
            }
        }
        self.merge_complete(snap);
    }

    fn merge_step(&self, snap: &Snapshot, run: MergeRun) -> Result<(), String> {
        let (old, new) = (run.first_old(), run.first_new());
        for i in 0..run.count {
            if snap.table.lookup(old + i) != Some(new + i) {
                return Err(format!(
                    "record for origin chunk {} does not match the table",
                    old + i
                ));
            }
        }
        let list = self.snapshots.read();
        let (start, _) = snap.chunk_range(old, self.size_bytes);
        let (_, end) = snap.chunk_range(run.last_old, self.size_bytes);
        let targets: Vec<&Arc<Snapshot>> = list.iter().filter(|s| s.takes_copies()).collect();
        let widest = targets
            .iter()
            .map(|s| s.chunk.bytes())
            .fold(snap.chunk.bytes(), u64::max);
        let _range = self.ranges.lock(
            start / widest * widest,
            end.div_ceil(widest) * widest,
            LockMode::Exclusive,
        );
        // The other snapshots keep the physical origin as it is now.
        let needed = self.copy_needed(&targets, start, end);
        if !needed.is_empty() {
            self.copy_out(needed);
        }
        let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
        self.copy_between(
            &snap.cow,
            snap.cow_offset(new),
            end - start,
            &self.origin,
            start,
        )
        .map_err(|e| io("copying back to the origin", e))?;
        self.origin
            .flush()
            .map_err(|e| io("flushing the origin", e))?;
        snap.store
            .commit_merge(run.count)
            .map_err(|e| format!("clearing merged records: {e}"))?;
        for i in (0..run.count).rev() {
            snap.table.remove(old + i);
        }
        Ok(())
    }

    fn merge_failed(&self, snap: &Snapshot, why: &str) {
        log::error!("merge of snapshot {} failed: {why}", snap.name);
        snap.set_merge_failed();
    }

    fn merge_complete(&self, snap: &Arc<Snapshot>) {
        if !snap.table.is_empty() {
            return self.merge_failed(
                snap,
                &format!(
                    "the list is empty but {} chunks remain in memory",
                    snap.table.len()
                ),
            );
        }
        if let Err(e) = snap.store.set_merge_marker(false) {
            return self.merge_failed(snap, &format!("clearing the merge marker: {e}"));
        }
        let mut list = self.snapshots.write();
        list.retain(|s| !Arc::ptr_eq(s, snap));
        snap.detach();
        self.merge_active.store(false, Ordering::Release);
        log::info!(
            "merge of snapshot {} complete; its COW ({}) is an empty store now",
            snap.name,
            snap.cow.name()
        );
    }
}
