//! Backing devices: the origin and the COW devices.
//!
//! Everything snapfs does to storage goes through [`BlockDevice`]. Its implementations:
//! [`FileDevice`] (regular files and block devices; the only code that opens them),
//! [`MemDevice`] (a plain in-memory image) and, for tests only (`cfg(test)` or the `testing`
//! feature), `SimDevice` (an in-memory device with a volatile write cache that tests can crash,
//! tear and fail on demand) and `Wrapped` (another device with hooks in front of some of its
//! methods).

mod file;
mod iobuf;
mod memory;
// The crash simulator is test infrastructure: unit tests, and integration tests through the
// `testing` feature (which the crate's dev-dependency on itself turns on); never in a release
// build.
#[cfg(any(test, feature = "testing"))]
mod sim;
#[cfg(any(test, feature = "testing"))]
mod wrapped;

pub use file::{FileDevice, OpenMode};
pub use iobuf::{IO_ALIGN, IoBuf};
pub use memory::MemDevice;
#[cfg(any(test, feature = "testing"))]
pub use sim::{CrashMode, SimDevice, SimWorld};
#[cfg(any(test, feature = "testing"))]
pub use wrapped::{DeviceHooks, Wrapped};

use std::io;
use std::sync::Arc;

/// A device addressed by byte offset.
///
/// Contract for every implementation:
/// - `read_at`/`write_at` transfer the whole buffer or fail; a range beyond `size_bytes()` fails
///   with `UnexpectedEof` (reads) or `WriteZero`/`InvalidInput` (writes) and transfers nothing.
/// - A write that returned may still sit in a volatile cache: only a later successful `flush`
///   makes it durable (it survives a crash). `flush` covers every write that returned before it
///   was called.
/// - `write_zeroes` and `discard` both make the range read back as zeroes, or fail: a discard
///   that would leave other bytes (`BLKDISCARD` on most devices) is never used. `write_zeroes`
///   keeps the space allocated where the device can tell the difference; `discard` frees it
///   where the device can (a hole in a file, an unmapping write-zeroes on a block device).
///   The volume uses `discard` only where an option or feature asks for space to be freed
///   (docs/discard.md).
pub trait BlockDevice: Send + Sync {
    /// Current size in bytes. May grow while in use (an extended COW is used at once).
    fn size_bytes(&self) -> u64;
    /// Logical block size in bytes (512 for files).
    fn logical_block_size(&self) -> u32;
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Durability barrier for every write that completed before the call.
    fn flush(&self) -> io::Result<()>;
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Bytes of real storage in use, where the device can tell (sparse files); `None` otherwise.
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
    /// A name for messages: the path, or a test label.
    fn name(&self) -> String;
    /// Whether [`BlockDevice::grow`] can work (a regular file; not a block device).
    fn can_grow(&self) -> bool {
        false
    }
    /// Grows the device to `bytes` (never shrinks it). Devices that cannot grow fail with
    /// `Unsupported`.
    fn grow(&self, bytes: u64) -> io::Result<()> {
        let _ = bytes;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{} cannot grow", self.name()),
        ))
    }
    /// `(available, total)` bytes of the file system holding a file-backed device, where
    /// there is one.
    fn host_space(&self) -> Option<(u64, u64)> {
        None
    }
}

/// A shared handle to a device.
pub type Device = Arc<dyn BlockDevice>;

/// Checks that `[offset, offset + len)` lies inside a device of `size` bytes.
pub(crate) fn check_range(offset: u64, len: u64, size: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("range {offset}+{len} is beyond the device end ({size} bytes)"),
        )),
    }
}

/// Writes zeroes over a range in bounded pieces; the fallback for devices without a native
/// zeroing operation.
pub(crate) fn write_zero_pieces(dev: &dyn BlockDevice, offset: u64, len: u64) -> io::Result<()> {
    const PIECE_BYTES: u64 = 1 << 20;
    let zeros = vec![0u8; PIECE_BYTES.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(PIECE_BYTES);
        dev.write_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}
