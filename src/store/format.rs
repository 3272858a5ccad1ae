//! The persistent store's on-disk format (see docs/format.md), encode and decode only.
//!
//! ```text
//! chunk 0            header: magic "SnAp" | valid | version 1 | chunk size (u32 LE each)
//! chunk 1            metadata area 0: E records of 16 bytes (old u64 LE, new u64 LE)
//! chunks 2..=1+E     data chunks of area 0
//! chunk 2+E          metadata area 1, and so on: area N at chunk 1 + N*(E+1)
//! ```
//! `E = chunk bytes / 16`. A record with `new == 0` ends the list.

use crate::units::ChunkSize;

/// `"SnAp"` read as a little-endian u32.
pub const HEADER_MAGIC: u32 = 0x7041_6E53;
/// The only version the kernel knows (`SNAPSHOT_DISK_VERSION`).
pub const DISK_VERSION: u32 = 1;
/// One exception record: two little-endian u64.
pub const AREA_RECORD_BYTES: usize = 16;
/// Bytes of the header the kernel reads; the rest of chunk 0 is written as zero.
pub const HEADER_BYTES: usize = 16;

/// snapfs's merge-in-progress marker, in bytes 16..28 of chunk 0, which the kernel ignores when
/// it reads the header: 8 ASCII bytes `snapfsMG`, then a u32 LE marker version (1). Written and
/// made durable before a merge first overwrites the origin; cleared when the merge completes.
pub const MERGE_MARKER: [u8; 8] = *b"snapfsMG";
pub const MERGE_MARKER_VERSION: u32 = 1;
/// Bytes 28..32, meaningful only with the marker: a u32 LE of merge flags. Older snapfs versions
/// write them as zero and do not read them (they resume a paused merge: safe, only not paused).
pub const MERGE_FLAGS_AT: usize = HEADER_BYTES + MERGE_MARKER.len() + 4;
/// Merge flag: the merge is paused (`pause NAME`) until `resume NAME`, across mounts.
pub const MERGE_FLAG_PAUSED: u32 = 1;
/// Bytes of chunk 0 that snapfs reads: the kernel's header, the merge marker and its flags.
pub const HEADER_READ_BYTES: usize = MERGE_FLAGS_AT + 4;

/// How many of the `HEADER_READ_BYTES` to read from a COW of `size` bytes: the flags only when
/// the device has them (a COW too small for them is refused later, by its size, as before the
/// flags existed), the header and marker always.
pub fn header_read_len(size: u64) -> usize {
    if size >= HEADER_READ_BYTES as u64 {
        HEADER_READ_BYTES
    } else {
        MERGE_FLAGS_AT
    }
}

const _: () =
    assert!(HEADER_MAGIC.to_le_bytes()[0] == b'S' && HEADER_MAGIC.to_le_bytes()[3] == b'p');
const _: () = assert!(AREA_RECORD_BYTES == 2 * std::mem::size_of::<u64>());

/// The first 16 bytes of chunk 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub magic: u32,
    pub valid: u32,
    pub version: u32,
    pub chunk_sectors: u32,
    /// snapfs's merge marker (not part of the kernel's header).
    pub merging: bool,
    /// The marker's paused flag (only with `merging`).
    pub merge_paused: bool,
}

impl Header {
    pub fn new(valid: bool, chunk: ChunkSize) -> Header {
        Header {
            magic: HEADER_MAGIC,
            valid: valid as u32,
            version: DISK_VERSION,
            chunk_sectors: chunk.sectors() as u32,
            merging: false,
            merge_paused: false,
        }
    }

    pub fn with_merging(self, merging: bool) -> Header {
        Header {
            merging,
            merge_paused: self.merge_paused && merging,
            ..self
        }
    }

    /// The marker with its paused flag (`paused` implies `merging`).
    pub fn with_merge_paused(self, paused: bool) -> Header {
        Header {
            merge_paused: paused && self.merging,
            ..self
        }
    }

