//! Parity with the kernel's dm-snapshot at the edges of a COW, end to end through a mount.
//!
//! - A COW that ends right after the last data chunk of an area (issue 13, item 11): 1-sector
//!   chunks, a COW of 34 sectors (header, area 0, data chunks 2..=33), 32 single-sector writes
//!   to distinct chunks. Linux 6.1 fails the 32nd, shows `Invalid` and writes `valid = 0` to the
//!   header, for `P` and `PO` and for origin writes too (the allocation of chunk 33 succeeds; its
//!   commit fills area 0, and zeroing area 1, which lies past the end, fails). The same bytes are
//!   checked against the real kernel by `tests/kernel_compat.rs` (case `edge`).
//! - A COW truncated under the mount (issue 13, item 12): the snapshot fails safely and the log
//!   says the COW shrank, naming it and the sizes, instead of "the COW device is full".

mod e2e_support;

use e2e_support::*;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SECTOR: u64 = 512;
const ORIGIN_BYTES: u64 = 4 * MIB;
/// Header, area 0 and the 32 data chunks it describes, at 1 sector per chunk.
const EDGE_COW_BYTES: u64 = 34 * SECTOR;

/// The header chunk (1 sector) the kernel leaves on an invalidated store of 1-sector chunks.
fn invalid_header_cs1() -> Vec<u8> {
    let mut h = vec![0u8; SECTOR as usize];
    h[0..4].copy_from_slice(b"SnAp"); // magic 0x70416E53, little-endian
    h[4..8].copy_from_slice(&0u32.to_le_bytes()); // valid = 0
    h[8..12].copy_from_slice(&1u32.to_le_bytes()); // version = 1
    h[12..16].copy_from_slice(&1u32.to_le_bytes()); // chunk size = 1 sector
    h
}

/// Record `i` of area 0 (chunk 1) of a store of 1-sector chunks: `(old_chunk, new_chunk)`.
fn record(cow: &[u8], i: usize) -> (u64, u64) {
    let at = SECTOR as usize + 16 * i;
    let word = |o: usize| u64::from_le_bytes(cow[o..o + 8].try_into().unwrap());
    (word(at), word(at + 8))
}

