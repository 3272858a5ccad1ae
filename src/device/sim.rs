//! A simulated device for crash and fault tests.
//!
//! Devices made by one [`SimWorld`] share a clock of flush calls, so a test can "pull the plug" on
//! all of them at once at the n-th flush anywhere (the flush points of a workload), or at any
//! moment. Each device keeps two images: `live` (what reads see) and `durable` (what survives a
//! crash). A write lands in `live` and is remembered as unflushed; `flush` copies `live` to
//! `durable`. A crash image is `durable` plus, in [`CrashMode::Tear`], a random subset of the
//! unflushed writes' sectors (a write that partly reached the medium, in any order), or nothing
//! of them in [`CrashMode::Drop`]. After the crash point every operation fails with EIO, so the
//! workload stops quickly; the test reopens devices from the captured images.
//!
//! Faults: each device can be told to fail reads, writes or flushes (all of them, or after a
//! countdown), to test error paths.

use super::{BlockDevice, check_range};
use parking_lot::Mutex;
use std::io;
use std::sync::Arc;

/// What part of the not-yet-flushed writes a crash keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Nothing that was not flushed survives.
    Drop,
    /// Each 512-byte sector of each unflushed write survives with probability 1/2 (seeded).
    Tear { seed: u64 },
}

#[derive(Default)]
struct Faults {
    reads: bool,
    writes: bool,
    flushes: bool,
    /// Fail every write once this many more writes have succeeded.
    writes_after: Option<u64>,
}

struct SimState {
    name: String,
    block_bytes: u32,
    live: Vec<u8>,
    durable: Vec<u8>,
    unflushed: Vec<(u64, Vec<u8>)>,
    faults: Faults,
    writes: u64,
}

#[derive(Default)]
struct World {
    devices: Vec<SimState>,
    flushes: u64,
    freeze_at_flush: Option<(u64, CrashMode)>,
    crash_images: Option<Vec<Vec<u8>>>,
}

/// The shared clock and crash switch of a set of simulated devices.
#[derive(Default)]
pub struct SimWorld {
    world: Mutex<World>,
}

/// One simulated device of a [`SimWorld`].
pub struct SimDevice {
    world: Arc<SimWorld>,
    index: usize,
}

fn frozen_error() -> io::Error {
    io::Error::other("simulated device is frozen by a crash")
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("injected {what} error"))
}

impl World {
    fn images(&self, mode: CrashMode) -> Vec<Vec<u8>> {
        let mut rng = crate::rng::Rng(match mode {
            CrashMode::Drop => 0,
            CrashMode::Tear { seed } => seed,
        });
        self.devices
            .iter()
            .map(|d| {
                let mut img = d.durable.clone();
                if let CrashMode::Tear { .. } = mode {
                    for (off, data) in &d.unflushed {
                        for (i, sector) in data.chunks(512).enumerate() {
                            if rng.next() & 1 == 1 {
                                let at = *off as usize + i * 512;
                                img[at..at + sector.len()].copy_from_slice(sector);
                            }
                        }
                    }
                }
                img
            })
            .collect()
    }
}

impl SimWorld {
    pub fn new() -> Arc<SimWorld> {
        Arc::new(SimWorld::default())
    }

    /// Adds a zero-filled device.
    pub fn device(self: &Arc<Self>, name: &str, size_bytes: u64) -> Arc<SimDevice> {
        self.device_from(name, vec![0; size_bytes as usize], 512)
    }

    /// Adds a device with the given (durable) content and logical block size.
    pub fn device_from(
        self: &Arc<Self>,
        name: &str,
        image: Vec<u8>,
        block_bytes: u32,
    ) -> Arc<SimDevice> {
        let mut w = self.world.lock();
        w.devices.push(SimState {
            name: name.to_string(),
            block_bytes,
            durable: image.clone(),
            live: image,
            unflushed: Vec::new(),
            faults: Faults::default(),
            writes: 0,
        });
        Arc::new(SimDevice {
            world: Arc::clone(self),
            index: w.devices.len() - 1,
        })
    }

    /// Number of flush calls so far, on all devices.
    pub fn flush_count(&self) -> u64 {
        self.world.lock().flushes
    }

    /// Crash when the `n`-th flush (counting from 1) is called, before it takes effect.
    pub fn freeze_at_flush(&self, n: u64, mode: CrashMode) {
        self.world.lock().freeze_at_flush = Some((n, mode));
    }

    /// Crash now; returns every device's image in creation order.
    pub fn crash_now(&self, mode: CrashMode) -> Vec<Vec<u8>> {
        let mut w = self.world.lock();
        let images = w.images(mode);
        w.crash_images = Some(images.clone());
        images
    }

    /// The images captured by the crash, if it happened.
    pub fn crash_images(&self) -> Option<Vec<Vec<u8>>> {
        self.world.lock().crash_images.clone()
    }

