//! Zeroing through a real mount and real loop devices (issue 13): `fallocate -p`, `fallocate
//! -z`, `blkdiscard`, `blkdiscard -z` on MNT/origin and MNT/<snapshot>, the kernel's discard
//! features, ranges past the end, unsupported modes and a read-only mount. Every check reads
//! the data back and compares it with a byte model. Needs root, /dev/fuse, loop devices and
//! util-linux (`fallocate`, `blkdiscard`, `losetup`). The rules: docs/discard.md.

mod e2e_support;

use e2e_support::*;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SIZE: u64 = 16 * MIB;
const KIB: u64 = 1024;

const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
const ZERO: i32 = libc::FALLOC_FL_ZERO_RANGE;
const ZERO_KEEP: i32 = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;

fn zero(model: &mut [u8], off: u64, len: u64) {
    model[off as usize..(off + len) as usize].fill(0);
}

fn s(n: u64) -> String {
    n.to_string()
}

/// Runs `CMD... -o OFF -l LEN PATH` (a punch, discard or zeroing of that range: `fallocate -p`,
/// `blkdiscard -z`, ...) and zeroes the range in `model`.
fn zero_with(model: &mut [u8], cmd: &[&str], path: &str, off: u64, len: u64) {
    let (off_s, len_s) = (s(off), s(len));
    let mut args = cmd[1..].to_vec();
    args.extend(["-o", &off_s, "-l", &len_s, path]);
    run(cmd[0], &args);
    zero(model, off, len);
}

/// The whole file, compared with the model.
fn check(path: &Path, want: &[u8], what: &str) {
    assert_same(what, &std::fs::read(path).unwrap(), want);
}

/// A mount of a random 16 MiB origin with snapshots `specs` (`-o snapshot=` values after the
/// name and COW: store, chunk, features); returns the origin's content.
fn mount(s: &mut Scratch, specs: &[(&str, &str)], extra: &[&str]) -> Vec<u8> {
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, SIZE, 13);
    let mut opts: Vec<String> = extra.iter().map(|o| o.to_string()).collect();
    for (name, rest) in specs {
        let cow = s.path(&format!("{name}.cow"));
        sparse_file(&cow, SIZE);
        opts.push(format!("snapshot={name}:{}:{rest}", cow.display()));
    }
    let opts: Vec<&str> = opts.iter().map(|o| o.as_str()).collect();
    s.mount_daemon(&origin, &opts, &[]);
    initial
}

/// `fallocate -p` and loop-device discards and zeroings on MNT/origin: the range reads zeroes
/// afterwards (it used to keep its old bytes without `origin_discard`) and the snapshot still
/// reads the old data (copied out first); the image on disk agrees after unmount.
#[test]
fn origin_punches_and_loop_discards_read_zeroes() {
    let mut sc = Scratch::new("zero-origin");
    let mut stack = Stack::default();
    let initial = mount(&mut sc, &[("s", "P:8")], &[]);
    let mut model = initial.clone();
    let origin = sc.file("origin");
    // fallocate(1) on the file, at odd offsets.
    zero_with(
        &mut model,
        &["fallocate", "-p"],
        origin.to_str().unwrap(),
        1000,
        70000,
    );
    check(&origin, &model, "origin after fallocate -p");
    // A loop device: discard, write-zeroes (NOUNMAP, and the unmapping kind that fallocate
    // -p on a block device sends).
    let dev = stack.attach(&origin, true, false);
    zero_with(&mut model, &["blkdiscard"], &dev, MIB, MIB);
    zero_with(&mut model, &["blkdiscard", "-z"], &dev, 3 * MIB, 512 * KIB);
    zero_with(&mut model, &["fallocate", "-p"], &dev, 5 * MIB, 256 * KIB);
    zero_with(&mut model, &["fallocate", "-z"], &dev, 6 * MIB, 64 * KIB);
    // The last 4 KiB.
    zero_with(&mut model, &["blkdiscard"], &dev, SIZE - 4096, 4096);
    stack.detach(&dev);
    check(&origin, &model, "origin after loop discards");
    check(&sc.file("s"), &initial, "snapshot keeps the old data");
    assert!(allocated_sectors(&sc, "s") > 16, "copied out");
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
    check(&sc.path("origin.img"), &model, "origin image");
}