/// `n` distinct sectors of the origin, in a seeded order.
fn distinct_sectors(rng: &mut Rng, n: usize, taken: &[u64]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    while out.len() < n {
        let s = rng.below(ORIGIN_BYTES / SECTOR);
        if !out.contains(&s) && !taken.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// The status word of snapshot `name`: `<allocated>/<total> <metadata>`, `Invalid`, ...
fn word(s: &Scratch, name: &str) -> String {
    let lines = status(s);
    let line = lines
        .iter()
        .find(|l| l.0 == name)
        .unwrap_or_else(|| panic!("no status line for {name}: {lines:?}"));
    line.4.join(" ")
}

fn eio(what: &str, r: std::io::Result<impl Sized>) {
    match r {
        Ok(_) => panic!("{what}: succeeded, the kernel fails it with EIO"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}"),
    }
}

/// What a COW filled to the edge holds afterwards, as the kernel leaves it: the invalid
/// header; area 0 as the 31st commit wrote it (the 32nd record was never written); chunk 33
/// holding what the 32nd copy or write put there; nothing past the end.
fn check_edge_cow(what: &str, cow: &Path, olds: &[u64], chunk_33: &[u8]) {
    let bytes = std::fs::read(cow).unwrap();
    assert_eq!(
        bytes.len() as u64,
        EDGE_COW_BYTES,
        "{what}: the COW never grows"
    );
    assert_eq!(bytes[..512], invalid_header_cs1()[..], "{what}: header");
    for (i, &old) in olds[..31].iter().enumerate() {
        assert_eq!(record(&bytes, i), (old, 2 + i as u64), "{what}: record {i}");
    }
    assert_eq!(record(&bytes, 31), (0, 0), "{what}: the 32nd record");
    assert_eq!(&bytes[33 * 512..], chunk_33, "{what}: chunk 33");
}

#[test]
fn a_full_cow_at_an_area_boundary_is_invalid_as_in_the_kernel() {
    let mut s = Scratch::new("parity-edge");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 11);
    let cows: Vec<(&str, &str, u64)> = vec![
        ("po", "PO", 1),  // snapshot writes
        ("p", "P", 1),    // snapshot writes
        ("org", "PO", 1), // origin writes (a PO store fails on them as P does)
        ("big", "P", 8),  // a healthy bystander
    ];
    let mut options = Vec::new();
    for &(name, kind, cs) in &cows {
        let cow = s.path(&format!("{name}.cow"));
        let bytes = if name == "big" {
            2 * ORIGIN_BYTES
        } else {
            EDGE_COW_BYTES
        };
        sparse_file(&cow, bytes);
        options.push(format!("snapshot={name}:{}:{kind}:{cs}", cow.display()));
    }
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    s.mount_daemon(&origin, &options, &[]);

    let mut rng = Rng(12);
    let mut taken = Vec::new();
    let mut last_data = Vec::new();
    // Snapshot writes: the 32nd fails with EIO; the status is Invalid, not Overflow (PO).
    for name in ["po", "p"] {
        let sectors = distinct_sectors(&mut rng, 32, &taken);
        taken.extend(&sectors);
        let f = open_rw(&s.file(name));
        for (i, &sector) in sectors.iter().enumerate() {
            let data = rng.bytes(SECTOR);
            let r = f.write_all_at(&data, sector * SECTOR);
            if i < 31 {
                r.unwrap_or_else(|e| panic!("{name}: write {i}: {e}"));
            } else {
                assert_eq!(word(&s, name), "Invalid", "{name}: after the 32nd");
                eio(&format!("{name}: the 32nd write"), r);
                last_data.push(data);
            }
            if i == 30 {
                assert_eq!(
                    word(&s, name),
                    "33/34 2",
                    "{name}: the kernel's figures after 31"
                );
            }
        }
        eio(&format!("{name}: read"), std::fs::read(s.file(name)));
        eio(
            &format!("{name}: a later write"),
            f.write_all_at(&[1; 512], taken[0] * SECTOR),
        );
    }
    // Origin writes: every one lands; `org` turns Invalid at the 32nd, `big` copies on.
    let org_sectors = distinct_sectors(&mut rng, 32, &taken);
    let origin_file = open_rw(&s.file("origin"));
    let mut model = initial.clone();
    for (i, &sector) in org_sectors.iter().enumerate() {
        let data = rng.bytes(SECTOR);
        origin_file
            .write_all_at(&data, sector * SECTOR)
            .unwrap_or_else(|e| panic!("origin write {i}: {e}"));
        let at = (sector * SECTOR) as usize;
        model[at..at + 512].copy_from_slice(&data);
        if i == 30 {
            assert_eq!(word(&s, "org"), "33/34 2", "org: after 31 copies");
        }
    }
    assert_eq!(word(&s, "org"), "Invalid", "org: after the 32nd copy");
    eio("org: read", std::fs::read(s.file("org")));
    assert!(std::fs::read(s.file("origin")).unwrap() == model, "origin");
    assert!(std::fs::read(s.file("big")).unwrap() == initial, "big");
    drop(origin_file);
    assert_eq!(s.unmount(), 0, "{}", s.log());

    let old_sector = |sector: u64| {
        let at = (sector * SECTOR) as usize;
        initial[at..at + 512].to_vec()
    };
    check_edge_cow("po", &s.path("po.cow"), &taken[..32], &last_data[0]);
    check_edge_cow("p", &s.path("p.cow"), &taken[32..], &last_data[1]);
    check_edge_cow(
        "org",
        &s.path("org.cow"),
        &org_sectors,
        &old_sector(org_sectors[31]),
    );

    // Remounted: still Invalid (valid = 0 is on disk); the bystander is intact.
    s.mount_daemon(&origin, &options, &[]);
    for name in ["po", "p", "org"] {
        assert_eq!(word(&s, name), "Invalid", "{name}: remounted");
        eio(
            &format!("{name}: read after remount"),
            std::fs::read(s.file(name)),
        );
    }
    assert!(std::fs::read(s.file("big")).unwrap() == initial, "big");
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn a_cow_truncated_under_the_mount_is_reported_as_shrunk() {
    let mut s = Scratch::new("parity-shrunk");
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 13);
    let (p, po) = (s.path("p.cow"), s.path("po.cow"));
    sparse_file(&p, MIB);
    sparse_file(&po, MIB);
    s.mount_daemon(
        &origin,
        &[
            &format!("snapshot=p:{}:P:8", p.display()),
            &format!("snapshot=po:{}:PO:8", po.display()),
        ],
        &[],
    );
    // 16 exceptions each (COW chunks 2..=17), then both COWs are cut to 16 chunks.
    let data = Rng(14).bytes(64 * 1024);
    open_rw(&s.file("origin")).write_all_at(&data, 0).unwrap();
    for cow in [&p, &po] {
        open_rw(cow).set_len(64 * 1024).unwrap();
    }
    // A PO snapshot write that needs a chunk fails, and the snapshot is Invalid: what was cut
    // off held exceptions, so it must not merely overflow.
    eio(
        "po: write after the cut",
        open_rw(&s.file("po")).write_all_at(&[7; 4096], 2 * MIB),
    );
    assert_eq!(word(&s, "po"), "Invalid");
    // An origin write that needs a copy lands; the P snapshot is Invalid.
    open_rw(&s.file("origin"))
        .write_all_at(&[9; 4096], MIB)
        .expect("origin writes go on");
    assert_eq!(word(&s, "p"), "Invalid");
    let log = s.log();
    for cow in [&p, &po] {
        let line = log
            .lines()
            .find(|l| l.contains("shrank") && l.contains(&*cow.to_string_lossy()))
            .unwrap_or_else(|| panic!("no line says {} shrank:\n{log}", cow.display()));
        assert!(
            line.contains("1048576") && line.contains("65536"),
            "the sizes expected and found: {line}"
        );
        assert!(!line.contains("full"), "{line}");
    }
    assert!(
        !log.contains("is full"),
        "nothing says the COW is full:\n{log}"
    );
    let mut origin_now = initial.clone();
    origin_now[..64 * 1024].copy_from_slice(&data);
    origin_now[MIB as usize..MIB as usize + 4096].fill(9);
    assert!(std::fs::read(s.file("origin")).unwrap() == origin_now);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    for cow in [&p, &po] {
        let bytes = std::fs::read(cow).unwrap();
        assert_eq!(
            bytes.len(),
            64 * 1024,
            "{}: never grown back",
            cow.display()
        );
        assert_eq!(&bytes[..4], b"SnAp");
        assert_eq!(bytes[4..8], [0, 0, 0, 0], "{}: valid = 0", cow.display());
    }
}
