//! I/O helper for the guest of the kernel compatibility harness, built as a static binary by
//! scripts/kernel-compat.sh (`rustc -C target-feature=+crt-static`) and put in the initramfs.
//!
//! Why not dd: busybox dd allocates unaligned buffers, so O_DIRECT fails with EINVAL and it
//! silently retries with buffered I/O; the kernel then sees read-modify-write of whole 4 KiB
//! pages instead of the sectors asked for (visible with 1-sector chunks). A dynamically linked
//! dd costs ~70 ms per start under emulation. This helper does every write of a workload in one
//! process, O_DIRECT, from page-aligned buffers, one write at a time, in order.
//!
//! ```text
//! snapfs-guest-io write PATTERN            stdin: lines "DEV SRC DST LEN" (bytes): writes
//!                                          PATTERN[SRC..SRC+LEN] to DEV at DST. A failed write
//!                                          prints "@@WFAIL DEV DST LEN <error>"; the rest go on.
//! snapfs-guest-io copy SRC DST OFFSET LEN  copies LEN bytes from the start of SRC to DST at
//!                                          OFFSET (bytes), O_DIRECT both ways.
//! snapfs-guest-io readable DEV             exit status 0 when DEV's first sector reads.
//! ```

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;

/// O_DIRECT on x86_64 (asm-generic/fcntl.h); the guest kernel is x86_64.
const O_DIRECT: i32 = 0o40000;
/// Buffer alignment: a page satisfies every logical block size up to 4 KiB.
const ALIGN: usize = 4096;
const COPY_PIECE: u64 = 1 << 20;

/// A page-aligned buffer of `len` bytes (over-allocated and sliced: no unsafe code).
struct Aligned {
    v: Vec<u8>,
    off: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let v = vec![0u8; len + ALIGN];
        let off = v.as_ptr().align_offset(ALIGN);
        Aligned { v, off, len }
    }

    fn buf(&mut self) -> &mut [u8] {
        &mut self.v[self.off..self.off + self.len]
    }
}

fn open_direct(path: &str, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(O_DIRECT)
        .open(path)
}

fn num(w: Option<&str>, what: &str) -> Result<u64, String> {
    w.ok_or_else(|| format!("missing {what}"))?
        .parse()
        .map_err(|e| format!("bad {what}: {e}"))
}

fn write_all(pattern_path: &str) -> Result<(), String> {
    let pattern = std::fs::read(pattern_path).map_err(|e| format!("{pattern_path}: {e}"))?;
    let mut devs: HashMap<String, File> = HashMap::new();
    let stdout = std::io::stdout();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut w = line.split_whitespace();
        let Some(dev) = w.next() else { continue };
        let src = num(w.next(), "SRC")? as usize;
        let dst = num(w.next(), "DST")?;
        let len = num(w.next(), "LEN")? as usize;
        let data = pattern
            .get(src..src + len)
            .ok_or_else(|| format!("{src}+{len} is beyond the pattern"))?;
        let mut buf = Aligned::new(len);
        buf.buf().copy_from_slice(data);
        if !devs.contains_key(dev) {
            let f = open_direct(dev, true).map_err(|e| format!("{dev}: {e}"))?;
            devs.insert(dev.to_string(), f);
        }
        if let Err(e) = devs[dev].write_all_at(buf.buf(), dst) {
            let _ = writeln!(stdout.lock(), "@@WFAIL {dev} {dst} {len} {e}");
        }
    }
    Ok(())
}

fn copy(src: &str, dst: &str, offset: u64, len: u64) -> Result<(), String> {
    let from = open_direct(src, false).map_err(|e| format!("{src}: {e}"))?;
    let to = open_direct(dst, true).map_err(|e| format!("{dst}: {e}"))?;
    let mut buf = Aligned::new(COPY_PIECE as usize);
    let mut done = 0;
    while done < len {
        let n = (len - done).min(COPY_PIECE) as usize;
        let piece = &mut buf.buf()[..n];
        from.read_exact_at(piece, done)
            .map_err(|e| format!("reading {src} at {done}: {e}"))?;
        to.write_all_at(piece, offset + done)
            .map_err(|e| format!("writing {dst} at {}: {e}", offset + done))?;
        done += n as u64;
    }
    Ok(())
}

fn readable(dev: &str) -> Result<(), String> {
    let f = open_direct(dev, false).map_err(|e| format!("{dev}: {e}"))?;
    let mut buf = Aligned::new(512);
    f.read_exact_at(buf.buf(), 0)
        .map_err(|e| format!("{dev}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let res = match a.get(1..) {
        Some(["write", pattern]) => write_all(pattern),
        Some(["copy", src, dst, offset, len]) => num(Some(offset), "OFFSET")
            .and_then(|o| Ok((o, num(Some(len), "LEN")?)))
            .and_then(|(o, l)| copy(src, dst, o, l)),
        Some(["readable", dev]) => readable(dev),
        _ => Err(
            "usage: snapfs-guest-io write PATTERN | copy SRC DST OFFSET LEN | readable DEV"
                .to_string(),
        ),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("snapfs-guest-io: {e}");
            ExitCode::FAILURE
        }
    }
}
