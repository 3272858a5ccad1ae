//! A test device that forwards every call to an inner device except the ones its hooks change:
//! each test wrapper (a device that fails some reads, delays flushes, records writes, ...)
//! states only what it does differently, and every method it does not mention (including the
//! ones added to [`BlockDevice`] later) keeps forwarding.

use super::BlockDevice;
use std::io;
use std::ops::Deref;
use std::sync::Arc;

/// What a [`Wrapped`] device does instead of forwarding. Every method defaults to forwarding
/// to `inner`; a hook that still wants the inner device's behaviour calls it itself.
pub trait DeviceHooks<T: BlockDevice + ?Sized>: Send + Sync {
    fn read_at(&self, inner: &T, buf: &mut [u8], offset: u64) -> io::Result<()> {
        inner.read_at(buf, offset)
    }
    fn write_at(&self, inner: &T, buf: &[u8], offset: u64) -> io::Result<()> {
        inner.write_at(buf, offset)
    }
    fn flush(&self, inner: &T) -> io::Result<()> {
        inner.flush()
    }
    fn discard(&self, inner: &T, offset: u64, len: u64) -> io::Result<()> {
        inner.discard(offset, len)
    }
    fn write_zeroes(&self, inner: &T, offset: u64, len: u64) -> io::Result<()> {
        inner.write_zeroes(offset, len)
    }
}

/// `inner` with `hooks` in front of it. Derefs to the hooks, so a test reaches the state its
/// hooks keep (a gate to hold, a log to take) through the device handle.
pub struct Wrapped<T: ?Sized, H> {
    pub inner: Arc<T>,
    pub hooks: H,
}

impl<T: BlockDevice + ?Sized, H: DeviceHooks<T>> Wrapped<T, H> {
    pub fn around(inner: Arc<T>, hooks: H) -> Wrapped<T, H> {
        Wrapped { inner, hooks }
    }
}

impl<T: ?Sized, H> Deref for Wrapped<T, H> {
    type Target = H;
    fn deref(&self) -> &H {
        &self.hooks
    }
}

impl<T: BlockDevice + ?Sized, H: DeviceHooks<T>> BlockDevice for Wrapped<T, H> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn logical_block_size(&self) -> u32 {
        self.inner.logical_block_size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.hooks.read_at(&self.inner, buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.hooks.write_at(&self.inner, buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.hooks.flush(&self.inner)
    }
    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.hooks.discard(&self.inner, offset, len)
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.hooks.write_zeroes(&self.inner, offset, len)
    }
    fn allocated_bytes(&self) -> Option<u64> {
        self.inner.allocated_bytes()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn can_grow(&self) -> bool {
        self.inner.can_grow()
    }
    fn grow(&self, bytes: u64) -> io::Result<()> {
        self.inner.grow(bytes)
    }
    fn host_space(&self) -> Option<(u64, u64)> {
        self.inner.host_space()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    /// Fails writes, counts flushes; everything else reaches the inner device.
    struct ReadOnlyCounting(parking_lot::Mutex<u32>);

    impl DeviceHooks<MemDevice> for ReadOnlyCounting {
        fn write_at(&self, _: &MemDevice, _: &[u8], _: u64) -> io::Result<()> {
            Err(io::Error::other("read-only"))
        }
        fn flush(&self, inner: &MemDevice) -> io::Result<()> {
            *self.0.lock() += 1;
            inner.flush()
        }
    }

    #[test]
    fn hooks_replace_only_what_they_name() {
        let inner = Arc::new(MemDevice::from_bytes("m", vec![7; 1024], 512));
        let dev = Wrapped::around(inner.clone(), ReadOnlyCounting(Default::default()));
        assert!(dev.write_at(&[1; 512], 0).is_err());
        assert_eq!(
            inner.contents(),
            vec![7; 1024],
            "the hook's refusal wrote nothing"
        );
        dev.flush().unwrap();
        dev.flush().unwrap();
        assert_eq!(*dev.0.lock(), 2, "flushes reach the hook, which derefs");
        let mut buf = [0u8; 512];
        dev.read_at(&mut buf, 512).unwrap();
        assert_eq!(buf, [7; 512]);
        dev.write_zeroes(0, 512).unwrap();
        assert_eq!(inner.contents()[..512], [0; 512], "write_zeroes forwarded");
        assert_eq!(
            (dev.size_bytes(), dev.name(), dev.can_grow()),
            (1024, "m".to_string(), true)
        );
        dev.grow(2048).unwrap();
        assert_eq!(inner.size_bytes(), 2048, "grow forwarded");
    }
}
