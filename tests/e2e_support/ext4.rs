//! A live ext4 over a snapfs origin, as the freeze and backup tests use it: the mount and its
//! loop device, a writer that keeps the file system busy, and a freeze that always thaws.

use super::{MIB, Rng, Scratch, Stack, run, sparse_file, wait_for};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

/// A snapfs mount (of a sparse origin of `MIB`s) with ext4 on a buffered loop device `dev`
/// over its origin, mounted on `fs`. Field order is drop order: the ext4 and the loop device
/// go before the snapfs mount.
pub struct Ext4Volume {
    pub stack: Stack,
    pub s: Scratch,
    pub dev: String,
    pub fs: PathBuf,
}

impl Ext4Volume {
    /// With `registry`, the mount keeps its registry in `vol.reg` of the scratch directory.
    pub fn new(tag: &str, mib: u64, registry: bool) -> Ext4Volume {
        let mut s = Scratch::new(tag);
        let mut stack = Stack::default();
        let origin = s.path("origin.img");
        sparse_file(&origin, mib * MIB);
        let option = format!("registry={}", s.path("vol.reg").display());
        let options: &[&str] = if registry { &[&option] } else { &[] };
        s.mount_daemon(&origin, options, &[]);
        let dev = stack.attach(&s.file("origin"), false, false);
        run("mkfs.ext4", &["-q", "-F", &dev]);
        let fs = s.path("fs");
        stack.mount(&dev, &fs, "rw");
        Ext4Volume { stack, s, dev, fs }
    }
}

/// A thread that writes files in `dir` (fsyncing every other one), renames and deletes some,
/// until stopped.
pub struct Writer {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts writing with data from `seed`; returns once the writer is well under way.
    pub fn start(dir: &Path, seed: u64) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (dir, flag, count) = (dir.to_path_buf(), stop.clone(), done.clone());
        let thread = std::thread::spawn(move || {
            let mut rng = Rng(seed);
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let name = dir.join(format!("w{}", i % 50));
                let len = 4096 + rng.below(192 * 1024);
                let data = rng.bytes(len);
                let mut f = std::fs::File::create(&name).unwrap();
                f.write_all(&data).unwrap();
                if i.is_multiple_of(2) {
                    f.sync_all().unwrap();
                }
                if i.is_multiple_of(7) {
                    std::fs::rename(&name, dir.join(format!("r{}", i % 5))).unwrap();
                }
                if i.is_multiple_of(9) {
                    let _ = std::fs::remove_file(dir.join(format!("w{}", (i + 25) % 50)));
                }
                i += 1;
                count.store(i, Ordering::Relaxed);
            }
        });
        let writer = Writer {
            stop,
            done,
            thread: Some(thread),
        };
        wait_for(20, "the writer to start", || writer.count() > 20);
        writer
    }

    /// The writes done so far.
    pub fn count(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the writer and waits for it; returns the writes it did. A panic in the writer
    /// (a failed write) fails the test here.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.count()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // A writer that panicked already failed its test; do not panic again in a drop.
            let _ = t.join();
        }
    }
}

/// `fsfreeze -f` on `dir`, thawed on drop: a failed assertion never leaves the test's file
/// system frozen. A thaw by hand before the drop is fine (the drop's thaw then fails, unheard).
pub struct Frozen(PathBuf);

impl Frozen {
    pub fn new(dir: &Path) -> Frozen {
        run("fsfreeze", &["-f", dir.to_str().unwrap()]);
        Frozen(dir.to_path_buf())
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0).output();
    }
}
