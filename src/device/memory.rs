//! An in-memory device: a byte vector behind a read-write lock. Writes are durable at once.

use super::{BlockDevice, check_range};
use parking_lot::RwLock;
use std::io;

pub struct MemDevice {
    name: String,
    data: RwLock<Vec<u8>>,
    block_bytes: u32,
}

impl MemDevice {
    pub fn new(name: &str, size_bytes: u64) -> MemDevice {
        MemDevice::with_block_size(name, size_bytes, 512)
    }

    pub fn with_block_size(name: &str, size_bytes: u64, block_bytes: u32) -> MemDevice {
        MemDevice::from_bytes(name, vec![0; size_bytes as usize], block_bytes)
    }

    pub fn from_bytes(name: &str, data: Vec<u8>, block_bytes: u32) -> MemDevice {
        MemDevice {
            name: name.to_string(),
            data: RwLock::new(data),
            block_bytes,
        }
    }

    /// A copy of the whole content.
    pub fn contents(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    /// Grows or shrinks the device (a COW being extended).
    pub fn resize(&self, size_bytes: u64) {
        self.data.write().resize(size_bytes as usize, 0);
    }
}

impl BlockDevice for MemDevice {
    fn can_grow(&self) -> bool {
        true
    }

    fn grow(&self, bytes: u64) -> io::Result<()> {
        let mut data = self.data.write();
        if bytes as usize > data.len() {
            data.resize(bytes as usize, 0);
        }
        Ok(())
    }

    fn size_bytes(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn logical_block_size(&self) -> u32 {
        self.block_bytes
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let data = self.data.read();
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        buf.copy_from_slice(&data[offset as usize..offset as usize + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut data = self.data.write();
        check_range(offset, buf.len() as u64, data.len() as u64)?;
        data[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut data = self.data.write();
        check_range(offset, len, data.len() as u64)?;
        data[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
