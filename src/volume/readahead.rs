//! Read-ahead for sequential reads of the origin file and of snapshot files.
//!
//! A reader at queue depth 1 (`dd`, `cp`, fio QD1, a backup reading the volume or a snapshot)
//! waits for each request in turn: the device reads, then the FUSE transfer, then the next
//! request. With direct I/O there is no page cache to read ahead for it, so when a read of at
//! least [`READAHEAD_MIN_BYTES`] starts where the previous one of the same file ended, and no
//! other read of that file is in flight, the next [`READAHEAD_WINDOWS`] ranges of the same
//! length after it are read by the volume's helper threads ([`Helpers`]) while the current
//! request is answered (the device sees them together, as it would the kernel's own
//! read-ahead), without waiting for the reader. A next request for exactly the first range
//! takes its buffer (no copy).
//!
//! Each file is a [`Stream`] reading through a [`Source`]: the origin device, or a snapshot's
//! mapping (COW where the chunk has an exception, origin elsewhere, under the same shared range
//! lock as any snapshot read).
//!
//! Coherence: every write that can change what a stream reads counts as begun before it starts
//! and as done after ([`WriteCounts`]): for the origin, every write, zeroing or discard of the
//! origin device ([`Tracked`]); for a snapshot, every write, zeroing or discard of the snapshot
//! (origin writes never change a snapshot's content: they copy it out first, under a range lock
//! that the snapshot read takes too). A read-ahead starts only when no write is in progress,
//! noting how many have begun; its data is used only if no write has begun since (then every
//! write it could race with finished before it was started). Any write anywhere in the file
//! discards it: simple and conservative. Origin reads use it only while no merge runs.
//!
//! Memory: a stream holds at most [`READAHEAD_WINDOWS`] request buffers, and none once its
//! file's last open handle is closed ([`Stream::forget`], called by the FUSE layer).

use crate::device::{BlockDevice, Device, IoBuf};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Sequential reads at least this large (a 1 MiB FUSE request, say) are read ahead.
pub(super) const READAHEAD_MIN_BYTES: usize = 256 << 10;

/// Ranges read ahead of a sequential reader (each as large as its requests): the memory held is
/// this many request buffers.
const READAHEAD_WINDOWS: usize = 2;

/// Counts of the writes begun and done to one file: the origin's (every write, zeroing or
/// discard of the origin device, through [`Tracked`]) or one snapshot's (its own writes,
/// zeroings and discards). A read-ahead of that file is used only if none began since it started.
#[derive(Default)]
pub(super) struct WriteCounts {
    begun: AtomicU64,
    done: AtomicU64,
}

impl WriteCounts {
    /// An origin write begins (a write-back entry: answered, not yet on the device).
    pub(super) fn begin(&self) {
        self.begun.fetch_add(1, Ordering::SeqCst);
    }

