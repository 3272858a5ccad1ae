//! Writes a persistent COW holding COUNT scattered exceptions, for the mount-time and memory
//! case of scripts/bench.sh. The records are laid out exactly as the kernel (and snapfs) write
//! them, through the library's own format types; the data chunks are left sparse (their content
//! does not matter for loading).
//!
//! Usage: bench_cow COW ORIGIN_BYTES CHUNK_SECTORS COUNT
//! The COW is created (or truncated) at the size the records need. Origin chunks are a
//! pseudo-random permutation of COUNT of the origin's chunks, so no two records form a run
//! (the worst case for the in-memory table).

use snapfs::store::{Header, Record, area_chunk, records_per_area};
use snapfs::units::ChunkSize;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: bench_cow COW ORIGIN_BYTES CHUNK_SECTORS COUNT");
        std::process::exit(2);
    }
    let num = |i: usize| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("bench_cow: {:?} is not a number", args[i]);
            std::process::exit(2)
        })
    };
    let (origin_bytes, sectors, count) = (num(2), num(3), num(4));
    let chunk = ChunkSize::new(sectors, &[512]).expect("a valid chunk size");
    let origin_chunks = chunk.chunks_covering(origin_bytes);
    // Origin chunk of exception i: twice a permutation of 0..span (an odd multiplier modulo a
    // power of two), so the old chunks are distinct and never consecutive: no two records form
    // a run.
    let span = count.next_power_of_two();
    assert!(
        2 * span <= origin_chunks,
        "the origin ({origin_chunks} chunks) is too small: it needs {} chunks",
        2 * span
    );
    let per_area = records_per_area(chunk);
    let areas = count / per_area + 1; // the last one holds the terminator
    // Data chunks follow the areas they are recorded in: each area is followed by `per_area`
    // data chunks, so the COW needs `areas * (per_area + 1) + 1` chunks (header included).
    let cow_chunks = 1 + areas * (per_area + 1) + 1;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&args[1])
        .expect("create the COW");
    file.set_len(cow_chunks * chunk.bytes())
        .expect("size the COW");
    file.write_all_at(&Header::new(true, chunk).encode_chunk(chunk), 0)
        .expect("write the header");

    let mut i = 0u64;
    let mut area = vec![0u8; chunk.bytes() as usize];
    for a in 0..areas {
        area.fill(0);
        let first_data = area_chunk(chunk, a) + 1;
        let mut n = 0;
        while n < per_area && i < count {
            let slot = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % span;
            Record {
                old_chunk: slot * 2,
                new_chunk: first_data + n,
            }
            .encode(&mut area, n as usize);
            n += 1;
            i += 1;
        }
        let at = area_chunk(chunk, a) * chunk.bytes();
        file.write_all_at(&area, at).expect("write an area");
    }
    file.sync_all().expect("sync the COW");
    println!("{count} exceptions in {areas} areas, chunk {sectors} sectors");
}