    /// Decodes the first `HEADER_READ_BYTES` of chunk 0.
    pub fn decode(bytes: &[u8]) -> Header {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let marker_at = HEADER_BYTES + MERGE_MARKER.len();
        let merging = bytes[HEADER_BYTES..marker_at] == MERGE_MARKER
            && word(marker_at) == MERGE_MARKER_VERSION;
        Header {
            magic: word(0),
            valid: word(4),
            version: word(8),
            chunk_sectors: word(12),
            merging,
            merge_paused: merging && word(MERGE_FLAGS_AT) & MERGE_FLAG_PAUSED != 0,
        }
    }

    /// The whole header chunk as the kernel writes it: 16 bytes of header, then zeroes.
    pub fn encode_chunk(&self, chunk: ChunkSize) -> Vec<u8> {
        let mut buf = vec![0u8; chunk.bytes() as usize];
        buf[0..4].copy_from_slice(&self.magic.to_le_bytes());
        buf[4..8].copy_from_slice(&self.valid.to_le_bytes());
        buf[8..12].copy_from_slice(&self.version.to_le_bytes());
        buf[12..16].copy_from_slice(&self.chunk_sectors.to_le_bytes());
        if self.merging {
            let marker_at = HEADER_BYTES + MERGE_MARKER.len();
            buf[HEADER_BYTES..marker_at].copy_from_slice(&MERGE_MARKER);
            buf[marker_at..marker_at + 4].copy_from_slice(&MERGE_MARKER_VERSION.to_le_bytes());
            let flags = if self.merge_paused {
                MERGE_FLAG_PAUSED
            } else {
                0
            };
            buf[MERGE_FLAGS_AT..MERGE_FLAGS_AT + 4].copy_from_slice(&flags.to_le_bytes());
        }
        buf
    }
}

/// One exception record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub old_chunk: u64,
    pub new_chunk: u64,
}

impl Record {
    pub fn decode(area: &[u8], index: usize) -> Record {
        let at = index * AREA_RECORD_BYTES;
        let word = |i: usize| u64::from_le_bytes(area[i..i + 8].try_into().unwrap());
        Record {
            old_chunk: word(at),
            new_chunk: word(at + 8),
        }
    }

    pub fn encode(&self, area: &mut [u8], index: usize) {
        let at = index * AREA_RECORD_BYTES;
        area[at..at + 8].copy_from_slice(&self.old_chunk.to_le_bytes());
        area[at + 8..at + 16].copy_from_slice(&self.new_chunk.to_le_bytes());
    }

    /// `new_chunk == 0` ends the list (chunk 0 is the header, never data).
    pub fn is_terminator(&self) -> bool {
        self.new_chunk == 0
    }
}

/// Records per metadata area (`E`).
pub fn records_per_area(chunk: ChunkSize) -> u64 {
    chunk.bytes() / AREA_RECORD_BYTES as u64
}

/// The COW chunk holding metadata area `area`: `1 + area * (E + 1)`.
pub fn area_chunk(chunk: ChunkSize, area: u64) -> u64 {
    1 + area * (records_per_area(chunk) + 1)
}