/// `fallocate -p` and loop-device discards on a snapshot file read zeroes on chunks with and
/// without an exception (it used to zero only chunks with one); the origin does not change.
#[test]
fn snapshot_punches_and_loop_discards_read_zeroes() {
    let mut sc = Scratch::new("zero-snap");
    let mut stack = Stack::default();
    let initial = mount(&mut sc, &[("s", "P:8")], &[]);
    let mut origin_model = initial.clone();
    let mut model = initial.clone();
    // Exceptions in chunks 2 (snapshot write) and 5 (origin write) of 4 KiB.
    let snap = sc.file("s");
    open_rw(&snap)
        .write_all_at(&[7; 100], 2 * 4096 + 10)
        .unwrap();
    model[2 * 4096 + 10..2 * 4096 + 110].fill(7);
    open_rw(&sc.file("origin"))
        .write_all_at(&[9; 50], 5 * 4096)
        .unwrap();
    origin_model[5 * 4096..5 * 4096 + 50].fill(9);
    zero_with(
        &mut model,
        &["fallocate", "-p"],
        snap.to_str().unwrap(),
        4000,
        30000,
    );
    check(&snap, &model, "snapshot after fallocate -p");
    let dev = stack.attach(&snap, false, false);
    zero_with(&mut model, &["blkdiscard"], &dev, 2 * MIB, MIB);
    zero_with(&mut model, &["blkdiscard", "-z"], &dev, 4 * MIB, 256 * KIB);
    zero_with(&mut model, &["fallocate", "-p"], &dev, 8 * MIB, 128 * KIB);
    stack.detach(&dev);
    check(&snap, &model, "snapshot after loop discards");
    check(&sc.file("origin"), &origin_model, "origin unchanged");
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
    // Durable: the snapshot reads the same at the next mount.
    let cow = sc.path("s.cow");
    sc.mount_daemon(
        &sc.path("origin.img"),
        &[&format!("snapshot=s:{}:P:8", cow.display())],
        &[],
    );
    check(&snap, &model, "snapshot after a remount");
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
}

/// `discard_zeroes_cow` + `discard_passdown_origin`: a discard of the snapshot through a loop
/// device zeroes it without allocating, and reaches the origin without copy-out: the origin
/// reads zeroes there, and another snapshot too where it has no copy of its own (the kernel's
/// passdown). `discard_zeroes_cow` alone allocates like the default.
#[test]
fn passdown_discards_reach_the_origin_without_copy_out() {
    let mut sc = Scratch::new("zero-passdown");
    let mut stack = Stack::default();
    let initial = mount(
        &mut sc,
        &[
            ("pd", "P:8:discard_zeroes_cow+discard_passdown_origin"),
            ("zc", "P:8:discard_zeroes_cow"),
            ("keep", "P:8"),
        ],
        &[],
    );
    // Chunk 10 copied into every snapshot by an origin write.
    let mut origin_model = initial.clone();
    open_rw(&sc.file("origin"))
        .write_all_at(&[3; 4096], 10 * 4096)
        .unwrap();
    origin_model[10 * 4096..11 * 4096].fill(3);
    let pd_before = allocated_sectors(&sc, "pd");
    let (off, len) = (8 * 4096u64, 8 * 4096u64);
    let dev = stack.attach(&sc.file("pd"), true, false);
    run("blkdiscard", &["-o", &s(off), "-l", &s(len), &dev]);
    stack.detach(&dev);
    let mut pd = initial.clone();
    zero(&mut pd, off, len);
    check(&sc.file("pd"), &pd, "pd after the discard");
    assert_eq!(allocated_sectors(&sc, "pd"), pd_before, "nothing allocated");
    zero(&mut origin_model, off, len);
    check(&sc.file("origin"), &origin_model, "origin: passed down");
    // keep and zc: their copy of chunk 10 stays, the rest of the range followed the origin.
    let mut keep = initial.clone();
    zero(&mut keep, off, 2 * 4096);
    zero(&mut keep, 11 * 4096, 5 * 4096);
    check(&sc.file("keep"), &keep, "keep");
    check(&sc.file("zc"), &keep, "zc");
    // zc: a punch allocates for chunks without an exception and reads zeroes.
    let zc_before = allocated_sectors(&sc, "zc");
    let zc = open_rw(&sc.file("zc"));
    fallocate(&zc, PUNCH, 3 * MIB, 64 * KIB).unwrap();
    zero(&mut keep, 3 * MIB, 64 * KIB);
    check(&sc.file("zc"), &keep, "zc after a punch");
    assert_eq!(allocated_sectors(&sc, "zc"), zc_before + 128, "16 chunks");
    check(
        &sc.file("origin"),
        &origin_model,
        "origin: zc does not pass down",
    );
    drop(zc);
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
}

