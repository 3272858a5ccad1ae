//! Copies byte ranges from a snapshot's file into the backup image.
//!
//! Pieces of at most [`PIECE_BYTES`] are read with one `pread` and written with one `pwrite`
//! at the same offset, the reads one thread ahead of the writes. A piece that is all zeroes is punched out of a file image instead
//! (`fallocate` PUNCH_HOLE, the size kept), so the image stays as sparse as the volume; a
//! block device, or a file system without punch, gets the zeroes written. Nothing here
//! flushes: the caller fsyncs the image once, before it marks it complete.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

/// Largest piece read and written at once.
pub const PIECE_BYTES: u64 = 1 << 20;

pub struct Options {
    /// Punch all-zero pieces instead of writing them (a file image).
    pub punch_zeroes: bool,
    /// At most this many bytes a second (`--bwlimit`), on average since the start.
    pub bytes_per_second: Option<u64>,
}

/// Pieces read ahead of the writer: the snapshot is read (through FUSE) while the image is
/// written, so the copy takes about the longer of the two instead of their sum.
const PIECES_AHEAD: usize = 2;

/// Copies `ranges` (`(offset, length)`, sorted or not) from `src` to the same offsets of
/// `dst`; calls `progress` with the bytes done so far after each piece. Returns the bytes
/// copied (written or punched). Errors name the side, the offset and the reason.
///
/// A reader thread reads the pieces in order into a few recycled buffers; this thread writes
/// them in the same order. A read error stops the reader and is returned once the pieces read
/// before it are written; a write error stops the writer, which drops the channel, so the
/// reader stops at its next piece.
pub fn copy_ranges(
    src: &File,
    dst: &File,
    ranges: &[(u64, u64)],
    options: &Options,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, String> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Piece>(PIECES_AHEAD);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..=PIECES_AHEAD {
        let _ = empty_tx.send(vec![0u8; PIECE_BYTES as usize]);
    }
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for (at, n) in pieces(ranges) {
                let Ok(mut buf) = empty_rx.recv() else { return };
                buf.resize(n, 0);
                let piece = src
                    .read_exact_at(&mut buf, at)
                    .map(|()| (at, buf))
                    .map_err(|e| format!("reading the snapshot at byte {at}: {e}"));
                let failed = piece.is_err();
                if full_tx.send(piece).is_err() || failed {
                    return;
                }
            }
        });
        // The writer owns the receiving end and the recycling sender, so both are gone when it
        // returns, early or not: a reader waiting on either wakes up and stops.
        write_pieces(full_rx, empty_tx, dst, options, progress)
    })
}

type Piece = Result<(u64, Vec<u8>), String>;

