//! The COW format of docs/format.md, written and read byte by byte, independently of the store
//! under test: the test suites' one reference of the format. Writers build images field by
//! field (`put_header`, `put_record_at`, `store_image`); readers (`word32`, `record_from`,
//! `list_in`, `reference_list`) read them back by the document's rules, never with the
//! store's decoder.

// Each test binary uses a different subset.
#![allow(dead_code)]

use std::collections::HashSet;

const SECTOR: u64 = 512;
/// `"SnAp"` read as a little-endian u32.
pub const SNAP: u32 = u32::from_le_bytes(*b"SnAp");
/// snapfs's merge marker in bytes 16..28 of chunk 0: `snapfsMG` and version 1 (u32 LE).
pub const MARKER: [u8; 12] = *b"snapfsMG\x01\x00\x00\x00";
/// Chunk numbers must fit the kernel's 56-bit in-memory field (the top 8 bits count runs): a
/// record naming a larger one is refused.
pub const CHUNK_LIMIT: u64 = 1 << 56;

/// Geometry of a persistent store: chunk size in sectors.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub cs: u64,
}

impl Layout {
    pub fn bytes(self) -> u64 {
        self.cs * SECTOR
    }

    /// `E`: records per metadata area.
    pub fn per_area(self) -> u64 {
        self.bytes() / 16
    }

    /// Chunk of metadata area `n`: `1 + n * (E + 1)`.
    pub fn area(self, n: u64) -> u64 {
        1 + n * (self.per_area() + 1)
    }

    pub fn is_area(self, c: u64) -> bool {
        c >= 1 && c % (self.per_area() + 1) == 1
    }

    /// COW chunk of the k-th exception (from 0) when allocated in order.
    pub fn kth(self, k: u64) -> u64 {
        2 + k + k / self.per_area()
    }

    /// Byte offset of record `i` of area `n`.
    pub fn record_at(self, n: u64, i: u64) -> usize {
        (self.area(n) * self.bytes() + 16 * i) as usize
    }

    /// Byte offset of the k-th record of the list.
    pub fn kth_record_at(self, k: u64) -> usize {
        self.record_at(k / self.per_area(), k % self.per_area())
    }
}

/// Writes the kernel's 16 header bytes.
pub fn put_header(img: &mut [u8], magic: u32, valid: u32, version: u32, chunk_sectors: u32) {
    img[0..4].copy_from_slice(&magic.to_le_bytes());
    img[4..8].copy_from_slice(&valid.to_le_bytes());
    img[8..12].copy_from_slice(&version.to_le_bytes());
    img[12..16].copy_from_slice(&chunk_sectors.to_le_bytes());
}

/// Writes `(old, new)` at byte `at`.
pub fn put_record_at(img: &mut [u8], at: usize, old: u64, new: u64) {
    img[at..at + 8].copy_from_slice(&old.to_le_bytes());
    img[at + 8..at + 16].copy_from_slice(&new.to_le_bytes());
}

pub fn record_from(img: &[u8], at: usize) -> (u64, u64) {
    let word = |i: usize| u64::from_le_bytes(img[i..i + 8].try_into().unwrap());
    (word(at), word(at + 8))
}

/// A valid store of `chunks` chunks holding `list` (k-th record in place k), all else zero.
pub fn store_image(l: Layout, chunks: u64, list: &[(u64, u64)]) -> Vec<u8> {
    let mut img = vec![0u8; (chunks * l.bytes()) as usize];
    put_header(&mut img, SNAP, 1, 1, l.cs as u32);
    for (k, &(old, new)) in (0u64..).zip(list) {
        put_record_at(&mut img, l.kth_record_at(k), old, new);
    }
    img
}

/// `n` records as the store allocates them, origin chunks `old(k)`.
pub fn in_order(l: Layout, n: u64, old: impl Fn(u64) -> u64) -> Vec<(u64, u64)> {
    (0..n).map(|k| (old(k), l.kth(k))).collect()
}

/// Data chunk `new` of a store image filled with a recognisable pattern.
pub fn fill_chunk(img: &mut [u8], l: Layout, new: u64, tag: u8) {
    let at = (new * l.bytes()) as usize;
    for (i, b) in img[at..at + l.bytes() as usize].iter_mut().enumerate() {
        *b = tag ^ (i as u8);
    }
}

/// The little-endian u32 at byte `at` (the header's words: magic 0, valid 4, version 8,
/// chunk size 12).
pub fn word32(img: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(img[at..at + 4].try_into().unwrap())
}

/// The records the image holds up to its terminator (for choosing what to mutate).
pub fn list_in(image: &[u8], l: Layout) -> Vec<(u64, u64)> {
    let mut list = Vec::new();
    for k in 0.. {
        let at = l.kth_record_at(k);
        if at + 16 > image.len() {
            break;
        }
        let r = record_from(image, at);
        if r.1 == 0 {
            break;
        }
        list.push(r);
    }
    list
}

/// Reads the record list area by area and checks every rule of the format.
pub fn reference_list(
    img: &[u8],
    l: Layout,
    origin_bytes: u64,
) -> Result<Vec<(u64, u64)>, &'static str> {
    let cow_chunks = img.len() as u64 / l.bytes();
    let origin_chunks = origin_bytes.div_ceil(l.bytes());
    let mut list = Vec::new();
    'areas: for area in 0.. {
        if l.area(area) >= cow_chunks {
            return Err("area beyond the COW");
        }
        for i in 0..l.per_area() {
            let (old, new) = record_from(img, l.record_at(area, i));
            if new == 0 {
                break 'areas;
            }
            if new >= CHUNK_LIMIT || l.is_area(new) || new >= cow_chunks || old >= origin_chunks {
                return Err("record out of range");
            }
            list.push((old, new));
        }
    }
    let olds: HashSet<u64> = list.iter().map(|r| r.0).collect();
    let news: HashSet<u64> = list.iter().map(|r| r.1).collect();
    if olds.len() != list.len() || news.len() != list.len() {
        return Err("duplicate");
    }
    Ok(list)
}