/// ZERO_RANGE with and without KEEP_SIZE, ranges past the end, plain allocation, and the
/// modes a file that cannot grow or move must refuse, on the origin and on a snapshot.
#[test]
fn modes_and_ranges_past_the_end() {
    let mut sc = Scratch::new("zero-modes");
    let initial = mount(&mut sc, &[("s", "P:8")], &[]);
    let mut models = [initial.clone(), initial.clone()];
    for (i, name) in ["origin", "s"].into_iter().enumerate() {
        let f = open_rw(&sc.file(name));
        let model = &mut models[i];
        fallocate(&f, ZERO, 100, 5000).unwrap();
        zero(model, 100, 5000);
        fallocate(&f, ZERO_KEEP, MIB + 1, 9000).unwrap();
        zero(model, MIB + 1, 9000);
        // With KEEP_SIZE the part past the end is ignored.
        fallocate(&f, PUNCH, SIZE - 3000, 10_000).unwrap();
        zero(model, SIZE - 3000, 3000);
        fallocate(&f, ZERO_KEEP, SIZE - 700, 4096).unwrap();
        zero(model, SIZE - 700, 700);
        fallocate(&f, PUNCH, SIZE + 4096, 4096).unwrap();
        // Without it the file would grow: refused, nothing changed.
        for mode in [0, ZERO] {
            assert_eq!(
                fallocate(&f, mode, SIZE - 4096, 8192),
                Err(libc::EOPNOTSUPP),
                "{name}: mode {mode:#x} past the end"
            );
        }
        for (mode, what) in [
            (libc::FALLOC_FL_PUNCH_HOLE, "punch without KEEP_SIZE"),
            (libc::FALLOC_FL_COLLAPSE_RANGE, "collapse"),
            (libc::FALLOC_FL_INSERT_RANGE, "insert"),
            (libc::FALLOC_FL_UNSHARE_RANGE, "unshare"),
        ] {
            assert_eq!(
                fallocate(&f, mode, 64 * KIB, 64 * KIB),
                Err(libc::EOPNOTSUPP),
                "{name}: {what}"
            );
        }
        check(&sc.file(name), model, name);
    }
    // Plain allocation reserves snapshot space: exceptions for 16 chunks, content unchanged.
    let before = allocated_sectors(&sc, "s");
    let f = open_rw(&sc.file("s"));
    fallocate(&f, 0, 8 * MIB, 64 * KIB).unwrap();
    fallocate(&f, libc::FALLOC_FL_KEEP_SIZE, 8 * MIB, 64 * KIB).unwrap();
    assert_eq!(
        allocated_sectors(&sc, "s"),
        before + 128,
        "16 chunks reserved"
    );
    fallocate(&open_rw(&sc.file("origin")), 0, 0, SIZE).unwrap();
    drop(f);
    check(&sc.file("s"), &models[1], "s");
    check(&sc.file("origin"), &models[0], "origin");
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
}

/// A read-only mount: no file opens for writing (EROFS), a loop device over it is read-only and
/// refuses discards, and nothing changes.
#[test]
fn a_read_only_mount_answers_erofs() {
    let mut sc = Scratch::new("zero-ro");
    let mut stack = Stack::default();
    // A first read-write mount initialises the COW and copies a chunk out.
    let mut initial = mount(&mut sc, &[("s", "P:8")], &[]);
    open_rw(&sc.file("origin"))
        .write_all_at(&[4; 4096], 4096)
        .unwrap();
    let snap_model = initial.clone();
    initial[4096..8192].fill(4);
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
    let spec = format!("snapshot=s:{}:P:8", sc.path("s.cow").display());
    sc.mount_daemon(&sc.path("origin.img"), &[&spec, "ro"], &[]);
    for (name, want) in [("origin", &initial), ("s", &snap_model)] {
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(sc.file(name))
            .unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EROFS),
            "{name}: open for writing"
        );
        let f = File::open(sc.file(name)).unwrap();
        assert_eq!(fallocate(&f, PUNCH, 0, 4096), Err(libc::EBADF), "{name}");
        let dev = stack.attach(&sc.file(name), false, true);
        let out = std::process::Command::new("blkdiscard")
            .args(["-o", "0", "-l", &s(MIB), &dev])
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{name}: blkdiscard on a read-only loop"
        );
        stack.detach(&dev);
        check(&sc.file(name), want, name);
    }
    assert_eq!(sc.unmount(), 0, "{}", sc.log());
    check(&sc.path("origin.img"), &initial, "origin image");
}

/// An origin that is a block device: a punch writes zeroes that stay allocated without
/// `origin_discard`, and with it an unmapping write-zeroes (never BLKDISCARD, whose range may
/// read back as anything): the backing file of the loop device under the origin gets a hole.
#[test]
fn a_block_device_origin_reads_zeroes_after_a_punch() {
    for origin_discard in [false, true] {
        let mut sc = Scratch::new(&format!("zero-blk-{origin_discard}"));
        let mut stack = Stack::default();
        let img = sc.path("origin.img");
        let initial = write_random_image(&img, SIZE, 17);
        let dev = stack.attach(&img, false, false);
        let cow = sc.path("s.cow");
        sparse_file(&cow, SIZE);
        let spec = format!("snapshot=s:{}:P:8", cow.display());
        let mut opts = vec![spec.as_str()];
        if origin_discard {
            opts.push("origin_discard");
        }
        sc.mount_daemon(Path::new(&dev), &opts, &[]);
        let blocks = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(p).unwrap().blocks()
        };
        let before = blocks(&img);
        let f = open_rw(&sc.file("origin"));
        fallocate(&f, PUNCH, 2 * MIB, 2 * MIB).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let mut model = initial.clone();
        zero(&mut model, 2 * MIB, 2 * MIB);
        check(&sc.file("origin"), &model, "origin");
        check(&sc.file("s"), &initial, "snapshot");
        assert_eq!(sc.unmount(), 0, "{}", sc.log());
        stack.detach(&dev);
        check(&img, &model, "origin image");
        let after = blocks(&img);
        if origin_discard {
            assert!(
                after + 2 * MIB / 512 <= before,
                "a hole: {before} -> {after}"
            );
        } else {
            assert!(after >= before, "still allocated: {before} -> {after}");
        }
    }
}
