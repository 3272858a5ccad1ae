//! The steps of `snapfs demo`, in order. Each one shows what it runs and checks what it
//! claims; the first failed check ends the demo (the stage cleans up).

use super::demo::Stage;

const ORIGIN_BYTES: u64 = 256 << 20;
const COW_SIZE: &str = "64M";

/// The files of the "before" state: name and content.
type Files = Vec<(&'static str, Vec<u8>)>;

pub fn play(stage: &mut Stage) -> Result<(), String> {
    create_and_mount(stage)?;
    let (before, dev) = make_filesystem(stage)?;
    take_snapshot(stage)?;
    change_files(stage)?;
    show_status(stage)?;
    look_into_snapshot(stage, &before)?;
    merge_back(stage, &dev)?;
    check_rolled_back(stage, &before)
}

fn create_and_mount(stage: &mut Stage) -> Result<(), String> {
    stage.step("Make a sparse 256 MiB origin image and mount it with snapfs");
    stage.run("truncate", &["-s", "256M", "origin.img"])?;
    let size = std::fs::metadata(stage.path("origin.img"))
        .map_err(|e| e.to_string())?
        .len();
    stage.check(size == ORIGIN_BYTES, "origin.img is 256 MiB")?;
    stage.say("registry= records every snapshot, so the next mount attaches them again;");
    stage.say("log= is where the daemon logs once it runs in the background.");
    stage.mount_snapfs("origin.img", "vol", "registry=vol.registry,log=snapfs.log")?;
    let listing = stage.run("ls", &["vol"])?;
    let names: Vec<&str> = listing.split_whitespace().collect();
    stage.check(
        names == ["control", "origin", "status"],
        "vol shows control, origin, status",
    )
}

/// Returns the files written and the loop device over the origin.
fn make_filesystem(stage: &mut Stage) -> Result<(Files, String), String> {
    stage.step("Put ext4 on the origin through a loop device, and write some files");
    let dev = stage.attach_loop("vol/origin", false)?;
    stage.run("mkfs.ext4", &["-q", &dev])?;
    stage.mount_fs(&dev, "data", "rw")?;
    let before = original_files();
    write_files(stage, &before)?;
    stage.run("sync", &[])?;
    stage.run("find", &["data", "-type", "f"])?;
    Ok((before, dev))
}

fn original_files() -> Files {
    let notes = "Meeting notes\n- ship snapfs 1.0\n- keep the snapshot until Friday\n";
    vec![
        ("notes.txt", notes.as_bytes().to_vec()),
        ("photo.jpg", pseudo_random(6 << 20, 7)),
        ("config/app.conf", b"mode = stable\nthreads = 4\n".to_vec()),
    ]
}

fn write_files(stage: &Stage, files: &Files) -> Result<(), String> {
    for (name, content) in files {
        let path = stage.path("data").join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
        }
        std::fs::write(&path, content).map_err(|e| format!("{}: {e}", path.display()))?;
        stage.say(&format!("wrote data/{name} ({} bytes)", content.len()));
    }
    Ok(())
}

fn take_snapshot(stage: &mut Stage) -> Result<(), String> {
    stage.step("Take a live snapshot while ext4 is mounted");
    stage.say("snapfs holds origin writes back for an instant, so the snapshot is atomic, and");
    stage.say("freezes ext4 around it, as LVM does: its cached writes reach the origin first.");
    let answer = stage.run(
        "snapfs",
        &[
            "snapshot",
            "vol",
            "before",
            "--cow",
            "before.cow",
            "--size",
            COW_SIZE,
        ],
    )?;
    stage.check(
        answer.starts_with("ok snapshot before attached"),
        "the snapshot is attached",
    )?;
    stage.check(
        answer.lines().any(|l| l.starts_with("froze ")),
        "ext4 on the origin was frozen for the attach and thawed",
    )?;
    let registry = std::fs::read_to_string(stage.path("vol.registry")).unwrap_or_default();
    stage.check(
        registry.lines().any(|l| l.starts_with("before ")),
        "vol.registry records it for the next mount",
    )?;
    stage.run("ls", &["vol"]).map(|_| ())
}

