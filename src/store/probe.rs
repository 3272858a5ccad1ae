//! What a device holds before it becomes a COW: a snapshot store, nothing (blank), or something
//! precious that formatting would destroy.
//!
//! A persistent store formats a COW whose header is zero; a transient store writes data from
//! chunk 0 on. Neither may do that to a file system, a partition table, an LVM label, swap, or
//! any data: an ext4 image starts with 1024 zero bytes, so a zero header proves nothing. As
//! mkfs does, snapfs looks first and refuses unless forced.
//!
//! "Blank" means: the first [`PROBE_BYTES`] bytes (or the whole device if smaller), and the
//! whole first chunk, up to [`PROBE_CHUNK_MAX`], are zero. That window holds every signature
//! listed in [`SIGNATURES`] (btrfs's superblock is the furthest, at 64 KiB) and the chunk a
//! store would write first.

use super::format::HEADER_MAGIC;
use crate::device::{Device, IoBuf};
use std::io;

/// The window that must be zero for a device to count as blank.
pub const PROBE_BYTES: u64 = 128 << 10;

/// A first chunk larger than this is checked up to here only.
pub const PROBE_CHUNK_MAX: u64 = 1 << 20;

/// What a device holds, as far as its first bytes tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// Zero throughout the probe window.
    Blank,
    /// A snapshot header (the kernel's "SnAp" magic).
    SnapshotStore,
    /// Anything else: the description names what was recognised, or where data was found.
    Foreign(String),
}

/// Known signatures: (offset, bytes, what). Offsets are from the start of the device.
const SIGNATURES: &[(u64, &[u8], &str)] = &[
    (1080, &[0x53, 0xef], "an ext2/3/4 file system"),
    (0, b"XFSB", "an XFS file system"),
    (65536 + 64, b"_BHRfS_M", "a btrfs file system"),
    (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
    (0, b"hsqs", "a squashfs image"),
    (32769, b"CD001", "an ISO 9660 image"),
    (3, b"NTFS    ", "an NTFS file system"),
    (512, b"EFI PART", "a GPT partition table"),
    (4096, b"EFI PART", "a GPT partition table"),
    (0, b"LABELONE", "an LVM physical volume"),
    (512, b"LABELONE", "an LVM physical volume"),
    (1024, b"LABELONE", "an LVM physical volume"),
    (1536, b"LABELONE", "an LVM physical volume"),
    (4086, b"SWAPSPACE2", "swap space"),
    (16374, b"SWAPSPACE2", "swap space"),
    (65526, b"SWAPSPACE2", "swap space"),
    (4086, b"SWAP-SPACE", "swap space"),
    (510, &[0x55, 0xaa], "a partition table or boot sector (MBR)"),
];

/// How many bytes [`probe`] reads (and [`wipe`] zeroes) for a chunk of `chunk_bytes`.
pub fn window(device_bytes: u64, chunk_bytes: u64) -> u64 {
    PROBE_BYTES
        .max(chunk_bytes.min(PROBE_CHUNK_MAX))
        .min(device_bytes)
}

/// Reads the probe window of `dev` and says what it holds.
pub fn probe(dev: &Device, chunk_bytes: u64) -> io::Result<Content> {
    let len = window(dev.size_bytes(), chunk_bytes);
    let mut buf = IoBuf::new(len as usize);
    dev.read_at(&mut buf, 0)?;
    Ok(classify(&buf))
}

/// Classifies the first bytes of a device.
pub fn classify(head: &[u8]) -> Content {
    if head.len() >= 4 && head[..4] == HEADER_MAGIC.to_le_bytes() {
        return Content::SnapshotStore;
    }
    for &(at, magic, what) in SIGNATURES {
        let at = at as usize;
        if head.get(at..at + magic.len()) == Some(magic) {
            return Content::Foreign(format!("{what} (signature at byte {at})"));
        }
    }
    match head.iter().position(|&b| b != 0) {
        None => Content::Blank,
        Some(at) if at < 4 => {
            let magic = u32::from_le_bytes(head[..4].try_into().unwrap());
            Content::Foreign(format!(
                "data but no snapshot header (magic {magic:#010x}, expected \
                 {HEADER_MAGIC:#010x} \"SnAp\")"
            ))
        }
        Some(at) => Content::Foreign(format!("data (a non-zero byte at offset {at})")),
    }
}

/// Zeroes the probe window: what a transient store leaves behind when it ends cleanly, so that
/// the next transient snapshot on the same device finds it blank.
pub fn wipe(dev: &Device, chunk_bytes: u64) -> io::Result<()> {
    let len = window(dev.size_bytes(), chunk_bytes);
    dev.write_zeroes(0, len)?;
    dev.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; PROBE_BYTES as usize];
        head[at..at + bytes.len()].copy_from_slice(bytes);
        head
    }

    #[test]
    fn recognises_what_it_must_not_format() {
        assert_eq!(classify(&vec![0u8; PROBE_BYTES as usize]), Content::Blank);
        assert_eq!(classify(&[]), Content::Blank);
        assert_eq!(
            classify(&with(0, &HEADER_MAGIC.to_le_bytes())),
            Content::SnapshotStore
        );
        for (at, magic, what) in SIGNATURES {
            match classify(&with(*at as usize, magic)) {
                Content::Foreign(d) => assert!(d.starts_with(what), "{d} vs {what}"),
                other => panic!("{what}: {other:?}"),
            }
        }
        match classify(&with(70_000, b"x")) {
            Content::Foreign(d) => assert!(d.contains("offset 70000"), "{d}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn windows() {
        assert_eq!(window(1 << 30, 4096), PROBE_BYTES);
        assert_eq!(window(1 << 30, 512 << 10), 512 << 10);
        assert_eq!(window(1 << 30, 64 << 20), PROBE_CHUNK_MAX);
        assert_eq!(window(17 << 10, 4096), 17 << 10);
    }
}
