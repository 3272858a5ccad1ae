//! Sizes and the one place where chunk sizes are validated.
//!
//! A *sector* is 512 bytes, as in the kernel. A *chunk* is the unit of copy-on-write: a power of
//! two number of sectors. Every chunk-size rule of the kernel (`dm_exception_store_set_chunk_size`)
//! lives in [`ChunkSize::new`]; nothing else constructs a `ChunkSize`.

use std::fmt;

/// Bytes per sector: the unit of every size the kernel prints (`dmsetup status`, table lines).
pub const SECTOR_BYTES: u64 = 512;

/// Largest chunk size in sectors. The kernel rejects `chunk_size > INT_MAX >> 9`; the largest
/// power of two below that is 2^21 sectors (1 GiB).
pub const CHUNK_SECTORS_MAX: u32 = 1 << 21;

/// Why a chunk size was refused. The messages are the kernel's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkSizeError {
    Zero,
    NotPowerOfTwo(u64),
    NotMultipleOfBlockSize { sectors: u64, block_bytes: u32 },
    TooHigh(u64),
    Unparsable(String),
}

impl fmt::Display for ChunkSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChunkSizeError::Zero => write!(f, "Chunk size not set (0 sectors)"),
            ChunkSizeError::NotPowerOfTwo(s) => {
                write!(f, "Chunk size is not a power of 2 ({s} sectors)")
            }
            ChunkSizeError::NotMultipleOfBlockSize {
                sectors,
                block_bytes,
            } => write!(
                f,
                "Chunk size is not a multiple of device blocksize ({sectors} sectors, \
                 logical block size {block_bytes} bytes)"
            ),
            ChunkSizeError::TooHigh(s) => write!(
                f,
                "Chunk size is too high ({s} sectors; at most {CHUNK_SECTORS_MAX})"
            ),
            ChunkSizeError::Unparsable(w) => write!(f, "Invalid chunk size {w:?}"),
        }
    }
}

impl std::error::Error for ChunkSizeError {}

/// A validated chunk size. Invariant: a power of two number of sectors in
/// `1..=CHUNK_SECTORS_MAX`, and a multiple of the logical block size of the devices it was
/// validated against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkSize {
    shift_bytes: u32,
}

impl ChunkSize {
    /// Validates `sectors` as the kernel does: power of two, a multiple of every device's
    /// logical block size (`block_bytes`, e.g. the COW's and the origin's), at most 2^21 sectors.
    pub fn new(sectors: u64, block_bytes: &[u32]) -> Result<ChunkSize, ChunkSizeError> {
        if sectors == 0 {
            return Err(ChunkSizeError::Zero);
        }
        if !sectors.is_power_of_two() {
            return Err(ChunkSizeError::NotPowerOfTwo(sectors));
        }
        for &b in block_bytes {
            let block_sectors = (b as u64 / SECTOR_BYTES).max(1);
            if !sectors.is_multiple_of(block_sectors) {
                return Err(ChunkSizeError::NotMultipleOfBlockSize {
                    sectors,
                    block_bytes: b,
                });
            }
        }
        if sectors > (i32::MAX as u64 >> 9) {
            return Err(ChunkSizeError::TooHigh(sectors));
        }
        Ok(ChunkSize {
            shift_bytes: sectors.trailing_zeros() + 9,
        })
    }

    pub fn sectors(self) -> u64 {
        1 << (self.shift_bytes - 9)
    }

    pub fn bytes(self) -> u64 {
        1 << self.shift_bytes
    }

    /// The chunk that holds byte `offset`.
    pub fn chunk_of(self, offset: u64) -> u64 {
        offset >> self.shift_bytes
    }

    /// Byte offset of the first byte of `chunk`.
    pub fn start_of(self, chunk: u64) -> u64 {
        chunk << self.shift_bytes
    }

    /// Number of chunks needed to cover `bytes` (the last one may be partial).
    pub fn chunks_covering(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.bytes())
    }
}

impl fmt::Display for ChunkSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.sectors())
    }
}

/// Parses a chunk size as users write it: sectors in decimal (`8`), or KiB with a `k`/`K`
/// suffix (`4k` = 8 sectors). Returns sectors; `0` means "not specified" (as on a table line).
/// Validation against devices happens later, in [`ChunkSize::new`].
pub fn parse_chunk_sectors(word: &str) -> Result<u64, ChunkSizeError> {
    let bad = || ChunkSizeError::Unparsable(word.to_string());
    let (digits, multiplier) = match word.strip_suffix(['k', 'K']) {
        Some(d) => (d, 2u64),
        None => (word, 1u64),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let value: u64 = digits.parse().map_err(|_| bad())?;
    let sectors = value.checked_mul(multiplier).ok_or_else(bad)?;
    if sectors > u32::MAX as u64 {
        return Err(bad());
    }
    Ok(sectors)
}

/// A size as people write it: bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024;
/// `KiB`, `MB` and lower case too). Zero and overflowing sizes are refused.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let bad = || format!("invalid size {text:?} (examples: 256M, 10G, 1048576)");
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(digits_end);
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let value: u64 = digits.parse().map_err(|_| bad())?;
    value
        .checked_mul(1 << shift)
        .filter(|b| *b > 0)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_rules() {
        assert_eq!(ChunkSize::new(8, &[512, 512]).unwrap().bytes(), 4096);
        assert_eq!(ChunkSize::new(1, &[512]).unwrap().sectors(), 1);
        assert_eq!(ChunkSize::new(0, &[512]), Err(ChunkSizeError::Zero));
        assert_eq!(
            ChunkSize::new(12, &[512]),
            Err(ChunkSizeError::NotPowerOfTwo(12))
        );
        assert!(matches!(
            ChunkSize::new(4, &[512, 4096]),
            Err(ChunkSizeError::NotMultipleOfBlockSize { .. })
        ));
        assert!(ChunkSize::new(8, &[4096, 512]).is_ok());
        assert_eq!(
            ChunkSize::new(1 << 21, &[512]).unwrap().bytes(),
            1 << 30,
            "2^21 sectors is the largest legal chunk"
        );
        assert_eq!(
            ChunkSize::new(1 << 22, &[512]),
            Err(ChunkSizeError::TooHigh(1 << 22))
        );
    }

    #[test]
    fn chunk_arithmetic() {
        let cs = ChunkSize::new(16, &[512]).unwrap();
        assert_eq!(cs.chunk_of(8191), 0);
        assert_eq!(cs.chunk_of(8192), 1);
        assert_eq!(cs.start_of(3), 3 * 8192);
        assert_eq!(cs.chunks_covering(8193), 2);
        assert_eq!(cs.chunks_covering(0), 0);
    }

    #[test]
    fn parse_words() {
        assert_eq!(parse_chunk_sectors("8"), Ok(8));
        assert_eq!(parse_chunk_sectors("4k"), Ok(8));
        assert_eq!(parse_chunk_sectors("64K"), Ok(128));
        assert_eq!(parse_chunk_sectors("0"), Ok(0));
        for bad in ["", "k", "-8", "8s", "0x10", " 8", "99999999999"] {
            assert!(parse_chunk_sectors(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