    /// The durable image of every device (what a crash in `Drop` mode would keep).
    pub fn durable_images(&self) -> Vec<Vec<u8>> {
        self.world.lock().images(CrashMode::Drop)
    }
}

impl SimDevice {
    fn with<R>(&self, f: impl FnOnce(&mut SimState) -> io::Result<R>) -> io::Result<R> {
        let mut w = self.world.world.lock();
        if w.crash_images.is_some() {
            return Err(frozen_error());
        }
        f(&mut w.devices[self.index])
    }

    pub fn fail_reads(&self, on: bool) {
        self.world.world.lock().devices[self.index].faults.reads = on;
    }

    pub fn fail_writes(&self, on: bool) {
        self.world.world.lock().devices[self.index].faults.writes = on;
    }

    pub fn fail_flushes(&self, on: bool) {
        self.world.world.lock().devices[self.index].faults.flushes = on;
    }

    /// Let `n` more writes succeed, then fail every write.
    pub fn fail_writes_after(&self, n: u64) {
        let mut w = self.world.world.lock();
        let d = &mut w.devices[self.index];
        d.faults.writes_after = Some(d.writes + n);
    }

    /// The bytes reads currently see.
    pub fn live_image(&self) -> Vec<u8> {
        self.world.world.lock().devices[self.index].live.clone()
    }
}

impl BlockDevice for SimDevice {
    fn size_bytes(&self) -> u64 {
        self.world.world.lock().devices[self.index].live.len() as u64
    }

    fn logical_block_size(&self) -> u32 {
        self.world.world.lock().devices[self.index].block_bytes
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.with(|d| {
            if d.faults.reads {
                return Err(injected("read"));
            }
            check_range(offset, buf.len() as u64, d.live.len() as u64)?;
            buf.copy_from_slice(&d.live[offset as usize..offset as usize + buf.len()]);
            Ok(())
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|d| {
            let countdown_over = d.faults.writes_after.is_some_and(|n| d.writes >= n);
            if d.faults.writes || countdown_over {
                return Err(injected("write"));
            }
            check_range(offset, buf.len() as u64, d.live.len() as u64)?;
            d.live[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
            d.unflushed.push((offset, buf.to_vec()));
            d.writes += 1;
            Ok(())
        })
    }

    fn flush(&self) -> io::Result<()> {
        let mut w = self.world.world.lock();
        if w.crash_images.is_some() {
            return Err(frozen_error());
        }
        w.flushes += 1;
        if let Some((n, mode)) = w.freeze_at_flush
            && n == w.flushes
        {
            let images = w.images(mode);
            w.crash_images = Some(images);
            return Err(frozen_error());
        }
        let d = &mut w.devices[self.index];
        if d.faults.flushes {
            return Err(injected("flush"));
        }
        d.durable.clone_from(&d.live);
        d.unflushed.clear();
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        super::write_zero_pieces(self, offset, len)
    }

    fn name(&self) -> String {
        self.world.world.lock().devices[self.index].name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_flushed_writes() {
        let world = SimWorld::new();
        let a = world.device("a", 4096);
        a.write_at(&[1; 512], 0).unwrap();
        a.flush().unwrap();
        a.write_at(&[2; 512], 512).unwrap();
        let images = world.crash_now(CrashMode::Drop);
        assert_eq!(&images[0][..512], &[1; 512][..]);
        assert_eq!(
            &images[0][512..1024],
            &[0; 512][..],
            "unflushed write dropped"
        );
        assert!(a.read_at(&mut [0; 512], 0).is_err(), "frozen after a crash");
    }

    #[test]
    fn freeze_at_flush_point_and_tear() {
        let world = SimWorld::new();
        let a = world.device("a", 64 * 512);
        world.freeze_at_flush(2, CrashMode::Tear { seed: 7 });
        a.write_at(&[1; 512], 0).unwrap();
        a.flush().unwrap();
        a.write_at(&[2; 32 * 512], 0).unwrap();
        assert!(a.flush().is_err(), "the second flush is the crash point");
        let img = world.crash_images().unwrap().remove(0);
        let torn: Vec<u8> = img[..32 * 512].chunks(512).map(|s| s[0]).collect();
        assert!(
            torn[0] == 1 || torn[0] == 2,
            "flushed sector keeps old or new"
        );
        assert!(torn[1..].iter().all(|&b| b == 0 || b == 2), "sector-atomic");
        assert!(torn.contains(&2), "some sectors survived");
        assert!(torn.iter().any(|&b| b != 2), "some sectors were lost");
    }

    #[test]
    fn injected_faults() {
        let world = SimWorld::new();
        let a = world.device("a", 4096);
        a.fail_writes_after(1);
        a.write_at(&[1; 512], 0).unwrap();
        assert!(a.write_at(&[1; 512], 0).is_err());
        a.fail_reads(true);
        assert!(a.read_at(&mut [0; 1], 0).is_err());
        a.fail_flushes(true);
        assert!(a.flush().is_err());
    }
}
