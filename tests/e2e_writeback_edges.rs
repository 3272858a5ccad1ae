//! Write-back edges through a real mount (docs/performance.md, "Write-back: the contract"): an
//! origin write lost after its answer (the origin's file system full) reaches the next fsync
//! even when its writer ignored its close; kill -9 keeps everything before the last fsync and
//! every synchronous write, and leaves the snapshot old (also under ext4 on a loop device);
//! unmount and SIGTERM with held writes land them; a COW filling under held writes ends as
//! without write-back; readers, punches and snapshot writes over held writes match the model;
//! memory stays within the budget; a bad budget is refused in one line. Streams of writes
//! racing control commands: tests/e2e_writeback_streams.rs. Needs root, losetup, mkfs.ext4.

mod e2e_support;

use e2e_support::*;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const ORIGIN_BYTES: u64 = 32 * MIB;

fn snapshot_option(cow: &Path) -> String {
    format!("snapshot=s:{}:P:8", cow.display())
}

/// Each byte of `got` is the byte of `a` or of `b` (a write either landed or did not).
fn assert_each_byte_from(what: &str, got: &[u8], a: &[u8], b: &[u8]) {
    assert_eq!(got.len(), a.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != a[i] && got[i] != b[i]) {
        panic!("{what}: byte {i} is neither before nor after the unsynced writes");
    }
}

/// A mount of a random origin of ORIGIN_BYTES (from `seed`) with one persistent snapshot `s`
/// on a sparse COW with room for all of it; returns the origin's bytes, its path and the
/// snapshot option (to mount it again).
fn mount_with_snapshot(s: &mut Scratch, seed: u64) -> (Vec<u8>, PathBuf, String) {
    let (origin, cow) = (s.path("origin.img"), s.path("cow"));
    let original = write_random_image(&origin, ORIGIN_BYTES, seed);
    sparse_file(&cow, ORIGIN_BYTES + 8 * MIB);
    let spec = snapshot_option(&cow);
    s.mount_daemon(&origin, &[&spec], &[]);
    (original, origin, spec)
}

/// `count` writes of 1 to `max_len` bytes at random offsets of `f`, the data of the i-th from
/// seed `data_seed + i`, applied to `model` too.
fn random_writes(
    f: &std::fs::File,
    model: &mut [u8],
    rng: &mut Rng,
    count: u64,
    max_len: u64,
    data_seed: u64,
) {
    for i in 0..count {
        let len = rng.below(max_len) + 1;
        let off = rng.below(model.len() as u64 - len);
        let data = Rng(data_seed + i).bytes(len);
        f.write_all_at(&data, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
}

/// The writes of flooding thread `t` (of 4) over a volume of `size` bytes, in its own quarter:
/// `(offset, length, data seed)`, 2 MiB (more than a 1M budget) and 96 KiB in turn, unaligned.
fn flood_writes(t: u64, size: u64) -> Vec<(u64, u64, u64)> {
    let quarter = size / 4;
    let mut writes = Vec::new();
    let mut at = t * quarter + 512;
    let mut i = 0u64;
    while at + 2 * MIB < (t + 1) * quarter {
        let len = if i.is_multiple_of(2) {
            2 * MIB
        } else {
            96 * 1024
        };
        writes.push((at, len, 20_000 + t * 1000 + i));
        at += len;
        i += 1;
    }
    writes
}

/// Unmounts cleanly, mounts `origin` with `spec` again and checks the origin equals `model`.
fn remount_and_check_origin(s: &mut Scratch, origin: &Path, spec: &str, model: &[u8]) {
    assert_eq!(s.unmount(), 0, "{}", s.log());
    s.mount_daemon(origin, &[spec], &[]);
    assert_same(
        "origin, remounted",
        &std::fs::read(s.file("origin")).unwrap(),
        model,
    );
}

/// The mount's origin file equals `model` and its snapshot `s` equals `original`.
fn check_files(s: &Scratch, model: &[u8], original: &[u8]) {
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), model);
    assert_same("snapshot", &std::fs::read(s.file("s")).unwrap(), original);
}