fn change_files(stage: &mut Stage) -> Result<(), String> {
    stage.step("Change the files: edit one, delete one, add one");
    let data = stage.path("data");
    let edit = |name: &str, content: &[u8]| {
        std::fs::write(data.join(name), content).map_err(|e| format!("{name}: {e}"))
    };
    edit(
        "notes.txt",
        b"Meeting notes\n(everything was rewritten after the snapshot)\n",
    )?;
    stage.say("rewrote data/notes.txt");
    edit("config/app.conf", b"mode = broken\n")?;
    stage.say("rewrote data/config/app.conf");
    stage.run("rm", &["data/photo.jpg"])?;
    edit("junk.bin", &pseudo_random(16 << 20, 9))?;
    stage.say("wrote data/junk.bin (16 MiB)");
    stage.run("sync", &[])?;
    stage.run("find", &["data", "-type", "f"]).map(|_| ())
}

fn show_status(stage: &mut Stage) -> Result<(), String> {
    stage.step("Status: the snapshot's COW holds the chunks the changes overwrote");
    let table = stage.run("snapfs", &["status", "vol"])?;
    stage.check(
        table
            .lines()
            .any(|l| l.starts_with("before ") && l.contains("active")),
        "status lists the snapshot as active",
    )?;
    stage.say("the same, as dmsetup status prints it (and # lines for people):");
    stage.run("cat", &["vol/status"]).map(|_| ())
}

fn look_into_snapshot(stage: &mut Stage, before: &Files) -> Result<(), String> {
    stage.step("Look into the snapshot: the files as they were");
    let dev = stage.attach_loop("vol/before", true)?;
    stage.mount_fs(&dev, "view", "ro,noload")?;
    stage.run("find", &["view", "-type", "f"])?;
    let same = files_match(stage, "view", before);
    stage.umount_fs("view")?;
    stage.detach_loop(&dev)?;
    stage.check(same?, "every file in the snapshot is as it was written")
}

fn merge_back(stage: &mut Stage, dev: &str) -> Result<(), String> {
    stage.step("Roll the origin back: merge the snapshot into it");
    stage.say("nothing may use the origin while the merge starts: unmount ext4, detach the loop");
    stage.umount_fs("data")?;
    stage.detach_loop(dev)?;
    stage.run("snapfs", &["merge", "vol", "before", "--wait"])?;
    let table = stage.run("snapfs", &["status", "vol"])?;
    stage.check(
        table.contains("no snapshots"),
        "the merged snapshot is gone from the mount",
    )
}

fn check_rolled_back(stage: &mut Stage, before: &Files) -> Result<(), String> {
    stage.step("Check: the old files are back and the filesystem is clean");
    let dev = stage.attach_loop("vol/origin", false)?;
    stage.run("e2fsck", &["-fn", &dev])?;
    stage.mount_fs(&dev, "data", "rw")?;
    stage.run("find", &["data", "-type", "f"])?;
    let same = files_match(stage, "data", before)?;
    let junk_gone = !stage.path("data/junk.bin").exists();
    stage.umount_fs("data")?;
    stage.detach_loop(&dev)?;
    stage.check(
        same,
        "notes.txt, photo.jpg and config/app.conf are back as they were",
    )?;
    stage.check(junk_gone, "junk.bin, written after the snapshot, is gone")
}

/// Whether every file under `dir` has its original content (reported file by file).
fn files_match(stage: &Stage, dir: &str, files: &Files) -> Result<bool, String> {
    let mut all = true;
    for (name, content) in files {
        let got = std::fs::read(stage.path(dir).join(name)).unwrap_or_default();
        let same = got == *content;
        all &= same;
        let verdict = if same { "as it was" } else { "DIFFERENT" };
        stage.say(&format!("{dir}/{name}: {verdict}"));
    }
    Ok(all)
}

/// Reproducible bytes (the library's splitmix64), standing in for a photo or junk.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    snapfs::rng::Rng(seed).bytes(len as u64)
}