/// Whether COW chunk `c` is a metadata area.
pub fn is_area_chunk(chunk: ChunkSize, c: u64) -> bool {
    c >= 1 && c % (records_per_area(chunk) + 1) == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::header_bytes;

    fn cs8() -> ChunkSize {
        ChunkSize::new(8, &[512]).unwrap()
    }

    #[test]
    fn header_bytes_field_by_field() {
        let chunk = Header::new(true, cs8()).encode_chunk(cs8());
        assert_eq!(chunk.len(), 4096);
        assert_eq!(&chunk[..16], &header_bytes(1, 8));
        assert!(
            chunk[16..].iter().all(|&b| b == 0),
            "rest of chunk 0 is zero"
        );
        let invalid = Header::new(false, cs8()).encode_chunk(cs8());
        assert_eq!(
            &invalid[4..8],
            &[0, 0, 0, 0],
            "valid = 0 after invalidation"
        );
        assert_eq!(Header::decode(&chunk), Header::new(true, cs8()));
    }

    #[test]
    fn merge_marker_bytes() {
        let merging = Header::new(true, cs8()).with_merging(true);
        let chunk = merging.encode_chunk(cs8());
        #[rustfmt::skip]
        let expected: [u8; 28] = [
            0x53, 0x6e, 0x41, 0x70, 1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, // kernel header
            b's', b'n', b'a', b'p', b'f', b's', b'M', b'G',             // marker
            0x01, 0x00, 0x00, 0x00,                                     // marker version 1
        ];
        assert_eq!(&chunk[..28], &expected);
        assert!(chunk[28..].iter().all(|&b| b == 0));
        assert_eq!(Header::decode(&chunk), merging);
        assert!(!Header::decode(&Header::new(true, cs8()).encode_chunk(cs8())).merging);
    }

    #[test]
    fn merge_paused_flag_bytes() {
        let paused = Header::new(true, cs8())
            .with_merging(true)
            .with_merge_paused(true);
        let chunk = paused.encode_chunk(cs8());
        assert_eq!(
            &chunk[16..28],
            b"snapfsMG\x01\x00\x00\x00",
            "marker unchanged"
        );
        assert_eq!(&chunk[28..32], &[1, 0, 0, 0], "flags: paused");
        assert!(chunk[32..].iter().all(|&b| b == 0));
        assert_eq!(Header::decode(&chunk), paused);
        // A marker written by an older snapfs (flags zero) is a running merge.
        let running = Header::decode(
            &Header::new(true, cs8())
                .with_merging(true)
                .encode_chunk(cs8()),
        );
        assert!(running.merging && !running.merge_paused);
        // The flag means nothing without the marker.
        let mut stray = Header::new(true, cs8()).encode_chunk(cs8());
        stray[28] = 1;
        assert!(!Header::decode(&stray).merge_paused);
        assert!(!paused.with_merging(false).merge_paused);
    }

    #[test]
    fn record_bytes_field_by_field() {
        // Origin chunk 0x1234 saved in COW chunk 2, then the terminator.
        let mut area = vec![0u8; 4096];
        Record {
            old_chunk: 0x1234,
            new_chunk: 2,
        }
        .encode(&mut area, 0);
        #[rustfmt::skip]
        let expected: [u8; 32] = [
            0x34, 0x12, 0, 0, 0, 0, 0, 0, // old_chunk LE
            0x02, 0, 0, 0, 0, 0, 0, 0,    // new_chunk LE
            0, 0, 0, 0, 0, 0, 0, 0,       // record 1: old 0
            0, 0, 0, 0, 0, 0, 0, 0,       // new 0 = end of list
        ];
        assert_eq!(&area[..32], &expected);
        assert!(Record::decode(&area, 1).is_terminator());
        // Origin chunk 2^32 in COW chunk 259.
        Record {
            old_chunk: 1 << 32,
            new_chunk: 259,
        }
        .encode(&mut area, 5);
        assert_eq!(
            &area[80..96],
            &[0, 0, 0, 0, 1, 0, 0, 0, 3, 1, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn area_placement_for_4k_chunks() {
        let cs = cs8();
        assert_eq!(records_per_area(cs), 256);
        assert_eq!(area_chunk(cs, 0), 1);
        assert_eq!(area_chunk(cs, 1), 258);
        assert_eq!(area_chunk(cs, 2), 515);
        assert!(is_area_chunk(cs, 1) && is_area_chunk(cs, 258) && is_area_chunk(cs, 515));
        assert!(!is_area_chunk(cs, 0) && !is_area_chunk(cs, 2) && !is_area_chunk(cs, 257));
        let one = ChunkSize::new(1, &[512]).unwrap();
        assert_eq!(records_per_area(one), 32);
        assert_eq!(area_chunk(one, 1), 34);
    }
}