#[test]
fn a_lost_origin_write_reaches_the_next_fsync_after_its_writer_closed() {
    let mut s = Scratch::new("wb-lost-write");
    let mut stack = Stack::default();
    // The origin is a sparse file on a small file system that the test fills: writing into
    // its holes fails with ENOSPC, after write-back has answered.
    let host_img = s.path("host.img");
    sparse_file(&host_img, 32 * MIB);
    run("mkfs.ext4", &["-q", "-F", host_img.to_str().unwrap()]);
    let dev = stack.attach(&host_img, false, false);
    let host = s.path("host");
    stack.mount(&dev, &host, "rw");
    let origin = host.join("origin.img");
    sparse_file(&origin, ORIGIN_BYTES);
    let filler = open_rw_create(&host.join("filler"));
    let piece = vec![0x11u8; 64 * 1024];
    let mut at = 0u64;
    while filler.write_all_at(&piece, at).is_ok() {
        at += piece.len() as u64;
    }
    while filler.write_all_at(&piece[..4096], at).is_ok() {
        at += 4096;
    }
    filler.sync_all().unwrap();
    let cow = s.path("cow");
    sparse_file(&cow, ORIGIN_BYTES);
    s.mount_daemon(&origin, &[&snapshot_option(&cow)], &[]);

    let writer = open_rw(&s.file("origin"));
    writer
        .write_all_at(&[0x5A; 64 * 1024], 0)
        .expect("a first write held by write-back is answered");
    // The writer closes without fsync and ignores close's result, as most programs do.
    drop(writer);
    // An fsync of the mount's directory ("every acknowledged write durable") must not answer
    // 0 either, and leaves the error to the file's next fsync.
    assert!(
        std::fs::File::open(&s.mnt).unwrap().sync_all().is_err(),
        "the directory's fsync answered 0 over a lost write"
    );
    // `sync FILE`: a new handle's fsync must report the lost write.
    let syncer = open_rw(&s.file("origin"));
    assert!(
        syncer.sync_all().is_err(),
        "an acknowledged origin write was lost and the next fsync answered 0: {}",
        s.log()
    );
    assert!(syncer.sync_all().is_ok(), "reported twice to one handle");
    drop(syncer);
    let other = open_rw(&s.file("origin"));
    assert!(
        other.sync_all().is_ok(),
        "reported again after an fsync saw it"
    );
    drop(other);
    // The snapshot kept the old bytes (zeroes).
    let mut buf = vec![1u8; 64 * 1024];
    open_rw(&s.file("s")).read_exact_at(&mut buf, 0).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the snapshot changed");
    assert!(
        s.log().contains("failed after its acknowledgement"),
        "{}",
        s.log()
    );
    drop(stack);
}