/// Writes (or punches) the pieces in the order they come, hands each buffer back, reports
/// progress and keeps the rate.
fn write_pieces(
    full: Receiver<Piece>,
    empty: Sender<Vec<u8>>,
    dst: &File,
    options: &Options,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, String> {
    let started = Instant::now();
    let mut done = 0u64;
    let mut punch = options.punch_zeroes;
    for piece in full {
        let (at, buf) = piece?;
        let n = buf.len() as u64;
        let zero = punch && is_zero(&buf);
        if !(zero && punched(dst, at, n, &mut punch)) {
            dst.write_all_at(&buf, at)
                .map_err(|e| format!("writing the image at byte {at}: {e}"))?;
        }
        let _ = empty.send(buf);
        done += n;
        progress(done);
        if let Some(rate) = options.bytes_per_second {
            let due = Duration::from_secs_f64(done as f64 / rate.max(1) as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok(done)
}

/// `ranges` cut into pieces of at most [`PIECE_BYTES`]: `(offset, length)` in order.
fn pieces(ranges: &[(u64, u64)]) -> impl Iterator<Item = (u64, usize)> + '_ {
    ranges.iter().flat_map(|&(offset, length)| {
        (offset..offset + length)
            .step_by(PIECE_BYTES as usize)
            .map(move |at| (at, (offset + length - at).min(PIECE_BYTES) as usize))
    })
}

/// Punches `[at, at + len)` out of `dst`; false (and no more punching) where the file system
/// cannot, so the caller writes the zeroes.
fn punched(dst: &File, at: u64, len: u64, punch: &mut bool) -> bool {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate on an open descriptor with plain integer arguments.
    let rc = unsafe { libc::fallocate(dst.as_raw_fd(), mode, at as i64, len as i64) };
    if rc != 0 {
        *punch = false;
    }
    rc == 0
}

fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = unsafe { data.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str, data: &[u8]) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("snapfs-copy-{}-{tag}", std::process::id()));
        std::fs::write(&path, data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        (path, f)
    }

    #[test]
    fn copies_the_ranges_and_only_them_punching_zeroes() {
        let len = 3 * PIECE_BYTES as usize + 4096;
        let mut src_data: Vec<u8> = (0..len).map(|i| (i % 251) as u8 + 1).collect();
        // A zero piece inside the second range.
        src_data[PIECE_BYTES as usize..2 * PIECE_BYTES as usize].fill(0);
        let (sp, src) = scratch("src", &src_data);
        let (dp, dst) = scratch("dst", &vec![0xee; len]);
        let ranges = [
            (4096, 8192),
            (PIECE_BYTES, PIECE_BYTES + 100),
            (len as u64 - 10, 10),
        ];
        let mut seen = Vec::new();
        let options = Options {
            punch_zeroes: true,
            bytes_per_second: None,
        };
        let n = copy_ranges(&src, &dst, &ranges, &options, &mut |d| seen.push(d)).unwrap();
        assert_eq!(n, 8192 + PIECE_BYTES + 100 + 10);
        assert_eq!(*seen.last().unwrap(), n);
        let got = std::fs::read(&dp).unwrap();
        for (i, (&g, &s)) in got.iter().zip(&src_data).enumerate() {
            let inside = ranges
                .iter()
                .any(|&(o, l)| (o..o + l).contains(&(i as u64)));
            assert_eq!(g, if inside { s } else { 0xee }, "byte {i}");
        }
        std::fs::remove_file(sp).unwrap();
        std::fs::remove_file(dp).unwrap();
    }

    #[test]
    fn errors_say_where() {
        let (sp, src) = scratch("short", &[1u8; 4096]);
        let (dp, dst) = scratch("short-dst", &[0u8; 4096]);
        let options = Options {
            punch_zeroes: false,
            bytes_per_second: None,
        };
        let e = copy_ranges(&src, &dst, &[(0, 8192)], &options, &mut |_| {}).unwrap_err();
        assert!(e.starts_with("reading the snapshot at byte 0"), "{e}");
        std::fs::remove_file(sp).unwrap();
        std::fs::remove_file(dp).unwrap();
    }

    /// A write error with the reader pieces ahead: the error comes back (the reader, waiting
    /// for a buffer or a free slot, stops instead of holding the copy forever), naming the
    /// first piece, and nothing after it was written.
    #[test]
    fn a_write_error_stops_the_reader() {
        let len = 8 * PIECE_BYTES as usize;
        let (sp, src) = scratch("wsrc", &vec![7u8; len]);
        let (dp, _) = scratch("wdst", &[]);
        let read_only = File::open(&dp).unwrap();
        let options = Options {
            punch_zeroes: false,
            bytes_per_second: None,
        };
        let mut seen = Vec::new();
        let e = copy_ranges(&src, &read_only, &[(0, len as u64)], &options, &mut |d| {
            seen.push(d)
        })
        .unwrap_err();
        assert!(e.starts_with("writing the image at byte 0"), "{e}");
        assert!(seen.is_empty());
        assert_eq!(std::fs::metadata(&dp).unwrap().len(), 0);
        std::fs::remove_file(sp).unwrap();
        std::fs::remove_file(dp).unwrap();
    }

    #[test]
    fn zero_detection() {
        assert!(is_zero(&[0u8; 4099][1..]));
        let mut d = vec![0u8; 4099];
        d[4098] = 1;
        assert!(!is_zero(&d));
        d[4098] = 0;
        d[3] = 1;
        assert!(!is_zero(&d[1..]));
    }
}
