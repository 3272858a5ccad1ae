//! Sizes as people write and read them: `256M`, `1.50 GiB`.

const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// Parses `SIZE`: bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024; `KiB`, `MB`
/// and lower case are accepted too). The result must be a positive multiple of 512.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let bytes = snapfs::units::parse_bytes(text)?;
    if !bytes.is_multiple_of(512) {
        return Err(format!("size {text} is not a multiple of 512 bytes"));
    }
    Ok(bytes)
}

/// `bytes` with two decimals in the largest unit that keeps the number at least 1.
pub fn human(bytes: u64) -> String {
    let mut unit = 0;
    let mut value = bytes as f64;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.2} {}", UNITS[unit])
    }
}

/// A chunk size in sectors as people say it: `4 KiB`.
pub fn chunk(sectors: u64) -> String {
    let bytes = sectors * 512;
    if bytes >= 1 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        for bad in ["", "M", "1.5G", "-1M", "12X", "0", "100", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.50 KiB");
        assert_eq!(human(256 << 20), "256.00 MiB");
        assert_eq!(chunk(8), "4 KiB");
        assert_eq!(chunk(1), "512 B");
        assert_eq!(chunk(4096), "2 MiB");
    }
}
