//! A block-device COW cannot be grown by snapfs; the `notify=` hook can grow it (here: grow a
//! loop device's backing file and `losetup -c`, what `lvextend` does for an LV), and snapfs
//! picks the new size up live, as it does for `truncate` on a COW file. The snapshot that
//! would have filled stays valid, and its data is checked against a model.

mod e2e_support;

use e2e_support::*;
use std::os::unix::fs::{FileExt, PermissionsExt};

const ORIGIN_BYTES: u64 = 8 * MIB;
const CHUNK: u64 = 4096;

#[test]
fn a_block_device_cow_grown_by_the_notify_hook_is_picked_up_live() {
    let mut s = Scratch::new("blockcow-grow");
    let mut stack = Stack::default();
    let origin = s.path("origin.img");
    let initial = write_random_image(&origin, ORIGIN_BYTES, 31);
    let backing = s.path("cow-backing.img");
    sparse_file(&backing, MIB);
    let dev = stack.attach(&backing, false, false);
    // The hook grows the device by 8 MiB at the first warning, once: what `lvextend -L +8M`
    // run from dmeventd's script does for an LV.
    let script = s.path("extend.sh");
    let done = s.path("extended");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$4\" = warning ] || exit 0\n[ -e '{done}' ] && exit 0\n\
             truncate -s +8M '{backing}' && losetup -c {dev} && touch '{done}'\n",
            done = done.display(),
            backing = backing.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    s.mount_foreground(
        &origin,
        &[
            &format!("snapshot=s:{dev}:P:8"),
            &format!("notify={}", script.display()),
            "warn=50",
        ],
        &[],
    );
    let total_before = total_sectors(&s);
    assert_eq!(total_before, MIB / 512, "the COW starts at 1 MiB");

    // 2 MiB of first writes: twice what the 1 MiB COW can hold. Between steps, wait for the
    // hook once usage has crossed 50 %, as a busy volume gives it time to act.
    let f = open_rw(&s.file("origin"));
    let mut model = std::fs::read(&origin).unwrap();
    for c in 0..(2 * MIB / CHUNK) {
        let data = vec![(c as u8) ^ 0x5a; CHUNK as usize];
        f.write_all_at(&data, c * CHUNK).unwrap();
        model[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize].copy_from_slice(&data);
        if c == 140 {
            wait_for(20, "the hook to grow the COW device", || {
                done.exists() && total_sectors(&s) > total_before
            });
        }
    }
    drop(f);
    let total_after = total_sectors(&s);
    assert_eq!(
        total_after,
        9 * MIB / 512,
        "the grown device is used: {total_after}"
    );
    let line = status(&s).into_iter().find(|l| l.0 == "s").unwrap();
    assert_ne!(line.4, ["Invalid"], "the snapshot survived");
    assert_same("snapshot", &std::fs::read(s.file("s")).unwrap(), &initial);
    assert_same("origin", &std::fs::read(s.file("origin")).unwrap(), &model);
    assert_eq!(s.unmount(), 0);
}

/// The `<total>` sectors of snapshot `s`'s status figures.
fn total_sectors(s: &Scratch) -> u64 {
    let line = status(s).into_iter().find(|l| l.0 == "s").unwrap();
    let (_, total) = line.4[0].split_once('/').expect("figures, not Invalid");
    total.parse().unwrap()
}