fn open_rw_create(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

#[test]
fn kill_9_keeps_every_write_before_the_last_fsync_and_the_snapshot_old() {
    let mut s = Scratch::new("wb-kill9");
    let (original, origin, spec) = mount_with_snapshot(&mut s, 31);
    let f = open_rw(&s.file("origin"));
    let mut synced = original.clone();
    let mut rng = Rng(32);
    // First writes of every size, unaligned, then an fsync.
    random_writes(&f, &mut synced, &mut rng, 40, 300 * 1024, 1000);
    f.sync_all().unwrap();
    // More writes, never synced: each may or may not survive. Disjoint from one another (each
    // in its own 512 KiB slot), so every byte has one value before and one after.
    let mut unsynced = synced.clone();
    for i in 0..40u64 {
        let len = rng.below(300 * 1024) + 1;
        let off = i * 512 * 1024 + rng.below(512 * 1024 - len);
        let data = Rng(2000 + i).bytes(len);
        f.write_all_at(&data, off).unwrap();
        unsynced[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    kill_9(&mut s);
    drop(f);
    s.mount_daemon(&origin, &[&spec], &[]);
    assert_same(
        "snapshot after kill -9",
        &std::fs::read(s.file("s")).unwrap(),
        &original,
    );
    let got = std::fs::read(s.file("origin")).unwrap();
    // Where the unsynced writes did not change a byte, the fsynced model must hold exactly.
    assert_each_byte_from("origin after kill -9", &got, &synced, &unsynced);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// Held writes, then the mount is stopped while their handle is still open (so no close has
/// drained them): by SIGTERM, which must land them before it detaches the mount (checked on
/// the image file while the handle is still open), or by `umount -l`. After a remount the
/// origin equals the model and the snapshot the original.
fn stop_with_held_writes_lands_them(name: &str, sigterm: bool) {
    let mut s = Scratch::new(name);
    let (original, origin, spec) = mount_with_snapshot(&mut s, 51);
    let mut model = original.clone();
    let f = open_rw(&s.file("origin"));
    let mut rng = Rng(52);
    random_writes(&f, &mut model, &mut rng, 64, 200 * 1024, 3000);
    if sigterm {
        // SAFETY: SIGTERM to the daemon this test started.
        unsafe { libc::kill(s.server_pid(), libc::SIGTERM) };
        let mnt = s.mnt.clone();
        wait_for(60, "the mount detached", || !is_mounted(&mnt));
        assert_same(
            "origin image after SIGTERM, its writer still open",
            &std::fs::read(&origin).unwrap(),
            &model,
        );
    } else {
        run("umount", &["-l", s.mnt.to_str().unwrap()]);
    }
    drop(f);
    assert_eq!(s.wait_exit(), 0, "{}", s.log());
    s.mount_daemon(&origin, &[&spec], &[]);
    check_files(&s, &model, &original);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn a_lazy_unmount_with_held_writes_lands_them() {
    stop_with_held_writes_lands_them("wb-umount-l", false);
}

#[test]
fn sigterm_with_held_writes_lands_them_before_the_mount_goes() {
    stop_with_held_writes_lands_them("wb-sigterm", true);
}

#[test]
fn bad_write_back_budgets_are_refused_in_one_line() {
    let s = Scratch::new("wb-bad-values");
    let origin = s.path("origin.img");
    sparse_file(&origin, ORIGIN_BYTES);
    for bad in [
        &["writeback=-1"][..],
        &["writeback=1073741825"],
        &["writeback=1G1"],
        &["writeback=0x10"],
        &["writeback="],
        &["writeback"],
        &["writeback=1M,writeback=2M"],
        &["writeback=1M", "writeback=2M"],
    ] {
        let out = s.command(&origin, bad, true).output().unwrap();
        assert!(!out.status.success(), "{bad:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("writeback"), "{bad:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{bad:?}: {err}");
        assert!(!is_mounted(&s.mnt), "{bad:?}: a refused mount is mounted");
    }
}

/// ext4 on a loop device (direct I/O or buffered) over the origin, snapshot taken before
/// mkfs: files fsynced, then more written without fsync, then kill -9 of the server. After a
/// remount, journal replay through a new loop device, every fsynced file must read back as
/// written, e2fsck must find the file system clean, and the snapshot must still read zeroes.
fn ext4_on_loop_survives_kill_9(name: &str, direct: bool) {
    let mut s = Scratch::new(name);
    let (origin, cow) = (s.path("origin.img"), s.path("cow"));
    sparse_file(&origin, 64 * MIB);
    sparse_file(&cow, 96 * MIB);
    let spec = snapshot_option(&cow);
    s.mount_daemon(&origin, &[&spec], &[]);
    let fs = s.path("fs");
    let mut synced = Vec::new();
    {
        let mut stack = Stack::default();
        let dev = stack.attach(&s.file("origin"), direct, false);
        run("mkfs.ext4", &["-q", "-F", &dev]);
        stack.mount(&dev, &fs, "rw");
        for i in 0..24u64 {
            let data = Rng(7000 + i).bytes(4096 + Rng(i).below(256 * 1024));
            let path = fs.join(format!("synced{i}"));
            let mut f = std::fs::File::create(&path).unwrap();
            std::io::Write::write_all(&mut f, &data).unwrap();
            f.sync_all().unwrap();
            synced.push((path.file_name().unwrap().to_owned(), data));
        }
        // `sync` reaches the loop device as a FLUSH (and ext4 commits its journal).
        run("sync", &[]);
        for i in 0..24u64 {
            let data = Rng(8000 + i).bytes(4096 + Rng(i + 99).below(256 * 1024));
            std::fs::write(fs.join(format!("unsynced{i}")), data).unwrap();
        }
        kill_9(&mut s);
        // The file system and loop device over the dead mount go (their writes fail).
        let _ = std::process::Command::new("umount").arg(&fs).output();
        stack.track_mount(&fs);
    }
    s.mount_daemon(&origin, &[&spec], &[]);
    let snapshot = std::fs::read(s.file("s")).unwrap();
    assert!(
        snapshot.iter().all(|&b| b == 0),
        "the snapshot shows data written after it"
    );
    {
        let mut stack = Stack::default();
        let dev = stack.attach(&s.file("origin"), direct, false);
        stack.mount(&dev, &fs, "rw");
        for (name, data) in &synced {
            let got = std::fs::read(fs.join(name)).unwrap();
            assert_same(&format!("fsynced file {name:?}"), &got, data);
        }
        stack.umount(&fs);
        let out = std::process::Command::new("e2fsck")
            .args(["-fn", &dev])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "e2fsck after kill -9: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        stack.detach(&dev);
    }
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

#[test]
fn ext4_on_a_direct_io_loop_survives_kill_9() {
    ext4_on_loop_survives_kill_9("wb-ext4-direct", true);
}

#[test]
fn ext4_on_a_buffered_loop_survives_kill_9() {
    ext4_on_loop_survives_kill_9("wb-ext4-buffered", false);
}

/// The snapshot's status words and the origin after first writes that fill a small COW, with
/// the given mount options: every write answered, the origin equal to the model after fsync
/// and after a remount.
fn fill_cow(name: &str, kind: &str, cow_bytes: u64, extra: &[&str]) -> (Vec<String>, Vec<String>) {
    let mut s = Scratch::new(name);
    let (origin, cow) = (s.path("origin.img"), s.path("cow"));
    let original = write_random_image(&origin, 16 * MIB, 61);
    sparse_file(&cow, cow_bytes);
    let spec = format!("snapshot=s:{}:{kind}:8", cow.display());
    let mut options = vec![spec.as_str()];
    options.extend_from_slice(extra);
    s.mount_daemon(&origin, &options, &[]);
    let mut model = original.clone();
    let f = open_rw(&s.file("origin"));
    let mut rng = Rng(62);
    for i in 0..160u64 {
        let len = 1 + rng.below(40 * 1024);
        let off = rng.below(16 * MIB - len);
        let data = Rng(9000 + i).bytes(len);
        f.write_all_at(&data, off)
            .unwrap_or_else(|e| panic!("write {i} failed: {e}: {}", s.log()));
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    f.sync_all().unwrap();
    drop(f);
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    let words = |s: &Scratch| {
        status(s)
            .into_iter()
            .find(|l| l.0 == "s")
            .expect("snapshot line")
            .4
    };
    let live = words(&s);
    remount_and_check_origin(&mut s, &origin, &spec, &model);
    let remounted = words(&s);
    assert_eq!(s.unmount(), 0, "{}", s.log());
    (live, remounted)
}

#[test]
fn a_cow_filling_under_held_writes_ends_as_without_write_back() {
    for kind in ["P", "PO"] {
        for extra_kib in [0u64, 4, 12, 36] {
            let cow = MIB + extra_kib * 1024;
            let tag = format!("wb-fill-{kind}-{extra_kib}");
            let held = fill_cow(&tag, kind, cow, &[]);
            let sync = fill_cow(&format!("{tag}-sync"), kind, cow, &["writeback=0"]);
            assert_eq!(held, sync, "{kind}, COW of {cow} bytes");
            assert_eq!(held.0, ["Invalid"], "{kind}, COW of {cow} bytes");
        }
    }
}

/// Readers of the origin and of the snapshot run while one writer puts versions 1, 2, 3 over
/// 256 regions (version 1 a first write, held). Each byte of an origin read must come from a
/// version no older than the region's version answered before the read began and no newer than
/// one past the one answered when it ended; each snapshot read must be the original.
#[test]
fn readers_see_every_answered_write_and_the_snapshot_never_does() {
    const REGION: u64 = 64 * 1024;
    const REGIONS: u64 = 256;
    let mut s = Scratch::new("wb-readers");
    let (origin, cow) = (s.path("origin.img"), s.path("cow"));
    let original = Arc::new(write_random_image(&origin, REGION * REGIONS, 71));
    sparse_file(&cow, REGION * REGIONS + 8 * MIB);
    s.mount_daemon(&origin, &[&snapshot_option(&cow)], &[]);
    let version = |r: u64, v: u64| Rng(100_000 + r * 10 + v).bytes(REGION);
    let answered: Arc<Vec<AtomicU64>> = Arc::new((0..REGIONS).map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for t in 0..4u64 {
        let (answered, stop, original) = (answered.clone(), stop.clone(), original.clone());
        let (o, sn) = (s.file("origin"), s.file("s"));
        readers.push(std::thread::spawn(move || {
            let (o, sn) = (open_rw(&o), open_rw(&sn));
            let mut rng = Rng(700 + t);
            // Two readers read 64 KiB at random, two read 1 MiB sequentially (the read-ahead's
            // case: it must never serve data older than an answered write).
            let len = if t < 2 { REGION } else { 16 * REGION };
            let mut buf = vec![0u8; len as usize];
            let mut reads = 0u64;
            let mut next = 0u64;
            while !stop.load(Ordering::SeqCst) || reads < 64 {
                let first = if t < 2 {
                    rng.below(REGIONS)
                } else {
                    next = (next + 16) % REGIONS;
                    next
                };
                let los: Vec<u64> = (first..first + len / REGION)
                    .map(|r| answered[r as usize].load(Ordering::SeqCst))
                    .collect();
                o.read_exact_at(&mut buf, first * REGION).unwrap();
                for (k, lo) in los.into_iter().enumerate() {
                    let r = first + k as u64;
                    let at = r * REGION;
                    let got = &buf[k * REGION as usize..(k + 1) * REGION as usize];
                    let hi = (answered[r as usize].load(Ordering::SeqCst) + 1).min(3);
                    // A read racing a write of the same bytes may see some of each (as on any
                    // file or disk), but never data older than what was answered before it.
                    let allowed: Vec<Vec<u8>> = (lo..=hi)
                        .map(|v| match v {
                            0 => original[at as usize..(at + REGION) as usize].to_vec(),
                            v => version(r, v),
                        })
                        .collect();
                    if let Some(b) =
                        (0..REGION as usize).find(|&b| allowed.iter().all(|a| a[b] != got[b]))
                    {
                        panic!("origin region {r}, byte {b}: from no version in {lo}..={hi}");
                    }
                }
                sn.read_exact_at(&mut buf, first * REGION).unwrap();
                let at = (first * REGION) as usize;
                assert!(
                    buf[..] == original[at..at + len as usize],
                    "snapshot regions from {first} changed"
                );
                reads += 1;
            }
        }));
    }
    let f = open_rw(&s.file("origin"));
    for v in 1..=3u64 {
        for r in 0..REGIONS {
            f.write_all_at(&version(r, v), r * REGION).unwrap();
            answered[r as usize].store(v, Ordering::SeqCst);
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
    drop(f);
    let mut model = Vec::new();
    for r in 0..REGIONS {
        model.extend_from_slice(&version(r, 3));
    }
    check_files(&s, &model, &original);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// Punches, zeroings (on the file and as BLKDISCARD / BLKZEROOUT through a loop device) and
/// snapshot writes, each right over a held origin first write: the origin and the snapshot
/// equal their models, live and after a remount.
#[test]
fn punches_zeroings_and_snapshot_writes_over_held_writes() {
    let mut s = Scratch::new("wb-punch");
    let (original, origin, spec) = mount_with_snapshot(&mut s, 81);
    let mut model = original.clone();
    let mut snap_model = original.clone();
    let o = open_rw(&s.file("origin"));
    let sn = open_rw(&s.file("s"));
    let mut rng = Rng(82);
    let mut stack = Stack::default();
    let dev = stack.attach(&s.file("origin"), true, false);
    let blk = open_rw(Path::new(&dev));
    for i in 0..48u64 {
        let region = i * 512 * 1024;
        let len = 4096 + rng.below(200 * 1024);
        let off = region + rng.below(64 * 1024);
        let data = Rng(11_000 + i).bytes(len);
        o.write_all_at(&data, off).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
        // Over part of the held write, and past it, sector-aligned for the block device.
        let (z_off, z_len) = ((off + len / 3) / 512 * 512, (len / 2).div_ceil(512) * 512);
        match i % 4 {
            0 => fallocate(
                &o,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                z_off,
                z_len,
            )
            .unwrap(),
            1 => fallocate(&o, libc::FALLOC_FL_ZERO_RANGE, z_off, z_len).unwrap(),
            2 => blk_range(&blk, BLKDISCARD, z_off, z_len),
            _ => blk_range(&blk, BLKZEROOUT, z_off, z_len),
        }
        model[z_off as usize..(z_off + z_len) as usize].fill(0);
        // The snapshot written over the same chunks.
        let w = Rng(12_000 + i).bytes(3000);
        let w_off = off + len / 4;
        sn.write_all_at(&w, w_off).unwrap();
        snap_model[w_off as usize..w_off as usize + w.len()].copy_from_slice(&w);
    }
    drop(blk);
    stack.detach(&dev);
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    assert_same(
        "snapshot",
        &std::fs::read(s.file("s")).unwrap(),
        &snap_model,
    );
    drop((o, sn));
    remount_and_check_origin(&mut s, &origin, &spec, &model);
    assert_same(
        "snapshot, remounted",
        &std::fs::read(s.file("s")).unwrap(),
        &snap_model,
    );
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;

/// A block device ioctl over `[offset, offset + len)`.
fn blk_range(f: &std::fs::File, request: libc::c_ulong, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let range = [offset, len];
    // SAFETY: the ioctl reads two u64s from `range`.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), request, range.as_ptr()) };
    assert_eq!(
        rc,
        0,
        "ioctl {request:#x}: {}",
        std::io::Error::last_os_error()
    );
}

/// A flood of first writes from four threads, with budgets smaller than one write and a
/// small one: every write lands (the model), and the daemon's peak memory grows by no more
/// than twice the budget (held bytes plus reused buffers) and a fixed allowance for FUSE
/// request buffers and thread stacks.
#[test]
fn a_flood_of_first_writes_stays_within_the_budget() {
    for (budget, label) in [(0, "0"), (MIB, "1M"), (8 * MIB, "8M"), (64 * MIB, "64M")] {
        let mut s = Scratch::new(&format!("wb-flood-{label}"));
        let (origin, cow) = (s.path("origin.img"), s.path("cow"));
        let size = 192 * MIB;
        let original = write_random_image(&origin, size, 91);
        sparse_file(&cow, size + 16 * MIB);
        let option = format!("writeback={label}");
        s.mount_daemon(&origin, &[&snapshot_option(&cow), &option], &[]);
        let pid = s.server_pid();
        let base = peak_rss(pid);
        let mut threads = Vec::new();
        for t in 0..4u64 {
            let path = s.file("origin");
            threads.push(std::thread::spawn(move || {
                let f = open_rw(&path);
                for (at, len, seed) in flood_writes(t, size) {
                    f.write_all_at(&Rng(seed).bytes(len), at).unwrap();
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        let grown = peak_rss(pid).saturating_sub(base);
        let mut model = original.clone();
        for t in 0..4u64 {
            for (at, len, seed) in flood_writes(t, size) {
                model[at as usize..(at + len) as usize].copy_from_slice(&Rng(seed).bytes(len));
            }
        }
        check_files(&s, &model, &original);
        eprintln!(
            "writeback={label}: peak memory grew by {} KiB",
            grown / 1024
        );
        assert!(
            grown <= 2 * budget + 64 * MIB,
            "writeback={label}: peak memory grew by {grown} bytes"
        );
        assert_eq!(s.unmount(), 0, "{}", s.log());
    }
}

/// O_DSYNC, O_SYNC and RWF_DSYNC first writes are durable when answered: kill -9 right after
/// them keeps every one (and the snapshot old).
#[test]
fn synchronous_writes_survive_kill_9() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let mut s = Scratch::new("wb-osync");
    let (original, origin, spec) = mount_with_snapshot(&mut s, 101);
    let open_with = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags)
            .open(s.file("origin"))
            .unwrap()
    };
    let (dsync, sync, plain) = (
        open_with(libc::O_DSYNC),
        open_with(libc::O_SYNC),
        open_with(0),
    );
    let mut model = original.clone();
    let mut rng = Rng(102);
    for i in 0..30u64 {
        let len = 1 + rng.below(150 * 1024);
        let off = i * MIB + rng.below(MIB - len);
        let data = Rng(13_000 + i).bytes(len);
        match i % 3 {
            0 => dsync.write_all_at(&data, off).unwrap(),
            1 => sync.write_all_at(&data, off).unwrap(),
            _ => {
                let iov = libc::iovec {
                    iov_base: data.as_ptr() as *mut libc::c_void,
                    iov_len: data.len(),
                };
                // SAFETY: one iovec over `data`, which outlives the call.
                let n = unsafe {
                    libc::pwritev2(plain.as_raw_fd(), &iov, 1, off as i64, libc::RWF_DSYNC)
                };
                assert_eq!(n, len as isize, "{}", std::io::Error::last_os_error());
            }
        }
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
    kill_9(&mut s);
    drop((dsync, sync, plain));
    s.mount_daemon(&origin, &[&spec], &[]);
    check_files(&s, &model, &original);
    assert_eq!(s.unmount(), 0, "{}", s.log());
}

/// With several snapshots a write-back group copies to each on its own thread. When no thread
/// can be started (a pids limit, thread exhaustion) every snapshot must still get its copies:
/// each reads the original, the origin the model.
#[test]
fn held_writes_reach_every_snapshot_when_no_thread_can_start() {
    if !Path::new("/sys/fs/cgroup/pids").is_dir() {
        eprintln!("no pids cgroup controller: skipped");
        return;
    }
    let mut s = Scratch::new("wb-nothreads");
    let origin = s.path("origin.img");
    let original = write_random_image(&origin, ORIGIN_BYTES, 121);
    let mut specs = Vec::new();
    for name in ["a", "b", "c"] {
        let cow = s.path(&format!("{name}.cow"));
        sparse_file(&cow, ORIGIN_BYTES + 8 * MIB);
        specs.push(format!("snapshot={name}:{}:P:8", cow.display()));
    }
    let options: Vec<&str> = specs.iter().map(|o| o.as_str()).collect();
    s.mount_daemon(&origin, &options, &[]);
    // Opened before the limit: a FUSE open needs no thread, but be sure.
    let f = open_rw(&s.file("origin"));
    let mut model = original.clone();
    {
        let _limit = NoNewThreads::new("wb", s.server_pid());
        let mut rng = Rng(122);
        for i in 0..40u64 {
            let len = 1 + rng.below(48 * 1024);
            let off = i * 512 * 1024 + rng.below(256 * 1024);
            let data = Rng(15_000 + i).bytes(len);
            f.write_all_at(&data, off).unwrap();
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        f.sync_all().unwrap();
    }
    drop(f);
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    for name in ["a", "b", "c"] {
        assert_same(
            &format!("snapshot {name}"),
            &std::fs::read(s.file(name)).unwrap(),
            &original,
        );
    }
    assert_eq!(s.unmount(), 0, "{}", s.log());
}