    /// An origin write counted by [`WriteCounts::begin`] is on the device.
    pub(super) fn end(&self) {
        self.done.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn track<T>(&self, f: impl FnOnce() -> T) -> T {
        self.begun.fetch_add(1, Ordering::SeqCst);
        let r = f();
        self.done.fetch_add(1, Ordering::SeqCst);
        r
    }
}

/// The origin device with its writes counted.
pub(super) struct Tracked {
    inner: Device,
    counts: Arc<WriteCounts>,
}

impl Tracked {
    pub(super) fn wrap(inner: Device, counts: Arc<WriteCounts>) -> Device {
        Arc::new(Tracked { inner, counts })
    }
}

impl BlockDevice for Tracked {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.counts.track(|| self.inner.write_at(buf, offset))
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.counts.track(|| self.inner.discard(offset, len))
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.counts.track(|| self.inner.write_zeroes(offset, len))
    }
    fn allocated_bytes(&self) -> Option<u64> {
        self.inner.allocated_bytes()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

type Filled = (IoBuf, io::Result<()>);

/// What a stream reads: a file of the volume.
pub(super) trait Source: Send + Sync {
    /// Reads `buf.len()` bytes at `offset` (the caller has checked the range).
    fn fill(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

/// The origin file: its device as it is.
pub(super) struct DeviceSource(pub(super) Device);

impl Source for DeviceSource {
    fn fill(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.read_at(buf, offset)
    }
}

struct Job {
    source: Arc<dyn Source>,
    offset: u64,
    buf: IoBuf,
    done: mpsc::Sender<Filled>,
}

struct Pending {
    offset: u64,
    len: usize,
    /// Writes begun when it was started (none was in progress then).
    writes_begun: u64,
    done: mpsc::Receiver<Filled>,
}

struct State {
    /// Where the last read of the file ended.
    last_end: Option<u64>,
    /// Consecutive ranges being (or already) read ahead, first expected first.
    pending: VecDeque<Pending>,
}

struct Worker {
    jobs: mpsc::Sender<Job>,
    threads: Vec<JoinHandle<()>>,
}

/// The sequential-read state of one file.
pub(super) struct Stream {
    /// The writes that change what this file reads.
    counts: Arc<WriteCounts>,
    state: Mutex<State>,
    reads_in_flight: AtomicU64,
}

/// The threads that read ahead, shared by every stream of a volume. Jobs hold their source,
/// never the volume, so nothing here keeps the volume alive.
pub(super) struct Helpers {
    worker: Mutex<Option<Worker>>,
}

impl Stream {
    pub(super) fn new(counts: Arc<WriteCounts>) -> Stream {
        Stream {
            counts,
            state: Mutex::new(State {
                last_end: None,
                pending: VecDeque::new(),
            }),
            reads_in_flight: AtomicU64::new(0),
        }
    }

    /// Drops what was read ahead and forgets where the last read ended (the file's last open
    /// handle was closed): idle files hold no buffers.
    pub(super) fn forget(&self) {
        let mut st = self.state.lock();
        st.pending.clear();
        st.last_end = None;
    }

    /// Reads `buf.len()` bytes of `source` at `offset`, from a read-ahead when one covers
    /// exactly this range, and starts the next read-ahead (on `helpers`) when the stream is
    /// sequential. `volume_bytes` bounds the read-ahead.
    pub(super) fn read(
        &self,
        helpers: &Helpers,
        source: &Arc<dyn Source>,
        offset: u64,
        buf: &mut IoBuf,
        volume_bytes: u64,
    ) -> io::Result<()> {
        let len = buf.len();
        let alone = self.reads_in_flight.fetch_add(1, Ordering::SeqCst) == 0;
        let _in_flight = InFlight(&self.reads_in_flight);
        let mut pending = std::mem::take(&mut self.state.lock().pending);
        let mut spare = None;
        let mut served = false;
        match pending.pop_front() {
            Some(p) if p.offset == offset && p.len == len => {
                if let Ok((filled, result)) = p.done.recv() {
                    let unchanged = self.counts.begun.load(Ordering::SeqCst) == p.writes_begun;
                    if result.is_ok() && unchanged {
                        spare = Some(std::mem::replace(buf, filled));
                        served = true;
                    } else {
                        spare = Some(filled);
                    }
                }
            }
            // Not the stream read ahead: drop it all (the helper's results go nowhere).
            _ => pending.clear(),
        }
        if !served {
            source.fill(offset, buf)?;
        }
        let next = offset + len as u64;
        let mut st = self.state.lock();
        let sequential = st.last_end == Some(offset);
        st.last_end = Some(next);
        if !st.pending.is_empty() {
            return Ok(()); // another reader has started its own: keep that one
        }
        if pending
            .front()
            .is_some_and(|p| p.offset != next || p.len != len)
        {
            pending.clear();
        }
        if alone && sequential && len >= READAHEAD_MIN_BYTES {
            self.top_up(
                helpers,
                &mut pending,
                source,
                next,
                len,
                volume_bytes,
                spare,
            );
        }
        st.pending = pending;
        Ok(())
    }

    /// Starts reading ahead until `READAHEAD_WINDOWS` ranges of `len` bytes from `next` on are
    /// queued, unless a write is in progress.
    #[allow(clippy::too_many_arguments)]
    fn top_up(
        &self,
        helpers: &Helpers,
        pending: &mut VecDeque<Pending>,
        source: &Arc<dyn Source>,
        next: u64,
        len: usize,
        volume_bytes: u64,
        mut spare: Option<IoBuf>,
    ) {
        let writes_begun = self.counts.begun.load(Ordering::SeqCst);
        if self.counts.done.load(Ordering::SeqCst) != writes_begun {
            return; // a write is in progress
        }
        let mut at = pending.back().map_or(next, |p| p.offset + p.len as u64);
        while pending.len() < READAHEAD_WINDOWS && at + len as u64 <= volume_bytes {
            let buf = match spare.take() {
                Some(b) if b.len() == len => b,
                _ => IoBuf::new(len),
            };
            let (done, rx) = mpsc::channel();
            let job = Job {
                source: source.clone(),
                offset: at,
                buf,
                done,
            };
            if !helpers.submit(job) {
                return;
            }
            pending.push_back(Pending {
                offset: at,
                len,
                writes_begun,
                done: rx,
            });
            at += len as u64;
        }
    }
}

impl Helpers {
    pub(super) fn new() -> Helpers {
        Helpers {
            worker: Mutex::new(None),
        }
    }

    /// Hands a job to the helper threads, starting them the first time.
    fn submit(&self, job: Job) -> bool {
        let mut worker = self.worker.lock();
        if worker.is_none() {
            let (jobs, rx) = mpsc::channel::<Job>();
            let rx = Arc::new(Mutex::new(rx));
            let mut threads = Vec::new();
            for _ in 0..READAHEAD_WINDOWS {
                let rx = rx.clone();
                let thread = std::thread::Builder::new()
                    .name("readahead".to_string())
                    .spawn(move || {
                        loop {
                            let Ok(mut job) = rx.lock().recv() else {
                                return;
                            };
                            let result = job.source.fill(job.offset, &mut job.buf);
                            drop(job.source);
                            // The reader may have moved on: the buffer is then simply dropped.
                            let _ = job.done.send((job.buf, result));
                        }
                    });
                match thread {
                    Ok(thread) => threads.push(thread),
                    Err(e) => log::warn!("no read-ahead thread: {e}"),
                }
            }
            if threads.is_empty() {
                return false;
            }
            *worker = Some(Worker { jobs, threads });
        }
        worker.as_ref().is_some_and(|w| w.jobs.send(job).is_ok())
    }
}

impl Drop for Helpers {
    /// Stops the helper threads (after the reads they may be doing), so that nothing holds a
    /// device once the volume is gone.
    fn drop(&mut self) {
        if let Some(Worker { jobs, threads }) = self.worker.get_mut().take() {
            drop(jobs);
            for thread in threads {
                let _ = thread.join();
            }
        }
    }
}

struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    fn bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut x = crate::rng::Rng(seed);
        (0..len).map(|_| x.next() as u8).collect()
    }

    /// Reads `READAHEAD_MIN_BYTES` at `offset` through `read` and checks them against `model`;
    /// 1 if `stream` had that range read ahead, else 0.
    fn read_checked(
        stream: &Stream,
        offset: usize,
        model: &[u8],
        what: &str,
        read: impl FnOnce(&mut IoBuf),
    ) -> u32 {
        let ahead = stream.state.lock().pending.front().map(|p| p.offset) == Some(offset as u64);
        let mut buf = IoBuf::new(READAHEAD_MIN_BYTES);
        read(&mut buf);
        assert!(buf[..] == model[offset..offset + buf.len()], "{what}");
        ahead as u32
    }

    /// Sequential reads are served from read-ahead buffers, and a write anywhere in between,
    /// before or while the read-ahead runs, is never hidden by it.
    #[test]
    fn sequential_reads_see_every_write() {
        const SIZE: usize = 8 << 20;
        const LEN: usize = READAHEAD_MIN_BYTES;
        let mut model = bytes(1, SIZE);
        let counts = Arc::new(WriteCounts::default());
        let mem: Device = Arc::new(MemDevice::from_bytes("origin", model.clone(), 512));
        let origin = Tracked::wrap(mem, counts.clone());
        let source: Arc<dyn Source> = Arc::new(DeviceSource(origin.clone()));
        let helpers = Helpers::new();
        let ra = Stream::new(counts);
        let mut served = 0;
        for pass in 0..3u64 {
            let mut offset = 0;
            let mut i = 0u64;
            while offset + LEN <= SIZE {
                // Every third read, overwrite part of the range the read-ahead is fetching.
                if (i + pass).is_multiple_of(3) && offset + 2 * LEN <= SIZE {
                    let at = offset + LEN + (i as usize * 4096) % LEN;
                    let data = bytes(100 + i + pass * 1000, 4096);
                    origin.write_at(&data, at as u64).unwrap();
                    model[at..at + 4096].copy_from_slice(&data);
                }
                let what = format!("pass {pass} read {i} at {offset}");
                served += read_checked(&ra, offset, &model, &what, |buf| {
                    ra.read(&helpers, &source, offset as u64, buf, SIZE as u64)
                        .unwrap()
                });
                offset += LEN;
                i += 1;
            }
        }
        assert!(served > 40, "read-ahead was used ({served} times)");
    }

    /// A file whose last handle closed holds no read-ahead buffers, and its next read is not
    /// taken as continuing the old stream.
    #[test]
    fn forget_drops_what_was_read_ahead() {
        const LEN: usize = READAHEAD_MIN_BYTES;
        let mem: Device = Arc::new(MemDevice::from_bytes("origin", bytes(3, 16 * LEN), 512));
        let source: Arc<dyn Source> = Arc::new(DeviceSource(mem));
        let (helpers, stream) = (Helpers::new(), Stream::new(Arc::default()));
        for i in 0..3 {
            let mut buf = IoBuf::new(LEN);
            stream
                .read(
                    &helpers,
                    &source,
                    (i * LEN) as u64,
                    &mut buf,
                    16 * LEN as u64,
                )
                .unwrap();
        }
        assert_eq!(stream.state.lock().pending.len(), READAHEAD_WINDOWS);
        stream.forget();
        let st = stream.state.lock();
        assert!(st.pending.is_empty() && st.last_end.is_none());
    }

    /// Sequential snapshot reads are served from read-ahead buffers, and no change to the
    /// snapshot made in between (a write, zeroing or discard of the snapshot) is hidden by
    /// them, nor is a snapshot read disturbed by origin writes copying chunks out under it.
    #[test]
    fn sequential_snapshot_reads_see_every_change() {
        use crate::store::StoreKind;
        use crate::volume::{SnapshotConfig, Volume, VolumeOptions};
        const SIZE: usize = 8 << 20;
        const LEN: usize = READAHEAD_MIN_BYTES;
        const CHUNK: usize = 16 << 10;
        let mut origin_model = bytes(2, SIZE);
        let origin: Device = Arc::new(MemDevice::from_bytes("origin", origin_model.clone(), 512));
        let vol = Volume::open(origin, Vec::new(), VolumeOptions::default()).unwrap();
        let cow: Device = Arc::new(MemDevice::new("cow", 2 * SIZE as u64));
        let snap = vol
            .attach_snapshot(SnapshotConfig {
                name: "s".into(),
                cow,
                kind: StoreKind::parse("N").unwrap(),
                chunk_sectors: (CHUNK / 512) as u64,
                features: Default::default(),
            })
            .unwrap();
        let mut model = origin_model.clone();
        // Chunks with an exception (what an origin write leaves alone).
        let mut excepted = vec![false; SIZE / CHUNK];
        // Every other chunk in the COW: reads mix both devices.
        for c in (0..SIZE / CHUNK).step_by(2) {
            let data = bytes(c as u64 + 10, CHUNK);
            vol.write_snapshot(&snap, (c * CHUNK) as u64, &data)
                .unwrap();
            model[c * CHUNK..(c + 1) * CHUNK].copy_from_slice(&data);
            excepted[c] = true;
        }
        let mut served = 0;
        let mut rng = crate::rng::Rng(7);
        let mut next = |n: u64| rng.next() % n;
        for pass in 0..3 {
            let mut offset = 0;
            let mut i = 0u64;
            while offset + LEN <= SIZE {
                // Now and then, change the range the read-ahead is fetching (or about to).
                if offset + 3 * LEN <= SIZE && next(3) == 0 {
                    // Let the helpers finish reading ahead first: the change then lands after
                    // the read-ahead it must invalidate, not before it (which would hide a
                    // missing invalidation).
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    let at = offset + LEN + next(2 * LEN as u64 - 8192) as usize;
                    let len = 1 + next(8192) as usize;
                    let first = at / CHUNK;
                    let last = (at + len - 1) / CHUNK;
                    match next(4) {
                        0 => {
                            let data = bytes(1000 * pass + i, len);
                            vol.write_snapshot(&snap, at as u64, &data).unwrap();
                            model[at..at + len].copy_from_slice(&data);
                            excepted[first..=last].fill(true);
                        }
                        1 => {
                            vol.zero_snapshot(&snap, at as u64, len as u64).unwrap();
                            model[at..at + len].fill(0);
                            excepted[first..=last].fill(true);
                        }
                        2 => {
                            // A punch zeroes every chunk (docs/discard.md).
                            vol.discard_snapshot(&snap, at as u64, len as u64).unwrap();
                            model[at..at + len].fill(0);
                            excepted[first..=last].fill(true);
                        }
                        _ => {
                            // An origin write: the snapshot keeps its content.
                            let data = bytes(5000 * pass + i, len);
                            vol.write_origin(at as u64, &data).unwrap();
                            origin_model[at..at + len].copy_from_slice(&data);
                            excepted[first..=last].fill(true);
                        }
                    }
                }
                let what = format!("pass {pass} snapshot read {i} at {offset}");
                served += read_checked(&snap.reads, offset, &model, &what, |buf| {
                    vol.read_snapshot_buf(&snap, offset as u64, buf).unwrap()
                });
                offset += LEN;
                i += 1;
            }
            let mut whole = vec![0u8; SIZE];
            vol.read_origin(0, &mut whole).unwrap();
            assert!(whole == origin_model, "pass {pass}: the origin");
        }
        assert!(served > 40, "read-ahead was used ({served} times)");
    }
}
